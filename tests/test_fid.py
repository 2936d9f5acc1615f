"""Fréchet distance: the closed form on known Gaussians, and the feature spaces it is computed in."""

import numpy as np
import pytest
import torch

from llamagen.evaluation.fid import InceptionFeatures, RandomFeatures, frechet_distance, image_features


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal(1.0, 2.0, size=(20000, 3))
    # Isotropic: |mu diff|^2 + sum (s_a - s_b)^2 = 3 + 3 x (1 - 2)^2 = 6
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(a, b[:, :2])


@pytest.mark.parametrize(("images", "dims"), [(500, 20), (30, 64)])
def test_frechet_distance_is_the_reference_codes_matrix_square_root_formula(images, dims):
    """Against scipy's sqrtm, as FID's reference code computes it; with fewer images than dimensions (singular
    covariances) too, where sqrtm's round-off imaginary part is dropped."""
    from scipy import linalg

    rng = np.random.default_rng(images)
    a, b = rng.normal(size=(images, dims)), rng.normal(size=(images, dims)) @ rng.normal(size=(dims, dims)) * 0.3
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(sigma_a @ sigma_b).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sigma_a + sigma_b - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_random_features_are_fixed_and_tell_images_apart():
    torch.manual_seed(5)
    noise = torch.rand(128, 3, 32, 32) * 2 - 1
    smooth = torch.nn.functional.avg_pool2d(noise, 5, 1, 2)
    features = RandomFeatures()
    assert torch.equal(features(noise), RandomFeatures()(noise))
    a, b = image_features(features, noise[:64]), image_features(features, noise[64:])
    assert a.shape == (64, 512)
    same_kind = frechet_distance(a, b)
    other_kind = frechet_distance(a, image_features(features, smooth[64:]))
    assert other_kind > 3 * same_kind


def test_inception_needs_its_weight_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Inception-v3 weight file"):
        InceptionFeatures(tmp_path / "inception.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="the FID port of TensorFlow's Inception-v3 or torchvision's expected"):
        InceptionFeatures(tmp_path / "other.pth")
