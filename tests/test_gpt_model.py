"""The generator's architecture, published key names, cached decoding and input checks."""

import pytest
import torch
from helpers import SMALL, cached_logits, condition, small

from llamagen.gpt import GPT, GPTConfig, gpt_preset
from llamagen.gpt.layers import rope_table_2d
from llamagen.gpt.model import attention_mask


@pytest.mark.parametrize(
    ("prefix", "preset", "overrides"),
    [("GPT-B c2i", "GPT-B", {}), ("GPT-XL t2i", "GPT-XL", {"model_type": "t2i", "cls_token_num": 120})],
)
def test_state_dict_has_exactly_the_published_keys_and_shapes(prefix, preset, overrides, official_keys):
    (published,) = [keys for name, keys in official_keys.items() if name.startswith(prefix)]
    with torch.device("meta"):
        model = GPT(gpt_preset(preset, **overrides))
    assert {key: list(value.shape) for key, value in model.state_dict().items()} == published
    assert "freqs_cis" not in model.state_dict()  # derived from the config, never saved


@pytest.mark.parametrize(
    ("preset", "layers", "dim", "heads", "ffn"),
    [("GPT-L", 24, 1024, 16, 2816), ("GPT-XXL", 48, 1536, 24, 4096), ("GPT-3B", 24, 3200, 32, 8704)],
)
def test_larger_presets_follow_the_published_pattern(preset, layers, dim, heads, ffn):
    config = gpt_preset(preset)
    assert (config.n_layer, config.dim, config.n_head, config.ffn_hidden_dim) == (layers, dim, heads, ffn)


@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("position_tensor", [False, True], ids=["position-int", "position-tensor"])
def test_cached_decoding_equals_the_full_forward(model_type, n_kv_head, position_tensor):
    """Also with grouped-query attention (where the original's cache breaks) and caption masks, and with the
    position a tensor, as a CUDA graph replays the step."""
    model = small(model_type=model_type, n_kv_head=n_kv_head, cls_token_num=1 if model_type == "c2i" else 6)
    cond, mask = condition(model)
    tokens = torch.randint(0, 97, (3, 15), generator=torch.Generator().manual_seed(1))
    full = model(tokens, cond, mask)
    torch.testing.assert_close(cached_logits(model, tokens, cond, mask, position_tensor), full, atol=2e-5, rtol=0)


def test_grouped_query_attention_has_fewer_key_value_weights_and_cache():
    model = small(n_kv_head=1)
    assert model.layers[0].attention.wqkv.weight.shape == ((4 + 2) * 16, 64)
    model.setup_cache(2)
    assert model.layers[0].attention.kv_cache.k_cache.shape == (2, 1, 17, 16)
    assert "layers.0.attention.kv_cache.k_cache" not in model.state_dict()
    model.clear_cache()


def test_a_masked_caption_equals_the_caption_without_its_padding_for_image_tokens():
    """Image tokens never see padded prefix positions: changing the padding changes nothing after it."""
    model = small(model_type="t2i", cls_token_num=6)
    cond, mask = condition(model)
    tokens = torch.randint(0, 97, (3, 10))
    noisy = cond.clone()
    noisy[1, :3] = torch.randn(3, 24) * 10  # rewrite row 1's padded positions
    torch.testing.assert_close(model(tokens, noisy, mask), model(tokens, cond, mask), atol=1e-5, rtol=0)
    assert not torch.allclose(model(tokens, noisy), model(tokens, cond), atol=1e-3)  # unmasked, it matters


def test_prefix_mask_hides_padding_from_everyone_but_itself():
    mask = attention_mask(torch.tensor([[False, True, True, True, True]]), torch.arange(5))[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [0, 1, 0, 0, 0],
            [0, 1, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_rope_is_two_dimensional_and_leaves_the_prefix_at_zero():
    config = GPTConfig.from_dict({**SMALL, "cls_token_num": 2})
    table = rope_table_2d(config)  # (2 + 16, head_dim/2 = 8, 2)
    assert table.shape == (18, 8, 2)
    assert (table[:2] == 0).all()
    grid = table[2:].reshape(4, 4, 8, 2)
    # The first half of the pairs turns with the row, the second half with the column.
    assert torch.equal(grid[1, 0, :4], grid[1, 3, :4]) and not torch.equal(grid[0, 0, :4], grid[1, 0, :4])
    assert torch.equal(grid[0, 2, 4:], grid[3, 2, 4:]) and not torch.equal(grid[0, 0, 4:], grid[0, 1, 4:])
    assert torch.allclose(grid[..., 0] ** 2 + grid[..., 1] ** 2, torch.ones(4, 4, 8))


def test_condition_dropout_in_training_only():
    model = small(class_dropout_prob=0.5)
    labels = torch.zeros(4000, dtype=torch.long)
    model.train()
    torch.manual_seed(0)
    dropped = (model.cls_embedding(labels) == model.cls_embedding.embedding_table.weight[5]).all(-1).float().mean()
    assert 0.45 < dropped < 0.55
    model.eval()
    assert not (model.cls_embedding(labels) == model.cls_embedding.embedding_table.weight[5]).all(-1).any()


def test_caption_dropout_uses_the_fixed_unconditional_caption():
    model = small(model_type="t2i", cls_token_num=3, class_dropout_prob=0.999).train()
    features = torch.randn(8, 3, 24)
    expected = model.cls_embedding.cap_proj(model.cls_embedding.uncond_embedding).expand(8, 3, 64)
    torch.testing.assert_close(model.cls_embedding(features), expected)


def test_training_forward_has_gradients_everywhere():
    model = small(n_kv_head=2, drop_path_rate=0.1).train()
    tokens = torch.randint(0, 97, (2, 16))
    logits = model(tokens[:, :-1], torch.tensor([0, 3]))
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"block_size": 15}, "not a square"),
        ({"dim": 66}, "not divisible by n_head"),
        ({"n_kv_head": 3}, "not a multiple of n_kv_head"),
        ({"model_type": "x2i"}, "model_type"),
        ({"dim": 24, "n_head": 4}, "multiple of 4"),
        ({"token_dropout_p": 1.0}, "token_dropout_p"),
    ],
)
def test_configs_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig.from_dict({**SMALL, **overrides})


