"""Scores of generated images: precision/recall, diversity, judge accuracy and FID, and the guidance sweep."""

import csv

import pytest
import torch

from llamagen.analysis.guidance import best_scale, sweep_guidance, write_rows_csv
from llamagen.data.shapes import Shapes
from llamagen.evaluation.generation import (
    condition_labels,
    precision_recall,
    score_images,
    within_group_spread,
)
from llamagen.evaluation.judges import labelled, load_judge


def test_precision_and_recall_of_sets_that_match_or_do_not():
    torch.manual_seed(0)
    real = torch.randn(200, 4)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    far = torch.randn(200, 4) + 100
    assert precision_recall(real, far) == (0.0, 0.0)
    # Generated images all in one corner of the real distribution: precise, but they miss most of it.
    collapsed = real[real[:, 0] > 1.0]
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_precision_and_recall_match_a_plain_loop(seed):
    """Kynkaenniemi et al. (2019), written out as loops with scipy's distances: a point is covered when it lies
    within the distance from some other set's point to that point's k-th nearest neighbour (itself not counted).
    Checked by hand once: counting a point as its own neighbour (the (k-1)-th), or swapping the two sets' roles,
    fails here."""
    from scipy.spatial.distance import cdist

    from llamagen.evaluation.generation import NEIGHBOURS

    generator = torch.Generator().manual_seed(seed)
    real, fake = torch.randn(60, 3, generator=generator), torch.randn(50, 3, generator=generator) * 1.5 + 0.5

    def covered(points, centres):
        within = cdist(centres, centres)
        radii = [sorted(row)[NEIGHBOURS] for row in within]  # row[0] is the centre itself
        distances = cdist(points, centres)
        return sum(any(distances[i][j] <= radii[j] for j in range(len(centres))) for i in range(len(points)))

    precision, recall = precision_recall(real, fake)
    assert precision == pytest.approx(covered(fake.numpy(), real.numpy()) / 50)
    assert recall == pytest.approx(covered(real.numpy(), fake.numpy()) / 60)


def test_spread_within_groups():
    features = torch.tensor([[0.0], [2.0], [10.0], [10.0]])
    assert within_group_spread(features, torch.tensor([0, 0, 1, 1])) == pytest.approx(1.0)  # (2 + 0) / 2


def test_class_ids_state_shape_and_colour():
    labels = condition_labels("shapes", torch.tensor([0, 9, 39]))
    assert labels["shape"].tolist() == [0, 1, 4] and labels["colour"].tolist() == [0, 1, 7]


@pytest.fixture(scope="module")
def real_shapes():
    data = Shapes(seed=3000, length=400)
    return labelled([data[i] for i in range(len(data))])


def test_real_images_score_as_real(real_shapes):
    """Real shapes (a set neither judge training nor its held-out set) are judged right, with an FID near the
    real-against-real floor and full precision and recall."""
    images, labels = real_shapes
    classes = labels["shape"] * 8 + labels["colour"]
    scores = score_images(load_judge("shapes-judge"), "shapes", images, condition_labels("shapes", classes), classes)
    assert scores.accuracy["class"] >= 0.99
    assert scores.fid < 2 * scores.fid_real_floor
    assert scores.precision > 0.9 and scores.recall > 0.9
    assert 0.8 < scores.diversity < 1.25


def test_wrong_conditions_and_collapse_are_caught(real_shapes):
    """The same images scored against other classes are judged wrong; one image repeated has no diversity,
    and its FID is far above the floor."""
    images, labels = real_shapes
    classes = (labels["shape"] * 8 + labels["colour"] + 1) % 40
    judge = load_judge("shapes-judge")
    wrong = score_images(judge, "shapes", images, condition_labels("shapes", classes), classes)
    assert wrong.accuracy["class"] < 0.05
    same = images[:1].expand(len(images), -1, -1, -1)
    collapsed = score_images(judge, "shapes", same, condition_labels("shapes", classes), classes)
    assert collapsed.diversity == 0.0 and collapsed.fid > 10 * collapsed.fid_real_floor
    assert collapsed.recall < 0.05


def test_real_features_are_reused_only_for_the_same_judge_weights():
    """The real sets' features are computed once per judge's weights: a newly loaded judge reuses them, and a
    judge whose weights changed gets its own."""
    from llamagen.evaluation.generation import _embed, _real_features, _second_real_set

    features = _real_features(load_judge("shapes-judge").eval(), "shapes", second_set_size=50)
    judge = load_judge("shapes-judge").eval()
    assert torch.equal(features, _embed(judge, _second_real_set("shapes", 50)[0]))
    assert _real_features(judge, "shapes", second_set_size=50) is features
    with torch.no_grad():
        next(judge.parameters()).mul_(1.5)
    changed = _real_features(judge, "shapes", second_set_size=50)
    assert torch.equal(changed, _embed(judge, _second_real_set("shapes", 50)[0])) and not torch.equal(changed, features)


