"""Scoring generated images with a judge: is the asked-for class there, and how close is the whole set to
real images. Every measure comes with its 95% interval and with its floor, what a second set of real images of
the same size scores against the same held-out ones (`llamagen.evaluation.set_measures` says how each is made):

- accuracy: the judge's reading of each image against its condition (shapes: shape, colour and both, the
  class; digits: the digit), with Wilson intervals;
- read as none: the share of images the judge reads with less confidence than 99% of real images get;
- FID in the judge's 32 leading principal axes, against held-out real images (jackknife interval), and in all
  its features where both sets outnumber them;
- KID in the judge's features (Bińkowski et al., 2018): unbiased at any size, the interval its estimate
  plus or minus 1.96 jackknife standard errors;
- precision and recall (Kynkäänniemi et al., 2019);
- diversity: the mean feature distance between two images of one condition, among those judged right,
  relative to real images' (bootstrap over conditions).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import torch

from llamagen.analysis.statistics import proportion
from llamagen.data.shapes import COLOURS, Shapes
from llamagen.evaluation.fid import InceptionFeatures, frechet_distance, image_features
from llamagen.evaluation.judges import Judge, held_out, labelled, load_judge
from llamagen.evaluation.kid import kernel_distance
from llamagen.evaluation.set_measures import (
    INTERVAL_Z,
    FrechetSpace,
    Interval,
    NoneReading,
    coverage,
    relative_diversity,
    within_group_spread,
)


@dataclass
class GenerationScores:
    accuracy: dict[str, Interval]  # per attribute, and "class" (every attribute the condition states)
    read_as_none: Interval
    fid: Interval  # in the judge's FID_DIMENSIONS leading principal axes (NaN with fewer images than axes)
    fid_all_features: float  # in all the judge's features, where there are more images than features, else NaN
    kid: Interval
    precision: Interval
    recall: Interval
    diversity: Interval  # among images judged right, relative to real images' (1 = as varied)
    images: int
    floor: dict[str, float] = field(default_factory=dict)  # a second real set of `images` images, scored alike
    inception_fid: float | None = None  # with Inception weights, where both sets outnumber its features

    def as_dict(self) -> dict:
        """One flat row: each measure, its `_low` and `_high` bounds and its `_real_floor`; accuracy as
        `accuracy_<attribute>`."""
        measures = {f"accuracy_{name}": value for name, value in self.accuracy.items()}
        for name in ("read_as_none", "fid", "fid_all_features", "kid", "precision", "recall", "diversity"):
            measures[name] = getattr(self, name)
        row = flat_row(measures, self.floor)
        row["images"] = self.images
        if self.inception_fid is not None:
            row["inception_fid"] = self.inception_fid
        return row


def flat_row(measures: dict, floor: dict[str, float]) -> dict:
    """Measures as one flat row: an interval as `NAME`, `NAME_low` and `NAME_high`, and `NAME_real_floor`
    where the floor holds NAME."""
    row = {}
    for name, measure in measures.items():
        if isinstance(measure, Interval):
            row.update({name: measure.value, f"{name}_low": measure.low, f"{name}_high": measure.high})
        else:
            row[name] = measure
        if name in floor:
            row[f"{name}_real_floor"] = floor[name]
    return row


@dataclass
class JudgeReading:
    """What a judge makes of a set of images: its features and, per attribute, its reading and confidence."""

    features: torch.Tensor  # (N, feature_dim)
    predicted: dict[str, torch.Tensor]  # (N,) value ids
    confidence: dict[str, torch.Tensor]  # (N,) the reading's softmax probability


@torch.no_grad()
def read_images(judge: Judge, images: torch.Tensor) -> JudgeReading:
    """The judge's features, readings and confidences of `images` (N, 3, S, S) in [-1, 1], 256 at a time."""
    judge.eval()
    device = next(judge.parameters()).device
    features, predicted, confidence = [], {name: [] for name in judge.heads}, {name: [] for name in judge.heads}
    for start in range(0, len(images), 256):
        embedded = judge.embed(images[start : start + 256].to(device))
        features.append(embedded.float().cpu())
        for name, head in judge.heads.items():
            top = head(embedded).float().softmax(-1).max(-1)
            predicted[name].append(top.indices.cpu())
            confidence[name].append(top.values.cpu())
    return JudgeReading(
        torch.cat(features),
        {name: torch.cat(values) for name, values in predicted.items()},
        {name: torch.cat(values) for name, values in confidence.items()},
    )


