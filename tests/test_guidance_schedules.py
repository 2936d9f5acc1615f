"""Guidance schedules: each token's scale, and generations that guide each token at its own scale."""

import math

import pytest
import torch
from helpers import condition, small

from llamagen import generate
from llamagen.gpt import GPT
from llamagen.gpt.guidance_schedules import guidance_scales, peak_for_mean_scale
from llamagen.gpt.sampling import guided


def test_each_schedule_gives_each_token_its_scale():
    assert guidance_scales("constant", 3.0, 4) == [3.0, 3.0, 3.0, 3.0]
    assert guidance_scales("linear", 3.0, 5) == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0])  # VAR's ramp, from 1
    assert guidance_scales("reverse", 3.0, 5) == pytest.approx([3.0, 2.5, 2.0, 1.5, 1.0])
    assert guidance_scales(lambda index, count: 1.0 + (index >= count // 2), 9.0, 4) == [1.0, 1.0, 2.0, 2.0]
    assert guidance_scales("first-half", 3.0, 5) == [3.0, 3.0, 1.0, 1.0, 1.0]  # as cfg_interval at half
    assert guidance_scales("linear", 3.0, 1) == [3.0]  # one token: the scale itself


@pytest.mark.parametrize("schedule", ["constant", "linear", "reverse", "first-half"])
def test_schedules_compared_at_equal_mean_scale(schedule):
    scales = guidance_scales(schedule, peak_for_mean_scale(schedule, 2.0), 256)
    assert sum(scales) / len(scales) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("cosine", "unknown guidance schedule 'cosine': use one of constant, linear, reverse, first-half or a"),
        (lambda index, count: -1.0 if index == 3 else 2.0, "the guidance schedule gave -1.0 for token 3"),
        (lambda index, count: math.nan, "the guidance schedule gave nan for token 0"),
        (lambda index, count: "2", "the guidance schedule gave '2' for token 0"),
        (lambda index, count: True, "the guidance schedule gave True for token 0"),
    ],
    ids=["unknown", "negative", "nan", "text", "bool"],
)
def test_a_bad_schedule_is_refused_before_any_work(schedule, message, monkeypatch):
    model = small()
    monkeypatch.setattr(GPT, "prefill", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=message):
        generate(model, torch.tensor([0]), cfg_scale=2.0, cfg_schedule=schedule)


@pytest.mark.parametrize(
    "schedule", ["linear", "reverse", "first-half", lambda index, count: 1.0 + 2.0 * (index % 3 == 0)]
)
def test_each_token_is_guided_at_its_own_scale(schedule):
    """Greedy tokens are the arg-max of the full forward's logits, guided at each position's scale from the
    schedule; where that scale is 1 (the first token of a linear ramp), the conditional logits alone."""
    model = small(model_type="t2i", cls_token_num=4)
    cond, mask = condition(model, batch=2)
    tokens = generate(model, cond, mask, cfg_scale=3.0, cfg_schedule=schedule, top_k=1)
    both = torch.cat([model(tokens[:, :-1], cond, mask), model(tokens[:, :-1], model.unconditional(cond), mask)])
    scales = guidance_scales(schedule, 3.0, model.config.block_size)
    expected = torch.stack([guided(both[:, i], scale).argmax(-1) for i, scale in enumerate(scales)], dim=1)
    assert torch.equal(tokens, expected)
    # The control: guided at one scale throughout, the tokens differ.
    assert not torch.equal(tokens, generate(model, cond, mask, cfg_scale=3.0, top_k=1))


def test_the_constant_schedule_is_the_default_and_a_callable_constant_matches_it():
    model = small()

    def draw(**schedule):
        return generate(model, torch.tensor([0, 4, 2]), cfg_scale=2.5, generator=torch.Generator().manual_seed(3),
                        **schedule)  # fmt: skip

    default = draw()
    assert torch.equal(default, draw(cfg_schedule="constant"))
    assert torch.equal(default, draw(cfg_schedule=lambda index, count: 2.5))


def test_a_schedule_of_ones_needs_no_null_class():
    model = small(class_dropout_prob=0.0)
    assert generate(model, torch.tensor([0]), cfg_scale=1.0, cfg_schedule="linear", top_k=1).shape == (1, 16)
    with pytest.raises(ValueError, match="no null class"):
        generate(model, torch.tensor([0]), cfg_scale=2.0, cfg_schedule="linear")
