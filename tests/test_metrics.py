"""PSNR and SSIM agree with scikit-image and use the data range of the values they are given."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from llamagen.metrics import psnr, ssim


def noisy_pair(seed=0, shape=(40, 50, 3), noise=30):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-noise, noise, shape), 0, 255).astype(np.uint8)
    return a, b


def skimage_ssim(a, b, data_range):
    return structural_similarity(
        a,
        b,
        channel_axis=2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_scikit_image(seed):
    a, b = noisy_pair(seed)
    assert ssim(a, b, 255.0).item() == pytest.approx(skimage_ssim(a, b, 255), abs=1e-9)


def test_psnr_matches_scikit_image():
    a, b = noisy_pair()
    assert psnr(a, b, 255.0).item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)


def test_tensors_and_arrays_give_the_same_numbers():
    a, b = noisy_pair()
    ta = torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).float() / 255
    tb = torch.from_numpy(b).permute(2, 0, 1).unsqueeze(0).float() / 255
    assert ssim(ta, tb, 1.0).item() == pytest.approx(ssim(a, b, 255.0).item(), abs=1e-6)
    assert psnr(ta, tb, 1.0).item() == pytest.approx(psnr(a, b, 255.0).item(), abs=1e-4)


def test_the_original_data_range_of_two_overstates_ssim_on_unit_images():
    """The original evaluates [0, 1] images with data_range=2.0; the constants grow and SSIM looks better."""
    from skimage import data

    photo = torch.from_numpy(data.camera()[100:228, 100:228] / 255.0)[None, None]
    noisy = photo + 0.05 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0), dtype=photo.dtype)
    noisy = noisy.clamp(0, 1)
    right, overstated = ssim(photo, noisy, 1.0).item(), ssim(photo, noisy, 2.0).item()
    assert overstated > right + 0.1


def test_identical_images():
    a, _ = noisy_pair()
    assert ssim(a, a, 255.0).item() == pytest.approx(1.0)
    assert math.isinf(psnr(a, a, 255.0).item())


def test_ssim_is_undefined_below_the_window_and_shapes_must_match():
    a, b = noisy_pair(shape=(8, 30, 3))
    assert math.isnan(ssim(a, b, 255.0).item())
    with pytest.raises(ValueError, match="same"):
        psnr(a, b[:4], 255.0)


def test_code_perplexity_is_the_effective_number_of_codes():
    """exp(entropy): n codes used equally give n, one code gives 1, and any counts give scipy's entropy. Checked by
    hand once: a version taking 2 to the entropy in nats fails here."""
    from scipy.stats import entropy

    from llamagen.metrics import code_perplexity

    assert code_perplexity(torch.tensor([0, 5, 5, 5, 5, 0])) == pytest.approx(4.0)
    assert code_perplexity(torch.tensor([0, 0, 17, 0])) == pytest.approx(1.0)
    counts = torch.randint(0, 50, (300,), generator=torch.Generator().manual_seed(0))
    assert code_perplexity(counts) == pytest.approx(math.exp(entropy(counts.numpy())), rel=1e-12)


def test_uniform_usage_is_what_even_draws_touch():
    """The expected share against a simulation: 65,536 uniform draws over 32,768 and 16,384 codes touch 86.5% and
    98.2% (the paper's Table 2 reads 85% and 97% in such a window); one draw touches one code."""
    from llamagen.metrics import uniform_usage

    generator = torch.Generator().manual_seed(0)
    for size in (32768, 16384, 1000):
        touched = [torch.randint(0, size, (65536,), generator=generator).unique().numel() / size for _ in range(5)]
        assert uniform_usage(size, 65536) == pytest.approx(float(np.mean(touched)), abs=2e-3)
    assert uniform_usage(32768, 65536) == pytest.approx(0.865, abs=5e-4)
    assert uniform_usage(16384, 65536) == pytest.approx(0.982, abs=5e-4)
    assert uniform_usage(100, 1) == pytest.approx(0.01) and uniform_usage(100, 0) == 0.0 and uniform_usage(1, 3) == 1.0
    with pytest.raises(ValueError, match="at least one entry"):
        uniform_usage(0, 10)
