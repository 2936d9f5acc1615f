"""Scoring generated images with a judge: is the asked-for class there, and how close is the whole set to
real images.

- accuracy: the judge's reading of each image against its condition (shapes: shape, colour and both,
  the class; digits: the digit);
- FID in the judge's feature space against held-out real images, beside the floor that a second real set
  of the same size reaches (FID is biased upwards for small sets, so only the gap above the floor means
  anything);
- precision and recall (Kynkäänniemi et al., 2019): the fraction of generated images inside the real
  images' k-nearest-neighbour balls, and of real images inside the generated ones';
- diversity: the mean pairwise feature distance among images of one condition, relative to real images'.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import torch

from llamagen.data.shapes import COLOURS, Shapes
from llamagen.evaluation.fid import InceptionFeatures, frechet_distance, image_features
from llamagen.evaluation.judges import Judge, held_out, labelled, load_judge

NEIGHBOURS = 3  # k of the precision/recall balls (the paper's choice)


@dataclass
class GenerationScores:
    accuracy: dict[str, float]  # per attribute, and "class" (every attribute the condition states)
    fid: float  # in the judge's feature space, against held-out real images
    fid_real_floor: float  # a second real set against the same held-out set
    precision: float
    recall: float
    diversity: float  # within-condition spread of features, relative to real images' (1 = as varied)
    images: int
    inception_fid: float | None = None  # against the held-out real images, when Inception weights are given

    def as_dict(self) -> dict:
        return asdict(self)


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double(), b.double())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall of `fake` against `real` features (N, D)."""

    def radii(x: torch.Tensor) -> torch.Tensor:
        return _pairwise(x, x).kthvalue(k + 1, dim=1).values  # the k-th neighbour, not counting itself

    def covered(points: torch.Tensor, centres: torch.Tensor) -> float:
        return float((_pairwise(points, centres) <= radii(centres)[None]).any(dim=1).double().mean())

    return covered(fake, real), covered(real, fake)


def within_group_spread(features: torch.Tensor, groups: torch.Tensor) -> float:
    """Mean distance between two features of the same group, averaged over groups of two or more."""
    spreads = []
    for group in groups.unique():
        members = features[groups == group]
        if len(members) > 1:
            distances = _pairwise(members, members)
            spreads.append(float(distances.sum() / (len(members) * (len(members) - 1))))
    return float(np.mean(spreads))


def condition_labels(kind: str, class_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The judge's attribute labels that a class id states: shapes (shape, colour), digits (digit)."""
    if kind == "shapes":
        return {"shape": class_ids // len(COLOURS), "colour": class_ids % len(COLOURS)}
    return {"digit": class_ids}


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
    `groups` (N,) marks images of the same condition (for diversity); `inception` adds the usual FID."""
    judge.eval()
    predicted = {name: [] for name in judge.config.heads}
    features = []
    for start in range(0, len(images), 256):
        chunk = images[start : start + 256].to(next(judge.parameters()).device)
        features.append(judge.embed(chunk).float().cpu())
        for name, values in judge.predict(chunk).items():
            predicted[name].append(values.cpu())
    fake = torch.cat(features)
    predicted = {name: torch.cat(values) for name, values in predicted.items()}
    hits = {name: predicted[name] == labels for name, labels in stated.items()}
    accuracy = {name: float(hit.float().mean()) for name, hit in hits.items()}
    accuracy["class"] = float(torch.stack(list(hits.values())).all(dim=0).float().mean())

    real = _real_features(judge, kind)
    _, second_labels = _second_real_set(kind, len(images))
    precision, recall = precision_recall(real, fake)
    real_groups = class_ids_of(kind, second_labels)
    second_features = _real_features(judge, kind, second_set_size=len(images))
    real_spread = within_group_spread(second_features, real_groups)
    return GenerationScores(
        accuracy=accuracy,
        fid=frechet_distance(real.numpy(), fake.numpy()),
        fid_real_floor=frechet_distance(real.numpy(), second_features.numpy()),
        precision=precision,
        recall=recall,
        diversity=within_group_spread(fake, groups) / real_spread,
        images=len(images),
        inception_fid=None
        if inception is None
        else frechet_distance(
            image_features(inception, _held_out_images(kind)), image_features(inception, images.float())
        ),
    )


def _embed(judge: Judge, images: torch.Tensor) -> torch.Tensor:
    device = next(judge.parameters()).device
    return torch.cat([judge.embed(images[i : i + 256].to(device)).float().cpu() for i in range(0, len(images), 256)])


# The judges' features of the real sets, by the judge's weights and device, the kind and the set: a sweep or a
# run of the card checks scores many generated sets against the same real ones, each with a newly loaded judge.
_REAL_FEATURES: dict[tuple, torch.Tensor] = {}


def _real_features(judge: Judge, kind: str, second_set_size: int | None = None) -> torch.Tensor:
    """The judge's features of its held-out real images, or of the second real set of `second_set_size`."""
    weights = hashlib.sha256()
    for tensor in judge.state_dict().values():
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    key = (weights.hexdigest(), str(next(judge.parameters()).device), kind, second_set_size)
    if key not in _REAL_FEATURES:
        images = _held_out_images(kind) if second_set_size is None else _second_real_set(kind, second_set_size)[0]
        _REAL_FEATURES[key] = _embed(judge, images)
    return _REAL_FEATURES[key]


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
    right}, "clip_score": mean 100 x cosine of image and caption in the pipeline's CLIP, "images": n}.
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
    images = torch.cat(pixels)
    predicted = {name: torch.cat([judge.predict(images[i : i + 256].to(pipe.device))[name].cpu()
                                  for i in range(0, len(images), 256)]) for name in judge.config.heads}  # fmt: skip
    accuracy, every = {}, torch.ones(len(items), dtype=torch.bool)
    for name in judge.config.heads:
        stated = torch.tensor([name in item["stated"].split(",") for item in items])
        right = predicted[name] == torch.tensor([item["attribute_ids"][name] for item in items])
        if stated.any():
            accuracy[name] = float(right[stated].float().mean())
        every &= right | ~stated
    accuracy["all_stated"] = float(every.float().mean())
    result = {"accuracy": accuracy, "images": len(items)}
    if scores:
        result["clip_score"] = float(torch.cat(scores).mean())
    return result
