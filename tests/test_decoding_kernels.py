"""The CPU kernels of a decoding step (`llamagen.fast.kernels`): they build where the CPU can run them, the product
computes x @ W^T and the attention softmax(q k^T / sqrt(d)) v as float64 does, the whole step in one call
computes what the modules do, and decoding through them generates what the plain model does."""

import pytest
import torch
from helpers import condition, small

from llamagen import generate
from llamagen.fast import compiled, kernels, one_call

ready = kernels.load()
needs_kernel = pytest.mark.skipif(not ready, reason="this CPU lacks AVX-512 BF16: torch's own products serve")


def test_the_kernels_build_wherever_the_cpu_can_run_them():
    assert ready == kernels.cpu_has_instructions()


@needs_kernel
def test_bf16_products_use_the_tiles_wherever_the_cpu_has_them():
    assert torch.ops.llamagen.tiles_ready() == kernels.cpu_has_tiles()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# 5 to 8: fewer sums per row of x; 9 to 16: two weight rows at a time, over two groups of rows of x; bf16 from 4
# (decoding.h's kTilesFromRows) on AMX's tiles where the CPU has them.
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9, 13, 16])
# 96, 32: a chunk left (on the tiles, an odd chunk of 32); 33, 7: a weight row left after the pairs (on the tiles,
# 1 and 7 after the blocks of 16, summed in registers).
@pytest.mark.parametrize("out_features, in_features", [(160, 768), (33, 96), (7, 32)])
def test_the_kernel_computes_the_product(dtype, rows, out_features, in_features):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1, in_features, generator=generator).to(dtype)
    weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
    exact = x.double() @ weight.double().T
    got = torch.ops.llamagen.small_batch_linear(x, weight)
    assert got.shape == (rows, 1, out_features) and got.dtype == dtype
    # float32: summation order only; bf16: the result is rounded to bf16 (8 bits of mantissa), as torch's is.
    tolerance = 1e-5 if dtype == torch.float32 else 2**-8
    assert relative_error(got, exact) < tolerance


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "batch, heads, kv_heads, length, head_dim",
    [(2, 12, 12, 257, 64), (3, 8, 2, 50, 100), (1, 4, 4, 1, 40)],  # grouped-query; 100, 40: partial chunks
)
@pytest.mark.parametrize("masked", [False, True])
def test_the_kernel_computes_single_query_attention(dtype, batch, heads, kv_heads, length, head_dim, masked):
    generator = torch.Generator().manual_seed(length)
    q = torch.randn(batch, heads, 1, head_dim, generator=generator).to(dtype)
    # The keys and values of the first `length` positions of a longer cache, as decoding reads them.
    k_cache, v_cache = torch.randn(2, batch, kv_heads, length + 7, head_dim, generator=generator).to(dtype)
    k, v = k_cache[:, :, :length], v_cache[:, :, :length]
    mask = None
    if masked:  # a caption's padding hides some positions; the query's own is always visible
        mask = torch.rand(batch, 1, 1, length, generator=generator) > 0.3
        mask[..., -1] = True
    group = heads // kv_heads
    scores = q.double().reshape(batch, kv_heads, group, head_dim) @ k.double().transpose(-1, -2) / head_dim**0.5
    if mask is not None:
        scores = scores.masked_fill(~mask.reshape(batch, 1, 1, length), float("-inf"))
    exact = (scores.softmax(-1) @ v.double()).reshape(batch, heads, 1, head_dim)
    got = torch.ops.llamagen.single_query_attention(q, k, v, mask)
    assert got.shape == q.shape and got.dtype == dtype
    tolerance = 1e-6 if dtype == torch.float32 else 2**-8  # bf16: the result is rounded to bf16
    assert relative_error(got, exact) < tolerance


@needs_kernel
@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
def test_decoding_through_the_kernels_generates_what_the_plain_model_does(model_type, monkeypatch):
    model = small(model_type=model_type, cls_token_num=6 if model_type == "t2i" else 1)  # 6: captions padded
    cond, cond_mask = condition(model, batch=2)
    calls = {"one_call": 0, "top_k": 0}
    step, top_k = one_call.OneCallStep.__call__, torch.ops.llamagen.top_k

    def counted(name, function):
        def call(*args):
            calls[name] += 1
            return function(*args)

        return call

    monkeypatch.setattr(one_call.OneCallStep, "__call__", counted("one_call", step))
    monkeypatch.setattr(torch.ops.llamagen, "top_k", counted("top_k", top_k))

    def sampled(decoding):
        generator = torch.Generator().manual_seed(0)
        return generate(model, cond, cond_mask, cfg_scale=2.0, top_k=5, generator=generator, decoding=decoding)

    through_kernels = sampled("fastest")
    # Batch 2, doubled by guidance: every decoding step was one call of the kernel, every top-k the kernel's.
    assert calls == {"one_call": 15, "top_k": 16}
    assert torch.equal(through_kernels, sampled("plain"))


