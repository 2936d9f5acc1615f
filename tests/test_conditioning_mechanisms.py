"""The other ways to condition (`GPTConfig.condition`): each computes in cached decoding what it computes over a
whole sequence, starts as the plain decoder, reads the condition only where it says, and generates with guidance
(a null condition) on every decoding way."""

import re

import pytest
import torch
from helpers import cached_logits, condition, small

from llamagen import generate
from llamagen.fast import one_call
from llamagen.gpt import GPT, GPTConfig
from llamagen.gpt.config import CONDITIONINGS
from llamagen.training.conditioning_arms import ARMS, CLASS_ONLY_ARMS, arm_config, parameter_count

OTHERS = [c for c in CONDITIONINGS if c != "prefix"]


def conditioned(kind: str, model_type: str = "c2i", seed: int = 0, **overrides) -> GPT:
    """A small model of one conditioning, its condition's parameters made non-zero (they start at zero)."""
    tokens = 3 if model_type == "c2i" else 6
    model = small(seed=seed, model_type=model_type, condition=kind, cls_token_num=tokens, **overrides)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "modulation" in name or "cross_attention.wo" in name:
                parameter.normal_(std=0.3)
    return model


@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
@pytest.mark.parametrize("kind", CONDITIONINGS)
def test_cached_decoding_equals_the_full_forward_for_every_way_to_condition(kind, model_type):
    """Also with k class tokens and with a caption's padding, which the layers must skip as the prefix does."""
    model = conditioned(kind, model_type, n_kv_head=2)
    cond, mask = condition(model)
    tokens = torch.randint(0, 97, (3, 15), generator=torch.Generator().manual_seed(1))
    full = model(tokens, cond, mask)
    assert full.shape == (3, 16, 97)
    torch.testing.assert_close(cached_logits(model, tokens, cond, mask), full, atol=2e-5, rtol=0)


@pytest.mark.parametrize("kind", ["adaln_zero", "cross_attention"])
def test_where_only_the_layers_read_the_condition_a_new_model_ignores_it(kind):
    """The condition's branches start at zero: before training, every class gives the same predictions; once they
    are not zero, the class changes them. The sequence starts from a learned token, one position long."""
    model = small(condition=kind)
    assert model.prefix_length == 1 and model.freqs_cis.shape[0] == 1 + 16
    tokens = torch.randint(0, 97, (2, 15), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(tokens, torch.tensor([0, 0])), model(tokens, torch.tensor([1, 4])))
    trained = conditioned(kind)
    assert not torch.allclose(trained(tokens, torch.tensor([0, 0])), trained(tokens, torch.tensor([1, 4])))


def test_a_caption_read_by_the_layers_skips_its_padding():
    """Rewriting the padded caption positions changes nothing, for the mean the norms read and for the keys the
    image tokens attend to."""
    for kind in ("every_layer", "adaln_zero", "cross_attention"):
        model = conditioned(kind, "t2i")
        cond, mask = condition(model)
        noisy = cond.clone()
        noisy[1, :3] = torch.randn(3, 24) * 10  # row 1's padding
        tokens = torch.randint(0, 97, (3, 10))
        torch.testing.assert_close(model(tokens, noisy, mask), model(tokens, cond, mask), atol=1e-5, rtol=0)


def test_k_class_tokens_fill_a_longer_prefix_from_one_table_row_per_class():
    model = small(cls_token_num=3)
    assert model.prefix_length == 3
    assert model.cls_embedding.embedding_table.weight.shape == (5 + 1, 3 * 64)  # the null class's row too
    prefix = model.cls_embedding(torch.tensor([2]))
    torch.testing.assert_close(prefix.flatten(), model.cls_embedding.embedding_table.weight[2])


