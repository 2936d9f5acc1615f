"""The tokenizers' GroupNorm kernel (`torch.ops.llamagen.group_norm`, put in place by `llamagen.fast.tokenizer`):
it computes GroupNorm, and the SiLU after it, as float64 does up to the output's rounding, per image, for any
channel count and a mean far from zero; a tokenizer loaded onto the CPU runs it, and reconstructs as the plain
model does."""

import pytest
import torch
import torch.nn.functional as F

from llamagen.fast import kernels
from llamagen.fast.tokenizer import KernelGroupNorm
from llamagen.tokenizer import VQModel
from llamagen.tokenizer.autoencoder import AttnBlock, Float32GroupNorm
from llamagen.tokenizer.loading import load_tokenizer

ready = kernels.load()
needs_kernel = pytest.mark.skipif(not ready, reason="this CPU lacks AVX-512 BF16: torch's own ops serve")


def exact(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, silu: bool):
    """GroupNorm (and SiLU) in float64, and a bound of float32's rounding: of the statistics, about a millionth of
    the normalised value, and of the norm's x * scale + offset, where a map centred far from its spread loses
    digits (torch's own float32 kernel misses such a map by far more)."""
    values = x.double().reshape(len(x), groups, -1)
    mean, inverse_std = values.mean(2), (values.var(2, unbiased=False) + 1e-6).rsqrt()
    scale = (weight.double().reshape(groups, -1) * inverse_std[..., None]).reshape(len(x), -1, 1, 1)
    offset = bias.double().view(1, -1, 1, 1) - mean.repeat_interleave(x.shape[1] // groups, 1)[..., None, None] * scale
    normalized = x.double() * scale + offset
    bound = 2**-20 * normalized.abs() + 4 * 2**-24 * ((x.double() * scale).abs() + offset.abs()) + 1e-6
    return (F.silu(normalized) if silu else normalized), bound


@needs_kernel
@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# 64 channels over 32 groups (2 a group), 48 over 16 (a last chunk of 16 lanes partly filled), 512 over 32.
@pytest.mark.parametrize("channels, groups, size", [(64, 32, (37, 50)), (48, 16, (9, 7)), (512, 32, (6, 5))])
def test_the_kernel_computes_group_norm_and_silu(silu, dtype, channels, groups, size):
    generator = torch.Generator().manual_seed(channels)
    # Two images of different statistics (each is normalised on its own), one centred far from zero.
    x = torch.randn(2, channels, *size, generator=generator) * torch.tensor([1.0, 0.05]).view(2, 1, 1, 1)
    x = (x + torch.tensor([0.3, 40.0]).view(2, 1, 1, 1)).to(dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(channels, generator=generator), torch.randn(channels, generator=generator)
    got = torch.ops.llamagen.group_norm(x, groups, weight, bias, 1e-6, silu)
    assert got.dtype == dtype and got.shape == x.shape and got.is_contiguous(memory_format=torch.channels_last)
    expected, bound = exact(x, groups, weight, bias, silu)
    error = (got.double() - expected).abs()
    if dtype == torch.float32:
        assert (error <= 1.1 * bound).all()  # SiLU's slope is at most 1.1
    else:  # and rounded once to bf16: within half a step of 2^-7 of the value
        assert (error <= expected.abs() * 2**-8 + 1.1 * bound).all()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernels_statistics_are_the_plain_norms(dtype):
    """Token surgery records each norm's statistics from a full decode: the kernel's, from its own pass over the
    map, equal the plain module's float64 sums (per image, 2 channels a group, a mean far from zero)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 30, 41, generator=generator) * torch.tensor([1.0, 0.05]).view(2, 1, 1, 1)
    x = (x + torch.tensor([0.3, 40.0]).view(2, 1, 1, 1)).to(dtype).contiguous(memory_format=torch.channels_last)
    plain = Float32GroupNorm(32, 64, eps=1e-6, silu=True)
    kernel = Float32GroupNorm(32, 64, eps=1e-6, silu=True)
    kernel.__class__ = KernelGroupNorm
    with torch.no_grad():
        (mean, inverse_std), (plain_mean, plain_inverse_std) = kernel.statistics(x), plain.statistics(x)
    assert mean.shape == inverse_std.shape == (2, 32) and mean.dtype == torch.float32
    torch.testing.assert_close(mean, plain_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(inverse_std, plain_inverse_std, rtol=1e-5, atol=0)
    values = x.double().reshape(2, 32, -1)  # and both are the statistics of x
    torch.testing.assert_close(mean.double(), values.mean(2), rtol=1e-6, atol=0)


@needs_kernel
def test_the_kernel_refuses_maps_it_cannot_read():
    weight, bias = torch.ones(64), torch.zeros(64)
    with pytest.raises(RuntimeError, match="channels-last"):
        torch.ops.llamagen.group_norm(torch.randn(1, 64, 4, 4), 32, weight, bias, 1e-6, True)
    map_ = torch.randn(1, 64, 4, 4).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="groups do not divide"):
        torch.ops.llamagen.group_norm(map_, 24, weight, bias, 1e-6, True)
    with pytest.raises(RuntimeError, match="groups do not divide"):
        torch.ops.llamagen.group_statistics(map_, 24, 1e-6)


@needs_kernel
def test_with_gradients_or_another_layout_the_norm_is_torchs():
    norm = Float32GroupNorm(8, 32, eps=1e-6, silu=True)
    torch.nn.init.normal_(norm.weight)
    kernel_norm = Float32GroupNorm(8, 32, eps=1e-6, silu=True)
    kernel_norm.load_state_dict(norm.state_dict())
    kernel_norm.__class__ = KernelGroupNorm
    x = torch.randn(1, 32, 12, 12, requires_grad=True)
    assert torch.equal(kernel_norm(x), norm(x))  # gradients: torch's ops, which carry them
    with torch.no_grad():
        assert torch.equal(kernel_norm(x), norm(x))  # torch's default layout: torch's ops
        channels_last = x.contiguous(memory_format=torch.channels_last)
        assert not torch.equal(kernel_norm(channels_last), norm(channels_last))  # the kernel: its own rounding
        torch.testing.assert_close(kernel_norm(channels_last), norm(channels_last), rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_a_tokenizer_loaded_onto_the_cpu_runs_the_kernel_and_reconstructs_as_the_plain_model(dtype):
    tokenizer = load_tokenizer("shapes-vq", device="cpu", dtype=dtype)
    norms = [module for module in tokenizer.modules() if isinstance(module, Float32GroupNorm)]
    assert norms and all(type(norm) is KernelGroupNorm for norm in norms)
    attention_layers = sum(isinstance(module, AttnBlock) for module in tokenizer.modules())
    assert sum(not norm.silu for norm in norms) == attention_layers  # every norm but the attention layers' has SiLU
    plain = VQModel(tokenizer.config).to(tokenizer.dtype).eval()
    plain.load_state_dict(tokenizer.state_dict())
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    codes = tokenizer.tokenize(images)
    assert (codes == plain.tokenize(images)).float().mean() > 0.95
    decoded, plain_decoded = tokenizer.detokenize(codes), plain.detokenize(codes)
    mse = (decoded - plain_decoded).pow(2).mean().item()
    assert 10 * torch.log10(torch.tensor(4 / mse)) > (80 if dtype == "float32" else 40)
