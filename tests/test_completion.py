"""Completion: the first tokens of an image kept, the rest sampled after them under a condition."""

import pytest
import torch
from helpers import condition, small

from llamagen import generate
from llamagen.gpt import GPT


def drawn(model, cond, cond_mask=None, seed=3, **options):
    return generate(model, cond, cond_mask, generator=torch.Generator().manual_seed(seed), **options)


@pytest.fixture(scope="module")
def image():
    """A (3, 16) image's tokens, as a generation of the small model drew them."""
    model = small()
    return drawn(model, torch.tensor([0, 1, 2]), seed=11)


def test_the_whole_grid_kept_is_the_image_itself(image):
    model = small()
    assert torch.equal(drawn(model, torch.tensor([4, 4, 4]), prefix_tokens=image, cfg_scale=3.0), image)


@pytest.mark.parametrize("decoding", ["plain", "fastest"])
def test_no_row_kept_is_plain_generation_with_the_same_seed(decoding):
    model = small()
    cond = torch.tensor([0, 3])
    plain = drawn(model, cond, cfg_scale=2.0, top_k=20, decoding=decoding)
    assert torch.equal(drawn(model, cond, cfg_scale=2.0, top_k=20, decoding=decoding,
                             prefix_tokens=torch.zeros(2, 0, dtype=torch.long)), plain)  # fmt: skip


@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
@pytest.mark.parametrize("decoding", ["plain", "fastest"])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_greedy_completion_is_the_full_forwards_argmax_continuation(image, model_type, decoding, cfg_scale):
    """The kept tokens stay; each later token is the arg-max of the full forward's (guided) logits over the
    kept tokens and those chosen after them."""
    model = small(model_type=model_type, cls_token_num=4)
    cond, mask = condition(model, batch=3)
    kept = 6
    tokens = drawn(model, cond, mask, prefix_tokens=image[:, :kept], top_k=1, cfg_scale=cfg_scale, decoding=decoding)
    assert torch.equal(tokens[:, :kept], image[:, :kept])
    logits = model(tokens[:, :-1], cond, mask)
    if cfg_scale != 1.0:
        unconditional = model(tokens[:, :-1], model.unconditional(cond), mask)
        logits = unconditional + cfg_scale * (logits - unconditional)
    assert torch.equal(tokens[:, kept:], logits[:, kept:].argmax(-1))
    # The control: without the kept tokens, greedy decoding writes another image.
    assert not torch.equal(drawn(model, cond, mask, top_k=1, cfg_scale=cfg_scale)[:, :kept], image[:, :kept])


def test_the_kept_tokens_are_prefilled_in_one_forward_and_progress_starts_after_them(image, monkeypatch):
    model = small()
    prefills, steps = [], []
    original = GPT.prefill
    monkeypatch.setattr(GPT, "prefill", lambda self, *a: prefills.append(a[2].shape) or original(self, *a))
    drawn(model, torch.tensor([0, 1, 2]), prefix_tokens=image[:, :5], cfg_scale=2.0,
          progress=lambda done, total: steps.append(done), decoding="plain")  # fmt: skip
    assert prefills == [torch.Size([6, 5])]  # both halves of the guided batch, 5 tokens each
    assert steps == list(range(5, 17))


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        (torch.zeros(3, 17, dtype=torch.long), "holds 17 tokens, but an image of this model has 16"),
        (torch.full((3, 4), 97), r"ids from 97 to 97, but this model's codebook has 97 \(0 to 96\)"),
        (torch.full((3, 4), -1), "ids from -1 to -1"),
        (torch.zeros(2, 4, dtype=torch.long), r"must be \(batch, n\) = \(3, n\)"),
        (torch.zeros(3, 4), "must be integer token ids"),
    ],
    ids=["beyond-the-grid", "another-vocabulary", "negative", "wrong-batch", "floats"],
)
def test_a_prefix_the_model_cannot_continue_is_refused_before_any_work(prefix, message, monkeypatch):
    model = small()
    monkeypatch.setattr(GPT, "prefill", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=message):
        generate(model, torch.tensor([0, 1, 2]), cfg_scale=2.0, prefix_tokens=prefix)


@pytest.mark.parametrize("way_in", ["every_layer", "adaln_zero", "cross_attention"])
def test_completion_works_whichever_way_the_condition_enters(image, way_in):
    model = small(condition=way_in)
    cond = torch.tensor([0, 1, 2])
    tokens = drawn(model, cond, prefix_tokens=image[:, :7], top_k=1, cfg_scale=2.0)
    logits = model(tokens[:, :-1], cond)
    unconditional = model(tokens[:, :-1], model.unconditional(cond))
    assert torch.equal(tokens[:, :7], image[:, :7])
    assert torch.equal(tokens[:, 7:], (unconditional + 2.0 * (logits - unconditional))[:, 7:].argmax(-1))