def _decode(model, cond, cond_mask, tokens, one_call_step: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The logits of a prefill and then of each of `tokens`' columns, and the caches they left, with the steps in one
    call of the whole-step kernel or through the model's modules."""
    with torch.no_grad():
        model.setup_cache(tokens.shape[0])
        assert one_call.serves(model, tokens.shape[0])
        step = one_call.OneCallStep(model) if one_call_step else model.decode_step
        logits = [model.prefill(cond, cond_mask)]
        for i in range(tokens.shape[1]):
            logits.append(step(tokens[:, i : i + 1], model.prefix_length + i))
        _, caches = one_call.step_tensors(model)
        return torch.stack(logits, 1), [cache.clone() for cache in caches]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 8, 11, 16, 37])  # 8: one pass of the product; 11, 16, 37: more
@pytest.mark.parametrize("model_type, n_kv_head", [("c2i", None), ("c2i", 2), ("t2i", 2)])
def test_the_one_call_step_computes_what_the_modules_do(model_type, n_kv_head, rows, dtype):
    """Logits and the keys and values it caches, with grouped-query attention and padded captions too. The modules
    round to bf16 at the same places (norms, rotations, SwiGLU, residuals), so bf16 differs only where float32
    sums in another order land on the other side of a rounding."""
    model = small(model_type=model_type, n_kv_head=n_kv_head, cls_token_num=6 if model_type == "t2i" else 1)
    model = model.to(dtype)
    cond, cond_mask = condition(model, batch=max(rows, 2))
    cond, cond_mask = cond[:rows], None if cond_mask is None else cond_mask[:rows]
    tokens = torch.randint(0, model.config.vocab_size, (rows, 12), generator=torch.Generator().manual_seed(rows))
    one_call_logits, one_call_caches = _decode(model, cond, cond_mask, tokens, True)
    by_module, module_caches = _decode(model, cond, cond_mask, tokens, False)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.1, "rtol": 2**-7}
    torch.testing.assert_close(one_call_logits, by_module, **tolerance)
    for got, expected in zip(one_call_caches, module_caches, strict=True):
        torch.testing.assert_close(got, expected, **tolerance)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, window", [(1, 1), (1, 16), (2, 5), (3, 8), (9, 3)])
@pytest.mark.parametrize("model_type, n_kv_head", [("c2i", 2), ("t2i", None)])
def test_the_one_call_window_computes_what_the_modules_do(model_type, n_kv_head, rows, window, dtype):
    """A window of tokens a row (parallel decoding's step): each token attends to the cache up to itself, the
    window's earlier tokens included; a second window from the middle of the first overwrites what the first
    wrote past it, as Jacobi decoding does when it refuses a draft."""
    cls_token_num = 6 if model_type == "t2i" else 1
    model = small(model_type=model_type, n_kv_head=n_kv_head, cls_token_num=cls_token_num, block_size=64)
    model = model.to(dtype)
    cond, cond_mask = condition(model, batch=max(rows, 2))
    cond, cond_mask = cond[:rows], None if cond_mask is None else cond_mask[:rows]
    tokens = torch.randint(0, model.config.vocab_size, (rows, 2 * window), generator=torch.Generator().manual_seed(1))
    middle = window // 2

    def decode(forward):
        model.prefill(cond, cond_mask)
        first = forward(tokens[:, :window], model.prefix_length)
        second = forward(tokens[:, window:], model.prefix_length + middle)  # from the middle of the first
        _, caches = one_call.step_tensors(model)
        return torch.cat([first, second], 1), [cache.clone() for cache in caches]

    with torch.no_grad():
        model.setup_cache(rows)
        assert one_call.serves(model, rows * window)
        by_kernel, kernel_caches = decode(one_call.OneCallStep(model).window)
        by_module, module_caches = decode(model.decode_window)
    assert by_kernel.shape == (rows, 2 * window, model.config.vocab_size)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.1, "rtol": 2**-7}
    torch.testing.assert_close(by_kernel, by_module, **tolerance)
    for got, expected in zip(kernel_caches, module_caches, strict=True):
        torch.testing.assert_close(got, expected, **tolerance)