def test_the_published_conditioning_is_the_default_and_others_add_only_their_parameters():
    plain = small()
    assert plain.config.condition == "prefix"
    assert not any("start_token" in n or "modulation" in n or "cross" in n for n in plain.state_dict())

    def added(kind: str) -> list[str]:  # its keys the published model lacks, each layer's named once
        keys = set(small(condition=kind).state_dict()) - set(plain.state_dict())
        return sorted({re.sub(r"^layers\.\d+\.", "", key) for key in keys})

    extra = {kind: added(kind) for kind in OTHERS}
    assert extra["every_layer"] == []
    assert extra["adaln_zero"] == ["modulation.bias", "modulation.weight", "modulation_offset", "start_token"]
    assert extra["cross_attention"] == [
        "cross_attention.wkv.weight",
        "cross_attention.wo.weight",
        "cross_attention.wq.weight",
        "cross_attention_norm.weight",
        "start_token",
    ]
    with pytest.raises(ValueError, match="condition must be one of"):
        GPTConfig.from_dict({"dim": 64, "n_layer": 2, "n_head": 4, "block_size": 16, "condition": "film"})


@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
@pytest.mark.parametrize("kind", OTHERS)
def test_guided_generation_works_for_every_way_and_every_decoding_way_draws_the_same(kind, model_type):
    """Guidance mixes the condition's logits with the null condition's through the same layers; the fast ways
    that cannot run these layers (the one-call kernel) leave the step to the modules, and draw the same."""
    model = conditioned(kind, model_type)
    cond, mask = condition(model, batch=2)
    assert not one_call.serves(model, 4)

    def draw(cfg_scale: float, decoding: str = "fastest") -> torch.Tensor:
        seeded = torch.Generator().manual_seed(0)
        return generate(model, cond, mask, cfg_scale=cfg_scale, top_k=20, generator=seeded, decoding=decoding)

    sampled = draw(3.0)
    assert sampled.shape == (2, 16)
    assert torch.equal(sampled, draw(3.0, decoding="plain"))
    unguided = draw(1.0)
    assert not torch.equal(sampled, unguided)  # the null condition's logits moved the draw


def test_a_model_of_another_conditioning_moves_to_bf16_with_its_condition():
    model = conditioned("cross_attention", "t2i")
    cond, mask = condition(model)
    tokens = torch.randint(0, 97, (3, 15), generator=torch.Generator().manual_seed(1))
    model.setup_cache(3)
    model.to(torch.bfloat16)
    assert model.condition_tokens.dtype == torch.bfloat16 and model.condition_visible.dtype == torch.bool
    full = model(tokens, cond, mask)
    torch.testing.assert_close(cached_logits(model, tokens, cond, mask), full, atol=0.15, rtol=0.05)


@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
def test_every_arm_of_the_study_has_the_parameters_of_the_prefix_arm_within_five_percent(model_type):
    prefix = 1 if model_type == "c2i" else 24
    sizes = {"dim": 96, "n_layer": 3, "n_head": 4, "block_size": 64, "multiple_of": 16, "vocab_size": 512}
    conditions = {"model_type": model_type, "num_classes": 40, "caption_dim": 64, "cls_token_num": prefix}
    base = GPTConfig.from_dict({**sizes, **conditions})
    target = parameter_count(base)
    for arm in ARMS:
        if arm in CLASS_ONLY_ARMS and model_type == "t2i":
            with pytest.raises(ValueError, match="for class labels"):
                arm_config(base, arm)
            continue
        config = arm_config(base, arm)
        assert config.condition == ARMS[arm].get("condition", "prefix")
        assert abs(parameter_count(config) - target) <= 0.05 * target, arm
        assert config.dim == base.dim and config.n_layer == base.n_layer  # only the feed-forward width moves
        GPT(config)  # and it builds
    assert arm_config(base, "cross-attention").ffn_hidden_dim < arm_config(base, "adaln-zero").ffn_hidden_dim
    with pytest.raises(ValueError, match="unknown arm"):
        arm_config(base, "film")