def test_best_scale_takes_the_highest_accuracy_and_breaks_ties_by_the_lower_fid():
    """Accuracies equal to 4 decimals tie, and the lower FID wins. Checked by hand once: a version that compares
    unrounded accuracies picks 1.0, and one that prefers the higher FID picks 3.0."""
    rows = [
        {"cfg_scale": 1.0, "accuracy_class": 0.90004, "fid": 12.0},
        {"cfg_scale": 2.0, "accuracy_class": 0.9, "fid": 8.0},
        {"cfg_scale": 3.0, "accuracy_class": 0.9, "fid": 9.0},
        {"cfg_scale": 4.0, "accuracy_class": 0.8, "fid": 1.0},
    ]
    assert best_scale(rows) == 2.0
    assert best_scale(rows[2:]) == 3.0  # a higher accuracy wins over a lower FID


def test_guidance_sweep_rows_and_csv(tmp_path):
    from helpers import small, small_tokenizer

    from llamagen.pipeline import Pipeline

    # A random 10-class model (the plumbing only): 8x8 codes x downsample 4 are the digits judge's 32x32.
    pipe = Pipeline(small(vocab_size=64, num_classes=10, block_size=64), small_tokenizer())
    rows = sweep_guidance(pipe, "digits", scales=(1.0, 3.0), images_per_class=2)
    assert [row["cfg_scale"] for row in rows] == [1.0, 3.0] and "inception_fid" not in rows[0]
    from llamagen.evaluation.fid import RandomFeatures  # stands in for Inception-v3: any feature network fits

    with_features = sweep_guidance(pipe, "digits", scales=(1.0,), images_per_class=2, inception=RandomFeatures())
    assert with_features[0]["inception_fid"] > 0
    assert set(rows[0]) >= {"accuracy_digit", "accuracy_class", "fid", "fid_real_floor", "precision", "recall"}
    assert best_scale(rows) in (1.0, 3.0)
    path = write_rows_csv(rows, tmp_path / "sweep.csv")
    read = list(csv.DictReader(path.open()))
    assert [float(row["cfg_scale"]) for row in read] == [1.0, 3.0]


class RealImagesPipe:
    """Stands in for a perfect text-to-image pipeline: for each caption, the real image it was written for."""

    model_type, device = "t2i", torch.device("cpu")

    def __init__(self, items, text_encoder=None):
        self.by_caption = {item["caption"]: item["image"] for item in items}
        self.text_encoder = text_encoder

    def __call__(self, prompts, seed, **sampling):
        from types import SimpleNamespace

        return SimpleNamespace(pixels=torch.stack([self.by_caption[prompt] for prompt in prompts]))


def test_text_to_image_scores_read_only_what_the_caption_states():
    from llamagen.evaluation.generation import caption_sets, evaluate_text_conditional

    sets = caption_sets(150)
    seen, unseen = sets["seen"], sets["held_out_pairs"]
    assert all("shape" in item["stated"] for item in seen)
    assert not {(i["attributes"]["shape"], i["attributes"]["colour"]) for i in seen} & {
        (i["attributes"]["shape"], i["attributes"]["colour"]) for i in unseen
    }
    scores = evaluate_text_conditional(RealImagesPipe(seen + unseen), seen)
    assert scores["images"] == 150 and set(scores["accuracy"]) == {
        "shape", "colour", "size", "position", "background", "all_stated"
    }  # fmt: skip
    assert min(scores["accuracy"].values()) >= 0.97  # real images, judged on what their captions say
    from llamagen.text import ClipConfig, ClipTextEncoder

    clip = ClipTextEncoder.from_config(ClipConfig.preset("shapes-clip")).eval()  # random: the plumbing only
    with_clip = evaluate_text_conditional(RealImagesPipe(seen, clip), seen[:20])
    images, captions = torch.stack([item["image"] for item in seen[:20]]), [item["caption"] for item in seen[:20]]
    assert with_clip["clip_score"] == pytest.approx(float(clip.clip_score(images, captions).mean()), rel=1e-6)
    # Images of other captions (a shifted list) are judged wrong on what those captions state.
    shifted = RealImagesPipe([{**a, "image": b["image"]} for a, b in zip(seen, seen[1:] + seen[:1], strict=True)])
    assert evaluate_text_conditional(shifted, seen)["accuracy"]["all_stated"] < 0.2
