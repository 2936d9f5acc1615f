"""Reconstruction quality: PSNR and SSIM, each with the data range of the values it is given.

The original's evaluation computes SSIM on images in [0, 1] with `data_range=2.0`, which makes the
stabilising constants four times too large and overstates SSIM; here the range is always that of
the values (255 for uint8 pixels, 1.0 for [0, 1], 2.0 for [-1, 1]).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def _as_batch(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B,C,H,W) or (C,H,W) tensors, or (H,W,C) / (B,H,W,C) arrays (uint8 pixels) -> (B,C,H,W) float64."""
    if isinstance(images, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(images)).double()
        return tensor.permute(2, 0, 1).unsqueeze(0) if tensor.dim() == 3 else tensor.permute(0, 3, 1, 2)
    tensor = images.detach().double().cpu()
    return tensor.unsqueeze(0) if tensor.dim() == 3 else tensor


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"images must have the same (B, C, H, W) shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def psnr(reference, test, data_range: float) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, (B,); +inf where the images are identical."""
    a, b = _as_batch(reference), _as_batch(test)
    _check_pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_kernel() -> torch.Tensor:
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    kernel = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return kernel / kernel.sum()


def ssim(reference, test, data_range: float) -> torch.Tensor:
    """Mean structural similarity per image, (B,), averaged over channels.

    Gaussian-weighted, over the positions where the whole window lies inside the image (what
    skimage's `structural_similarity(gaussian_weights=True, use_sample_covariance=False)` reports).
    NaN for images smaller than the 11-pixel window, where SSIM is undefined.
    """
    a, b = _as_batch(reference), _as_batch(test)
    _check_pair(a, b)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        return torch.full((a.shape[0],), math.nan, dtype=torch.float64)
    channels, kernel = a.shape[1], _gaussian_kernel()
    # The 2-D Gaussian is the outer product of two 1-D ones: blurring columns, then rows, costs 22 products a
    # pixel instead of 121 (a depthwise float64 convolution has no fast CPU kernel).
    down = kernel.view(1, 1, SSIM_WINDOW, 1).expand(channels, 1, SSIM_WINDOW, 1)
    across = kernel.view(1, 1, 1, SSIM_WINDOW).expand(channels, 1, 1, SSIM_WINDOW)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, down, groups=channels), across, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(1)


def code_perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of code frequencies (counts per code): the effective number of codes in use, which is
    below the number of codes used when a few codes take most tokens."""
    frequencies = counts[counts > 0].double() / counts.sum()
    return math.exp(-(frequencies * frequencies.log()).sum().item())


def uniform_usage(codebook_size: int, draws: int) -> float:
    """The share of a codebook that `draws` codes, drawn uniformly and independently, are expected to touch:
    1 - (1 - 1/K)^draws. A usage measured over a window of draws cannot be expected above this even for a
    codebook used perfectly evenly; with the original's window of 65,536 codes it is 98.2% at 16,384 entries
    and 86.5% at 32,768."""
    if codebook_size < 1 or draws < 0:
        raise ValueError(f"need a codebook of at least one entry and draws >= 0, not {codebook_size} and {draws}")
    return -math.expm1(draws * math.log1p(-1.0 / codebook_size)) if codebook_size > 1 else float(draws > 0)
