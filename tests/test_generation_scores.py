"""Scores of generated images: precision/recall, diversity, judge accuracy, FID and KID with their intervals and
floors, and the guidance sweep."""

import csv

import pytest
import torch

from llamagen.analysis.guidance import best_scale, sweep_guidance, write_rows_csv
from llamagen.data.shapes import Shapes
from llamagen.evaluation.generation import condition_labels, score_images
from llamagen.evaluation.judges import labelled, load_judge
from llamagen.evaluation.set_measures import precision_recall, within_group_spread


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

    from llamagen.evaluation.set_measures import NEIGHBOURS

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
    """Real shapes (a set neither judge training nor its held-out set) are judged right and read as something,
    with FID and KID near the real-against-real floor (KID's interval holding 0), and full precision and
    recall."""
    images, labels = real_shapes
    classes = labels["shape"] * 8 + labels["colour"]
    scores = score_images(load_judge("shapes-judge"), "shapes", images, condition_labels("shapes", classes), classes)
    assert scores.accuracy["class"].value >= 0.99 and scores.read_as_none.value <= 0.03
    assert scores.fid.low <= scores.fid.value <= scores.fid.high and scores.fid.value < 2 * scores.floor["fid"]
    assert scores.kid.low < 0 < scores.kid.high
    assert scores.precision.value > 0.9 and scores.recall.value > 0.9
    assert 0.8 < scores.diversity.value < 1.25 and scores.diversity.low < 1 < scores.diversity.high
    assert scores.floor["accuracy_class"] >= 0.99 and scores.floor["read_as_none"] <= 0.03


def test_wrong_conditions_and_collapse_are_caught(real_shapes):
    """The same images scored against other classes are judged wrong; one image repeated has no diversity,
    and its FID and KID are far above their floors."""
    images, labels = real_shapes
    classes = labels["shape"] * 8 + labels["colour"]
    judge = load_judge("shapes-judge")
    shifted = (classes + 1) % 40
    wrong = score_images(judge, "shapes", images, condition_labels("shapes", shifted), shifted)
    assert wrong.accuracy["class"].high < 0.05
    same = images[:1].expand(len(images), -1, -1, -1)
    first = classes[:1].expand(len(images))
    collapsed = score_images(judge, "shapes", same, condition_labels("shapes", first), classes)
    assert collapsed.diversity.value == 0.0 and collapsed.fid.low > 10 * collapsed.floor["fid"]
    assert collapsed.kid.low > 10 * collapsed.floor["kid"] > 0 or collapsed.kid.low > 0.1
    assert collapsed.recall.value < 0.05