def test_the_pipeline_completes_images_from_their_first_rows():
    """shapes-c2i continues a held-out red circle: the kept rows are the image's own codes, all rows kept give
    its reconstruction back, and each condition continues it its own way from the same seed."""
    from llamagen.evaluation.judges import held_out
    from llamagen.images import tensor_to_pil
    from llamagen.pipeline import decode_tokens, load_pipeline

    pipe = load_pipeline("shapes-c2i")
    image = held_out("shapes", 1)[0]
    own = pipe.tokenizer.tokenize(image).flatten(1)
    grid = pipe.gpt.config.grid_size
    output = pipe(class_labels=["red circle", "blue square"], images=image, keep_rows=3, seed=0)
    assert torch.equal(output.tokens[:, : 3 * grid], own.expand(2, -1)[:, : 3 * grid])
    assert not torch.equal(output.tokens[0], output.tokens[1])
    assert torch.equal(output.originals, image.expand(2, -1, -1, -1))
    whole = pipe(class_labels="blue square", images=tensor_to_pil(image), keep_rows=grid)
    assert torch.equal(whole.tokens, own) and torch.equal(whole.pixels, decode_tokens(pipe.tokenizer, own).float())
    assert torch.equal(pipe(class_labels="red circle", images=image, keep_rows=0, seed=5).tokens,
                       pipe(class_labels="red circle", seed=5).tokens)  # fmt: skip


BLANK = torch.zeros(1, 3, 64, 64)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"keep_rows": 3}, "keep_rows needs images="),
        ({"keep_rows": 9, "images": BLANK}, "keep_rows must be a whole number of token rows from 0 to 8, got 9"),
        ({"keep_rows": 2.5, "images": BLANK}, "keep_rows must be a whole number of token rows from 0 to 8, got 2.5"),
        ({"keep_rows": 3, "images": torch.zeros(1, 3, 32, 32)}, r"images must be \(N, 3, 64, 64\)"),
        ({"keep_rows": 3, "images": torch.zeros(3, 3, 64, 64)}, "3 images for 2 conditions"),
        ({"keep_rows": 3, "images": ["red.png"]}, "images must be PIL images"),
    ],
    ids=["no-images", "beyond-the-grid", "fraction", "wrong-size", "too-many", "paths"],
)
def test_a_completion_the_pipeline_cannot_make_is_refused_before_any_work(request_, message, monkeypatch):
    from llamagen.pipeline import load_pipeline

    pipe = load_pipeline("shapes-c2i")
    monkeypatch.setattr(GPT, "prefill", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=message):
        pipe(class_labels=["red circle", "blue square"], **request_)


def test_contradicting_classes_differ_in_every_attribute():
    from llamagen.analysis.completion import contradicting_classes
    from llamagen.evaluation.generation import condition_labels

    classes = torch.arange(40)
    other = condition_labels("shapes", contradicting_classes("shapes", classes))
    own = condition_labels("shapes", classes)
    assert (other["shape"] != own["shape"]).all() and (other["colour"] != own["colour"]).all()
    assert set(contradicting_classes("shapes", classes).tolist()) == set(range(40))  # a permutation
    assert torch.equal(contradicting_classes("digits", torch.arange(10)), torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0]))


def test_with_every_row_kept_the_image_decides_and_with_none_the_class():
    """Held-out shapes completed by shapes-c2i: all 8 rows kept, every completion is the image's reconstruction,
    read as the image's class (not a contradicting one); no row kept, plain generation of the asked class,
    read as it far more often than as the image's class. Every row kept, the completion writes no token and
    takes in no information about the class; none kept, every token is written under it."""
    from llamagen.analysis.completion import completion_readings
    from llamagen.pipeline import load_pipeline

    rows = completion_readings(load_pipeline("shapes-c2i"), "shapes", keep_rows=(0, 8), images=40, cfg_scale=2.0)
    by = {(row["keep_rows"], row["condition"]): row for row in rows if row["where"] == "all"}
    assert by[8, "contradict"]["read_as_image"] >= 0.9 and by[8, "contradict"]["read_as_condition"] == 0.0
    assert by[8, "agree"]["read_as_condition"] == by[8, "agree"]["read_as_image"] >= 0.9
    assert by[0, "contradict"]["read_as_condition_low"] > by[0, "contradict"]["read_as_image_high"]
    assert by[0, "contradict"]["images"] == 40
    assert by[8, "agree"]["class_nats_written"] == by[8, "contradict"]["class_nats_written_high"] == 0.0
    assert by[0, "agree"]["class_nats_written_low"] > 0.1
    thirds = [row for row in rows if row["keep_rows"] == 8 and row["condition"] == "agree" and row["where"] != "all"]
    assert [row["where"] for row in thirds] == ["top", "middle", "bottom"]
    assert sum(row["images"] for row in thirds) == 40


def test_the_completion_sweep_writes_a_row_per_count_and_condition(tmp_path, capsys):
    import csv

    from llamagen.cli import main

    out = tmp_path / "completion.csv"
    argv = ["sweep", "completion", "--model", "digits-c2i", "--judge", "digits", "--keep-rows", "0", "8",
            "--images", "20", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(row["keep_rows"], row["condition"]) for row in rows] == [
        ("0", "agree"), ("0", "contradict"), ("8", "agree"), ("8", "contradict")
    ]  # fmt: skip
    assert {row["cfg_scale"] for row in rows} == {"4.0"}  # digits-c2i's card recommends 4
    assert float(rows[3]["read_as_image"]) >= 0.9 and float(rows[3]["read_as_condition"]) <= 0.1
    assert "8 rows kept, contradict" in capsys.readouterr().out