@needs_kernel
def test_the_one_call_step_serves_only_what_it_computes_like_the_modules(monkeypatch):
    model = small()
    assert not one_call.serves(model, 2)  # no cache yet
    model.setup_cache(one_call.MAX_ROWS + 1)
    with torch.no_grad():
        assert one_call.serves(model, one_call.MAX_ROWS)
        assert one_call.serves(model, one_call.MAX_ROWS + 1)  # a small model's weights stay in the caches
        monkeypatch.setattr(one_call, "CACHED_WEIGHT_BYTES", 0)  # as if they streamed from memory
        assert not one_call.serves(model, one_call.MAX_ROWS + 1)  # torch's products read the weights once
        model.train()  # dropout would apply in the modules
        assert not one_call.serves(model, 2)
        model.eval()
        model.setup_cache(2, dtype=torch.bfloat16)  # a cache of another dtype than the weights
        assert not one_call.serves(model, 2)
    model.setup_cache(2)
    assert not one_call.serves(model, 2)  # gradients wanted: only the modules record them


@needs_kernel
def test_the_one_call_step_refuses_what_it_cannot_read():
    model = small()
    model.setup_cache(2)
    weights, caches = one_call.step_tensors(model)
    tokens = torch.tensor([[1], [2]])

    def step(tokens=tokens, weights=weights, caches=caches, position=3):
        return torch.ops.llamagen.decode_step(tokens, weights, caches, model.freqs_cis, None, position, 4, 1e-5)

    step()
    with pytest.raises(RuntimeError, match="token id 97 is outside the vocabulary"):
        step(tokens=torch.tensor([[1], [97]]))
    with pytest.raises(RuntimeError, match=r"1 to 2 rows \(the cache's batch\), got 3"):
        step(tokens=torch.tensor([[1], [2], [3]]))
    with pytest.raises(RuntimeError, match="position 17 is outside the cache"):
        step(position=17)
    with pytest.raises(RuntimeError, match="7 per layer"):
        step(weights=weights[:-1])
    with pytest.raises(RuntimeError, match=r"w2 must be \[64, 192\]"):
        step(weights=[*weights[:7], weights[7].T.contiguous(), *weights[8:]])
    with pytest.raises(RuntimeError, match="every cache must be"):
        step(caches=[*caches[:-1], caches[-1].bfloat16()])
    with pytest.raises(RuntimeError, match=r"tokens must be \(rows, 1\)"):
        step(tokens=torch.tensor([[1, 2], [3, 4]]))
    window = torch.tensor([[1, 2, 3], [4, 5, 6]])
    arguments = (weights, caches, model.freqs_cis, None)
    assert torch.ops.llamagen.decode_window(window, *arguments, 14, 4, 1e-5).shape == (2, 3, 97)
    with pytest.raises(RuntimeError, match="position 15 and the window after it is outside the cache"):
        torch.ops.llamagen.decode_window(window, *arguments, 15, 4, 1e-5)
    with pytest.raises(RuntimeError, match=r"tokens must be \(rows, window\)"):
        torch.ops.llamagen.decode_window(window[0], *arguments, 3, 4, 1e-5)
    with pytest.raises(RuntimeError, match="rope must be"):
        torch.ops.llamagen.decode_step(tokens, weights, caches, model.freqs_cis[..., :1].contiguous(), None, 3, 4, 1e-5)


@needs_kernel
def test_compile_is_left_to_steps_that_one_call_does_not_serve(monkeypatch):
    def no_compiling(gpt):
        raise AssertionError("compiled a step that the whole-step kernel serves")

    monkeypatch.setattr(compiled, "compiled_decode_step", no_compiling)
    model = small()
    labels = torch.tensor([1, 2])
    assert torch.equal(
        generate(model, labels, cfg_scale=2.0, top_k=1, compile=True), generate(model, labels, top_k=1, cfg_scale=2.0)
    )


@needs_kernel
def test_the_top_k_kernel_refuses_what_it_cannot_do():
    with pytest.raises(RuntimeError, match=r"k must be in \[1, 5\], got 6"):
        torch.ops.llamagen.top_k(torch.randn(2, 5), 6)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.llamagen.top_k(torch.randn(2, 5).double(), 2)


def _record(decisions: list, decision: bool) -> bool:
    decisions.append(decision)
    return decision


def relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    """The largest difference from the float64 result, relative to its largest value."""
    return ((got.double() - exact).abs() / exact.abs().max()).max().item()