def test_noise_is_read_as_none_and_other_classes_add_no_diversity(real_shapes):
    """Noise in place of a third of the images is read as none. Images of other classes in place of a third
    leave diversity, counted among images judged right, where the real images put it, while the spread of all
    images grows with them (the control: what diversity over every image would have rewarded)."""
    images, labels = real_shapes
    classes = labels["shape"] * 8 + labels["colour"]
    judge = load_judge("shapes-judge")
    stated = condition_labels("shapes", classes)
    real = score_images(judge, "shapes", images, stated, classes)
    third = torch.arange(len(images)) % 3 == 0
    noisy = images.clone()
    noisy[third] = torch.rand(int(third.sum()), *images.shape[1:], generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert score_images(judge, "shapes", noisy, stated, classes).read_as_none.low > 0.25
    assert real.read_as_none.high < 0.05
    mixed = images.clone()
    mixed[third] = images.roll(1, dims=0)[third]  # another shape's image in its place
    scores = score_images(judge, "shapes", mixed, stated, classes)
    assert abs(scores.diversity.value - real.diversity.value) < 0.1
    from llamagen.evaluation.generation import read_images

    spread_of_all = within_group_spread(read_images(judge, mixed).features, classes)
    assert spread_of_all > 1.2 * within_group_spread(read_images(judge, images).features, classes)


def test_a_row_has_every_measure_with_its_interval_and_floor(real_shapes, capsys):
    """`as_dict` flattens the scores into a sweep's row; the CLI prints it with its intervals."""
    images, labels = real_shapes
    classes = labels["shape"] * 8 + labels["colour"]
    scores = score_images(load_judge("shapes-judge"), "shapes", images[:100], condition_labels("shapes", classes[:100]),
                          classes[:100])  # fmt: skip
    row = scores.as_dict()
    for name in ("accuracy_class", "accuracy_shape", "read_as_none", "fid", "kid", "precision", "recall"):
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"] and f"{name}_real_floor" in row
    assert "diversity_low" in row and "diversity_real_floor" not in row  # relative to real images already
    assert row["images"] == 100 and row["fid_all_features"] != row["fid_all_features"]  # NaN: 100 < 256
    from llamagen.cli.evaluation import _print_guidance_row

    _print_guidance_row({"cfg_scale": 2.0, **row})
    printed = capsys.readouterr().out
    assert printed.startswith("cfg 2 ") and f"KID {row['kid']:.4f} [{row['kid_low']:.4f}" in printed


def test_real_readings_are_reused_only_for_the_same_judge_weights():
    """The real sets are read once per judge's weights: a newly loaded judge reuses the reading, and a judge
    whose weights changed gets its own."""
    from llamagen.evaluation.generation import _real_reading, _second_real_set, read_images

    reading = _real_reading(load_judge("shapes-judge").eval(), "shapes", second_set_size=50)
    judge = load_judge("shapes-judge").eval()
    assert torch.equal(reading.features, read_images(judge, _second_real_set("shapes", 50)[0]).features)
    assert _real_reading(judge, "shapes", second_set_size=50) is reading
    with torch.no_grad():
        next(judge.parameters()).mul_(1.5)
    changed = _real_reading(judge, "shapes", second_set_size=50).features
    assert torch.equal(changed, read_images(judge, _second_real_set("shapes", 50)[0]).features)
    assert not torch.equal(changed, reading.features)


def test_best_scale_takes_the_highest_accuracy_and_breaks_ties_by_the_lower_kid():
    """Accuracies equal to 4 decimals tie, and the lower KID wins. Checked by hand once: a version that compares
    unrounded accuracies picks 1.0, and one that prefers the higher KID picks 3.0."""
    rows = [
        {"cfg_scale": 1.0, "accuracy_class": 0.90004, "kid": 0.12},
        {"cfg_scale": 2.0, "accuracy_class": 0.9, "kid": 0.08},
        {"cfg_scale": 3.0, "accuracy_class": 0.9, "kid": 0.09},
        {"cfg_scale": 4.0, "accuracy_class": 0.8, "kid": 0.01},
    ]
    assert best_scale(rows) == 2.0
    assert best_scale(rows[2:]) == 3.0  # a higher accuracy wins over a lower KID
    recorded = [{key.replace("kid", "fid"): value for key, value in row.items()} for row in rows]
    assert best_scale(recorded) == 2.0  # rows with FID alone: the lower FID
    captions = [{key.replace("class", "all_stated"): value for key, value in row.items()} for row in rows]
    assert best_scale(captions) == 2.0  # caption rows: every stated attribute right


def test_guidance_sweep_rows_and_csv(tmp_path):
    from helpers import small, small_tokenizer

    from llamagen.pipeline import Pipeline

    # A random 10-class model (the plumbing only): 8x8 codes x downsample 4 are the digits judge's 32x32.
    pipe = Pipeline(small(vocab_size=64, num_classes=10, block_size=64), small_tokenizer())
    rows = sweep_guidance(pipe, "digits", scales=(1.0, 3.0), images_per_class=2)
    assert [row["cfg_scale"] for row in rows] == [1.0, 3.0] and "inception_fid" not in rows[0]
    from llamagen.evaluation.fid import RandomFeatures  # stands in for Inception-v3: any feature network fits

    # 20 generated and 297 real digits against 512 features: singular covariances, so no FID in them.
    with_features = sweep_guidance(pipe, "digits", scales=(1.0,), images_per_class=2, inception=RandomFeatures())
    assert "inception_fid" not in with_features[0]
    assert set(rows[0]) >= {"accuracy_digit", "accuracy_class", "kid", "kid_low", "kid_real_floor", "read_as_none",
                            "fid", "fid_real_floor", "precision", "recall", "diversity"}  # fmt: skip
    assert rows[0]["fid"] != rows[0]["fid"]  # NaN: 20 images are too few for FID's 32 axes
    assert best_scale(rows) in (1.0, 3.0)
    path = write_rows_csv(rows, tmp_path / "sweep.csv")
    read = list(csv.DictReader(path.open()))
    assert [float(row["cfg_scale"]) for row in read] == [1.0, 3.0]


def test_schedules_are_swept_at_equal_mean_scale(capsys):
    """Each schedule at each mean scale: a ramp reaches twice the mean less 1. At mean 1 every schedule guides
    no token, so its images, and every score, are the constant schedule's."""
    from helpers import small, small_tokenizer

    from llamagen.cli.evaluation import _print_guidance_row
    from llamagen.pipeline import Pipeline

    pipe = Pipeline(small(vocab_size=64, num_classes=10, block_size=64), small_tokenizer())
    rows = sweep_guidance(pipe, "digits", scales=(1.0, 2.0), images_per_class=2, schedules=("constant", "linear"),
                          progress=_print_guidance_row)  # fmt: skip
    assert [(r["cfg_schedule"], r["mean_scale"], r["cfg_scale"]) for r in rows] == [
        ("constant", 1.0, 1.0), ("constant", 2.0, 2.0), ("linear", 1.0, 1.0), ("linear", 2.0, 3.0)
    ]  # fmt: skip
    unguided = [{k: v for k, v in row.items() if k != "cfg_schedule"} for row in (rows[0], rows[2])]
    assert str(unguided[0]) == str(unguided[1])  # NaN included
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("cfg 1 ") and printed[3].startswith("linear cfg, mean 2 (up to 3) class accuracy")


class RealImagesPipe:
    """Stands in for a perfect text-to-image pipeline: for each caption, the real image it was written for."""

    model_type, device = "t2i", torch.device("cpu")

    def __init__(self, items, text_encoder=None):
        self.by_caption = {item["caption"]: item["image"] for item in items}
        self.text_encoder = text_encoder

    def __call__(self, prompts, seed, **sampling):
        from types import SimpleNamespace

        return SimpleNamespace(pixels=torch.stack([self.by_caption[prompt] for prompt in prompts]))


def test_a_caption_sweep_judges_each_schedule_and_scale_with_an_interval(capsys):
    """A pipeline that draws each caption's own real image: right on nearly every stated attribute at every row,
    the share of captions all right inside its Wilson interval."""
    from llamagen.analysis.guidance import sweep_caption_guidance
    from llamagen.evaluation.generation import caption_sets

    pipe = RealImagesPipe(caption_sets(60)["seen"])
    rows = sweep_caption_guidance(pipe, captions=60, scales=(1.0, 2.0), schedules=("constant", "reverse"))
    assert [(r["cfg_schedule"], r["cfg_scale"]) for r in rows] == [
        ("constant", 1.0), ("constant", 2.0), ("reverse", 1.0), ("reverse", 3.0)
    ]  # fmt: skip
    for row in rows:
        assert row["images"] == 60 and row["accuracy_all_stated"] >= 0.95 and row["clip_score"] is None
        assert row["accuracy_all_stated_low"] < row["accuracy_all_stated"] <= row["accuracy_all_stated_high"]
        assert row["kid_low"] <= row["kid"] <= row["kid_high"] and "fid_real_floor" in row
    from llamagen.cli.evaluation import _print_guidance_row

    _print_guidance_row(rows[-1])
    printed = capsys.readouterr().out
    assert printed.startswith("reverse cfg, mean 2 (up to 3) shape ") and f"KID {rows[-1]['kid']:.4f} [" in printed


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
    # As a set, they are as close to the held-out shapes as a second real set of 150 (their floor) ...
    real = scores["distances"]
    assert real["kid_low"] < 0 < real["kid_high"] and real["fid"] < 2 * real["fid_real_floor"]
    assert real["precision"] > 0.9 and real["recall"] > 0.9 and real["recall_real_floor"] > 0.9
    assert real["fid_all_features"] != real["fid_all_features"]  # NaN: 150 images, fewer than the 256 features
    # ... and one image drawn for every caption is far from them.
    collapsed = evaluate_text_conditional(RealImagesPipe([{**item, "image": seen[0]["image"]} for item in seen]), seen)
    assert collapsed["distances"]["kid_low"] > 0.1 and collapsed["distances"]["recall"] < 0.05
    from llamagen.text import ClipConfig, ClipTextEncoder

    clip = ClipTextEncoder.from_config(ClipConfig.preset("shapes-clip")).eval()  # random: the plumbing only
    with_clip = evaluate_text_conditional(RealImagesPipe(seen, clip), seen[:20])
    images, captions = torch.stack([item["image"] for item in seen[:20]]), [item["caption"] for item in seen[:20]]
    assert with_clip["clip_score"] == pytest.approx(float(clip.clip_score(images, captions).mean()), rel=1e-6)
    # Images of other captions (a shifted list) are judged wrong on what those captions state.
    shifted = RealImagesPipe([{**a, "image": b["image"]} for a, b in zip(seen, seen[1:] + seen[:1], strict=True)])
    assert evaluate_text_conditional(shifted, seen)["accuracy"]["all_stated"] < 0.2


def test_a_guidance_sweep_stopped_part_way_keeps_the_rows_it_scored(tmp_path, monkeypatch, capsys):
    from llamagen.analysis import guidance
    from llamagen.cli import main

    row = {"cfg_schedule": "constant", "mean_scale": 1.0, "cfg_scale": 1.0, "accuracy_class": 0.5, "fid": 90.0,
           "fid_real_floor": 80.0, "precision": 0.5, "recall": 0.6, "diversity": 1.0}  # fmt: skip

    def stopped(pipe, kind, progress, **settings):
        progress(row)
        raise KeyboardInterrupt  # as a user's Ctrl-C in the second row

    monkeypatch.setattr(guidance, "sweep_guidance", stopped)
    out = tmp_path / "sweep.csv"
    with pytest.raises(KeyboardInterrupt):
        main(["sweep", "cfg", "--model", "digits-c2i", "--judge", "digits", "--out", str(out)])
    assert list(csv.DictReader(out.open())) == [{name: str(value) for name, value in row.items()}]
    assert capsys.readouterr().out.startswith("cfg 1     class 50.0%; FID 90.00 (real 80.00)")
