"""The CPU kernel for a decoding step's products (`llamagen.kernels`): it builds where the CPU can run it, it
computes x @ W^T as a float64 product does, and decoding through it generates what torch's product does."""

import pytest
import torch
from helpers import condition, small

from llamagen import generate, kernels

ready = kernels.load_small_batch_linear()
needs_kernel = pytest.mark.skipif(not ready, reason="this CPU lacks AVX-512 BF16: torch's own products serve")


def test_the_kernel_builds_wherever_the_cpu_can_run_it():
    assert ready == kernels.cpu_has_instructions()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("out_features, in_features", [(160, 768), (33, 96), (7, 32)])  # 96, 32: a chunk left
def test_the_kernel_computes_the_product(dtype, rows, out_features, in_features):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1, in_features, generator=generator).to(dtype)
    weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
    exact = x.double() @ weight.double().T
    got = torch.ops.llamagen.small_batch_linear(x, weight)
    assert got.shape == (rows, 1, out_features) and got.dtype == dtype
    # float32: summation order only; bf16: the result is rounded to bf16 (8 bits of mantissa), as torch's is.
    tolerance = 1e-5 if dtype == torch.float32 else 2**-8
    assert ((got.double() - exact).abs() / exact.abs().max()).max() < tolerance


@needs_kernel
def test_only_a_few_rows_without_gradients_go_to_the_kernel():
    weight = torch.randn(64, 32)
    assert kernels.use_small_batch_linear(torch.randn(2, 1, 32), weight)
    assert not kernels.use_small_batch_linear(torch.randn(5, 1, 32), weight)  # a training or prefill batch
    assert not kernels.use_small_batch_linear(torch.randn(2, 1, 32, requires_grad=True), weight)
    assert not kernels.use_small_batch_linear(torch.randn(2, 1, 24), torch.randn(64, 24))  # 24: not whole chunks
    assert not kernels.use_small_batch_linear(torch.randn(2, 1, 32, dtype=torch.float64), weight.double())
    with torch.no_grad():
        assert kernels.use_small_batch_linear(torch.randn(2, 1, 32), weight.requires_grad_())


@needs_kernel
@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
def test_decoding_through_the_kernel_generates_what_torchs_product_does(model_type, monkeypatch):
    model = small(model_type=model_type)
    cond, cond_mask = condition(model, batch=2)
    decide, calls = kernels.use_small_batch_linear, []

    def counted(x, weight):
        calls.append(decide(x, weight))
        return calls[-1]

    monkeypatch.setattr(kernels, "use_small_batch_linear", counted)
    through_kernel = generate(model, cond, cond_mask, cfg_scale=2.0, top_k=1)
    assert sum(calls) > 0  # batch 2, doubled by guidance: every decoding product went to the kernel
    monkeypatch.setattr(kernels, "small_batch_linear_ready", False)
    assert torch.equal(through_kernel, generate(model, cond, cond_mask, cfg_scale=2.0, top_k=1))