@pytest.mark.parametrize(
    ("model_type", "cond", "message"),
    [
        ("c2i", torch.tensor([0, 6]), r"class ids must be in \[0, 5\]"),
        ("c2i", torch.tensor([-1, 0]), r"class ids must be in \[0, 5\]"),
        ("c2i", torch.zeros(2, 3), r"\(B,\) integer tensor"),
        ("t2i", torch.zeros(2, 4, 24), r"\(B, 3, 24\)"),
        ("t2i", torch.zeros(2, 3, 25), r"\(B, 3, 24\)"),
    ],
)
def test_a_condition_of_the_wrong_kind_is_refused(model_type, cond, message):
    model = small(model_type=model_type, cls_token_num=1 if model_type == "c2i" else 3)
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(2, 4, dtype=torch.long), cond)


def test_too_many_tokens_are_refused():
    with pytest.raises(ValueError, match="t <= 16"):
        small()(torch.zeros(1, 17, dtype=torch.long), torch.tensor([0]))


def test_bf16_keeps_rope_in_float32_and_cached_decoding_consistent():
    model = small(n_kv_head=2).to(torch.bfloat16)
    assert model.freqs_cis.dtype == torch.float32
    assert model.tok_embeddings.weight.dtype == torch.bfloat16
    cond, _ = condition(model, batch=2)
    tokens = torch.randint(0, 97, (2, 15), generator=torch.Generator().manual_seed(2))
    full = model(tokens, cond)
    assert full.dtype == torch.float32
    torch.testing.assert_close(cached_logits(model, tokens, cond, None), full, atol=0.1, rtol=0.05)


def test_attention_weights_are_what_the_layer_computes():
    """The explicit probabilities reproduce the fused kernel's output (so studies of them study the model)."""

    for model_type in ("c2i", "t2i"):
        model = small(model_type=model_type, cls_token_num=4, n_kv_head=2)
        cond, mask = condition(model)
        tokens = torch.randint(0, model.config.vocab_size, (3, 8))
        inputs = []
        hook = model.layers[1].attention.register_forward_pre_hook(lambda m, args, seen=inputs: seen.append(args[:3]))
        model(tokens, cond, mask)
        hook.remove()
        x, rope, attn_mask = inputs[0]
        attention = model.layers[1].attention
        weights = attention.attention_weights(x, rope, attn_mask)
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
        _, _, v = attention.project(x, rope)
        v = v.repeat_interleave(attention.n_head // attention.n_kv_head, dim=1)
        mixed = (weights @ v).transpose(1, 2).reshape(3, x.shape[1], -1)
        torch.testing.assert_close(attention.wo(mixed), attention(x, rope, attn_mask), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
def test_prefix_attention_is_the_closed_form_where_attention_is_uniform(model_type):
    """With layer 1's wqkv zeroed, its queries and keys are 0 and attention is uniform over what a query sees: the
    query predicting image token j sees the v visible prefix positions (padding hidden) and j image tokens, so its
    share is exactly v / (v + j). Layer 0 keeps its weights, so its shares differ. Checked by hand once: a version
    that ignores the caption mask (v = 4 for the padded caption) and one that returns layer 0 for every layer
    each fail here."""
    from llamagen.analysis.attention import prefix_attention

    model = small(model_type=model_type, cls_token_num=1 if model_type == "c2i" else 4)
    with torch.no_grad():
        model.layers[1].attention.wqkv.weight.zero_()
    cond, mask = condition(model)
    tokens = torch.randint(0, model.config.vocab_size, (3, model.config.block_size))
    shares = prefix_attention(model, tokens, cond, mask)
    assert shares.shape == (2, 3, model.config.block_size)
    visible = torch.ones(3) if mask is None else mask.sum(1)  # (3,): 4, 2 and 4 caption tokens, or the class
    j = torch.arange(model.config.block_size)
    expected = visible[:, None] / (visible[:, None] + j)
    torch.testing.assert_close(shares[1], expected)
    assert (shares[0, :, 1:] - expected[:, 1:]).abs().max() > 1e-3  # layer 0's own attention is not uniform
    torch.testing.assert_close(shares[0, :, 0], torch.ones(3))  # the last prefix position sees only the prefix