@dataclass
class _RealReference:
    """The held-out real images as a judge reads them, and what the measures derive from them once."""

    reading: JudgeReading
    space: FrechetSpace
    none_reading: NoneReading


def condition_labels(kind: str, class_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The judge's attribute labels that a class id states: shapes (shape, colour), digits (digit)."""
    if kind == "shapes":
        return {"shape": class_ids // len(COLOURS), "colour": class_ids % len(COLOURS)}
    return {"digit": class_ids}


def share_of(hits: torch.Tensor) -> Interval:
    """The share of true values among `hits` (N,) booleans, with its Wilson interval."""
    estimate = proportion(int(hits.sum()), len(hits))
    return Interval(float(estimate.mean), float(estimate.low), float(estimate.high))


def _set_measures(reference: _RealReference, fake: torch.Tensor) -> dict:
    """The measures of a set of images' judge features `fake` as a whole against the held-out real ones,
    whatever each image was asked to show: FID, KID, precision and recall."""
    real_features = reference.reading.features
    kid = kernel_distance(real_features.numpy(), fake.numpy())
    kid_half_width = INTERVAL_Z * kid.standard_error
    return {
        "fid": reference.space.distance_interval(fake),
        "fid_all_features": frechet_distance(real_features.numpy(), fake.numpy())
        if min(len(fake), len(real_features)) > fake.shape[1]
        else float("nan"),
        "kid": Interval(kid.value, kid.value - kid_half_width, kid.value + kid_half_width),
        "precision": share_of(coverage(fake, real_features)),
        "recall": share_of(coverage(real_features, fake)),
    }


def _measures(
    reference: _RealReference, reading: JudgeReading, stated: dict[str, torch.Tensor], groups: torch.Tensor,
    real_spread: float,
) -> dict:  # fmt: skip
    """Every measure of one set of images against the held-out real ones, with intervals."""
    hits = {name: reading.predicted[name] == labels for name, labels in stated.items()}
    every = torch.stack(list(hits.values())).all(dim=0)
    broken = reference.none_reading.read_as_none(reading.confidence, stated)
    judged_right = every & ~broken
    return {
        "accuracy": {**{name: share_of(hit) for name, hit in hits.items()}, "class": share_of(every)},
        "read_as_none": share_of(broken),
        **_set_measures(reference, reading.features),
        "diversity": relative_diversity(reading.features[judged_right], groups[judged_right], real_spread),
    }


@torch.no_grad()
def score_images(
    judge: Judge,
    kind: str,
    images: torch.Tensor,
    stated: dict[str, torch.Tensor],
    groups: torch.Tensor,
    inception: InceptionFeatures | None = None,
) -> GenerationScores:
    """Score generated `images` (N, 3, S, S) in [-1, 1] whose conditions state the attribute labels `stated`;
    `groups` (N,) marks images of the same condition (for diversity); `inception` adds the usual FID where
    both sets have more images than it has features (2,048 for Inception-v3)."""
    reference = _real_reference(judge, kind)
    floor, real_spread = _floor(judge, kind, len(images), tuple(stated))
    measures = _measures(reference, read_images(judge, images), stated, groups, real_spread)
    inception_fid = None
    if inception is not None:
        real_images = image_features(inception, _held_out_images(kind))
        generated = image_features(inception, images.float())
        if min(len(real_images), len(generated)) > generated.shape[1]:  # else the covariances are singular
            inception_fid = frechet_distance(real_images, generated)
    return GenerationScores(**measures, images=len(images), floor=floor, inception_fid=inception_fid)


# The judges' readings of the real sets, by the judge's weights and device, the kind and the set: a sweep or a
# run of the card checks scores many generated sets against the same real ones, each with a newly loaded judge.
_REAL_READINGS: dict[tuple, JudgeReading] = {}
_REFERENCES: dict[tuple, _RealReference] = {}
_FLOORS: dict[tuple, tuple[dict[str, float], float]] = {}


def _judge_key(judge: Judge, kind: str) -> tuple:
    weights = hashlib.sha256()
    for tensor in judge.state_dict().values():
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return weights.hexdigest(), str(next(judge.parameters()).device), kind


def _real_reading(judge: Judge, kind: str, second_set_size: int | None = None) -> JudgeReading:
    """The judge's reading of its held-out real images, or of the second real set of `second_set_size`."""
    key = (*_judge_key(judge, kind), second_set_size)
    if key not in _REAL_READINGS:
        images = _held_out_images(kind) if second_set_size is None else _second_real_set(kind, second_set_size)[0]
        _REAL_READINGS[key] = read_images(judge, images)
    return _REAL_READINGS[key]


def _real_reference(judge: Judge, kind: str) -> _RealReference:
    key = _judge_key(judge, kind)
    if key not in _REFERENCES:
        reading = _real_reading(judge, kind)
        _REFERENCES[key] = _RealReference(reading, FrechetSpace(reading.features), NoneReading(reading.confidence))
    return _REFERENCES[key]


def _floor(judge: Judge, kind: str, count: int, attributes: tuple[str, ...]) -> tuple[dict[str, float], float]:
    """The measures of a second real set of `count` images (each stating the `attributes` it shows), and its
    within-class spread among the images judged right, which diversity is relative to."""
    key = (*_judge_key(judge, kind), count, attributes)
    if key not in _FLOORS:
        reading = _real_reading(judge, kind, second_set_size=count)
        labels = _second_real_set(kind, count)[1]
        stated = {name: labels[name] for name in attributes}
        classes = class_ids_of(kind, labels)
        reference = _real_reference(judge, kind)
        right = torch.stack([reading.predicted[name] == stated[name] for name in attributes]).all(dim=0)
        right &= ~reference.none_reading.read_as_none(reading.confidence, attributes)
        spread = within_group_spread(reading.features[right], classes[right])
        measures = _measures(reference, reading, stated, classes, spread)
        measures.pop("diversity")  # relative to this set's own spread: 1 by construction
        accuracy = {f"accuracy_{name}": interval.value for name, interval in measures.pop("accuracy").items()}
        values = {name: getattr(measure, "value", measure) for name, measure in measures.items()}
        _FLOORS[key] = {**accuracy, **values}, spread
    return _FLOORS[key]


@functools.lru_cache(maxsize=2)
def _held_out_images(kind: str) -> torch.Tensor:
    """The judge's held-out real images, rendered once per process (a sweep scores many sets against them)."""
    return held_out(kind)[0]


# Seeds of real sets drawn only to measure the floor (the held-out set is seed 1000, training seed 0).
SECOND_REAL_SEED = 2000


@functools.lru_cache(maxsize=2)
def _second_real_set(kind: str, count: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Real images that are neither the judge's training nor its held-out set (digits: the training split,
    the only other real digits there are)."""
    if kind == "shapes":
        data = Shapes(seed=SECOND_REAL_SEED, length=count)
        return labelled([data[i] for i in range(count)])
    from llamagen.data.digits import Digits

    data = Digits("train")
    return labelled([data[i] for i in range(min(count, len(data)))])


def class_ids_of(kind: str, labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """The class ids (as the class-conditional generators number them) of real images' attribute labels."""
    if kind == "shapes":
        return labels["shape"] * len(COLOURS) + labels["colour"]
    return labels["digit"]


def evaluate_class_conditional(
    pipe,
    kind: str,
    images_per_class: int = 25,
    seed: int = 0,
    batch_classes: int | None = None,
    inception: InceptionFeatures | None = None,
    **sampling,
) -> GenerationScores:
    """Generate `images_per_class` images of every class with `pipe` (`sampling`: cfg_scale, top_k, ...) and
    score them with the embedded judge of `kind` ('shapes' or 'digits'), and Inception when given."""
    if pipe.model_type != "c2i":
        raise ValueError("evaluate_class_conditional needs a class-conditional pipeline")
    judge = load_judge(f"{kind}-judge", device=pipe.device)
    classes = list(range(pipe.gpt.config.num_classes))
    step = batch_classes or len(classes)
    pixels = []
    for start in range(0, len(classes), step):
        output = pipe(class_labels=classes[start : start + step], seed=seed + start,
                      num_images_per_condition=images_per_class, **sampling)  # fmt: skip
        pixels.append(output.pixels)
    class_ids = torch.tensor(classes).repeat_interleave(images_per_class)
    return score_images(judge, kind, torch.cat(pixels), condition_labels(kind, class_ids), class_ids, inception)


def caption_sets(count: int, seed: int = 0) -> dict[str, list[dict]]:
    """Shapes whose captions measure a text-to-image model: "seen", drawn as its training captions were
    (the first `count` of the training stream, seed 0), and "held_out_pairs", captions of the (shape, colour)
    pairs training never showed."""
    seen = Shapes(seed=seed, length=count, captioned=True)
    unseen = Shapes(seed=SECOND_REAL_SEED, length=count, only_held_out_pairs=True)
    return {"seen": [seen[i] for i in range(count)], "held_out_pairs": [unseen[i] for i in range(count)]}


@torch.no_grad()
def evaluate_text_conditional(pipe, items: list[dict], seed: int = 0, batch: int = 200, **sampling) -> dict:
    """Generate one image per caption of shapes `items` and judge each attribute where the caption states it.

    Returns {"accuracy": {attribute: share right among captions stating it, "all_stated": every stated one
    right}, "distances": the set's FID, KID, precision and recall against held-out real shapes, each with its
    interval and its floor (a second real set of as many images), as one flat row (`flat_row`), "clip_score":
    mean 100 x cosine of image and caption in the pipeline's CLIP, "images": n}.
    """
    if pipe.model_type != "t2i":
        raise ValueError("evaluate_text_conditional needs a text-conditional pipeline")
    judge = load_judge("shapes-judge", device=pipe.device)
    pixels, scores = [], []
    for start in range(0, len(items), batch):
        prompts = [item["caption"] for item in items[start : start + batch]]
        output = pipe(prompts=prompts, seed=seed + start, **sampling)
        pixels.append(output.pixels)
        if hasattr(pipe.text_encoder, "clip_score"):
            scores.append(pipe.text_encoder.clip_score(output.pixels, prompts).cpu())
    reading = read_images(judge, torch.cat(pixels))
    accuracy, every = {}, torch.ones(len(items), dtype=torch.bool)
    for name in judge.config.heads:
        stated = torch.tensor([name in item["stated"].split(",") for item in items])
        right = reading.predicted[name] == torch.tensor([item["attribute_ids"][name] for item in items])
        if stated.any():
            accuracy[name] = float(right[stated].float().mean())
        every &= right | ~stated
    accuracy["all_stated"] = float(every.float().mean())
    floor, _ = _floor(judge, "shapes", len(items), ("shape", "colour"))
    distances = flat_row(_set_measures(_real_reference(judge, "shapes"), reading.features), floor)
    result = {"accuracy": accuracy, "distances": distances, "images": len(items)}
    if scores:
        result["clip_score"] = float(torch.cat(scores).mean())
    return result
