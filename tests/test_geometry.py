"""The geometry measures on point sets whose dimension is known, and the projection test's fixed points."""

import numpy as np
import pytest
import torch
from helpers import small_tokenizer

from llamagen.analysis.codebook import code_counts
from llamagen.analysis.geometry import (
    assignments_kept,
    encoder_latents,
    near_twin_share,
    participation_ratio,
    pca_spectrum,
    principal_axes,
    projection_test,
    two_nn_dimension,
    two_nn_spread,
)
from llamagen.data.samples import sample_image
from llamagen.tokenizer.reconstruction import reconstruct, tokenize_image


def embedded(points: torch.Tensor, dimensions: int, seed: int = 0) -> torch.Tensor:
    """Points placed in `dimensions` dimensions by a random rotation: the same set, seen from elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(dimensions, dimensions, generator=generator, dtype=torch.float64))
    return points.double() @ rotation[: points.shape[1]]


def sphere(n: int, ambient: int, seed: int = 0) -> torch.Tensor:
    """n points drawn uniformly on the unit sphere of R^ambient: a manifold of ambient - 1 dimensions."""
    points = torch.randn(n, ambient, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return points / points.norm(dim=1, keepdim=True)


def test_the_3_sphere_in_64_dimensions_fills_4_axes_and_has_dimension_3():
    points = embedded(sphere(4000, 4), 64)
    spectrum = pca_spectrum(points)
    assert spectrum[:4].sum() == pytest.approx(1.0, abs=1e-9) and spectrum[:4].min() > 0.2
    assert participation_ratio(spectrum) == pytest.approx(4.0, abs=0.1)
    assert two_nn_dimension(points) == pytest.approx(3.0, abs=0.25)
    low, high = two_nn_spread(points, halves=10)
    assert low < two_nn_dimension(points) < high and high - low < 0.6
    assert two_nn_spread(points[:400], halves=10)[1] - two_nn_spread(points[:400], halves=10)[0] > high - low


@pytest.mark.parametrize("dimension", [2, 5, 8])
def test_a_flat_gaussian_cloud_reads_its_own_dimension_both_ways(dimension):
    generator = torch.Generator().manual_seed(dimension)
    points = embedded(torch.randn(4000, dimension, generator=generator, dtype=torch.float64), 32)
    assert participation_ratio(pca_spectrum(points)) == pytest.approx(dimension, rel=0.1)
    assert two_nn_dimension(points) == pytest.approx(dimension, rel=0.12)


def test_near_twins_are_as_rare_as_twonn_expects_on_a_sphere_and_counted_where_points_pair():
    """On the 3-sphere a tenfold second-to-first ratio has probability 10^-3 (TwoNN's Pareto law); give every
    point a twin 1e-4 away and all of them have one, and TwoNN, reading the pairs, falls far below 3."""
    points = embedded(sphere(4000, 4), 16)
    assert near_twin_share(points) < 0.005
    twins = torch.cat([points, points + 1e-4 * embedded(sphere(4000, 4, seed=1), 16)])
    assert near_twin_share(twins) == 1.0 and two_nn_dimension(twins) < 0.5
    # Two thirds of these points have a twin; weighing the twins 0 leaves half of the weight twinned.
    half_twinned = torch.cat([points[:2000], twins[4000:6000], points[2000:]])
    assert near_twin_share(half_twinned) == pytest.approx(4000 / 6000, abs=0.01)
    weights = torch.cat([torch.ones(2000), torch.zeros(2000), torch.ones(2000)])
    assert near_twin_share(half_twinned, weights) == pytest.approx(0.5, abs=0.01)


def test_a_line_has_one_axis_and_weights_count_as_repeats():
    line = torch.linspace(0, 1, 50, dtype=torch.float64)[:, None] * torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    assert participation_ratio(pca_spectrum(line)) == pytest.approx(1.0)
    points = torch.randn(40, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    repeats = torch.randint(1, 5, (40,), generator=torch.Generator().manual_seed(2))
    weighted = principal_axes(points, repeats)
    repeated = principal_axes(points.repeat_interleave(repeats, 0))
    torch.testing.assert_close(weighted.mean, repeated.mean)
    torch.testing.assert_close(weighted.variances, repeated.variances)
    assert two_nn_dimension(points, torch.ones(40)) == two_nn_dimension(points)
    with pytest.raises(ValueError, match="weights must be 40 non-negative numbers"):
        pca_spectrum(points, -torch.ones(40))
    with pytest.raises(ValueError, match="at least 3 distinct points"):
        two_nn_dimension(torch.zeros(10, 3, dtype=torch.float64))
    ring = torch.stack([torch.cos(torch.arange(12) * torch.pi / 6), torch.sin(torch.arange(12) * torch.pi / 6)], 1)
    with pytest.raises(ValueError, match="equally far"):  # every point's two neighbours at the same distance
        two_nn_dimension(ring.double())


def test_latents_are_what_the_quantizer_compares():
    tokenizer = small_tokenizer()
    images = [sample_image("shapes 0").resize((16, 16)), sample_image("coffee").resize((24, 16))]
    latents = encoder_latents(tokenizer, images)
    assert latents.shape == (16 + 24, 8)
    codes = torch.cdist(latents, tokenizer.quantize.codebook()).argmin(1)
    assert torch.equal(codes, torch.cat([tokenize_image(tokenizer, image).flatten() for image in images]))
    assert torch.bincount(codes, minlength=64).tolist() == code_counts(tokenizer, images).tolist()
    drawn = encoder_latents(tokenizer, images, per_image=5)
    assert drawn.shape == (10, 8) and all((latents == row).all(1).any() for row in drawn)


def test_projection_onto_every_axis_changes_nothing_and_onto_none_one_code_is_left():
    tokenizer = small_tokenizer()
    images = [sample_image("coffee").resize((32, 24)), sample_image("shapes 1").resize((16, 16))]
    full, none = projection_test(tokenizer, images, [8, 0])
    assert full.k == 8 and full.codes_kept == 1.0
    plain = np.mean([reconstruct(tokenizer, image).psnr for image in images])
    assert full.psnr == pytest.approx(plain, abs=0.05)
    # Flattened onto no axis, every latent becomes the mean: one code for all positions.
    assert none.codes_kept < 0.5
    with pytest.raises(ValueError, match=r"each k must be in 0\.\.8"):
        projection_test(tokenizer, images, [9])


def test_stored_codes_on_a_3_sphere_in_16_dimensions_keep_their_assignments_from_4_axes_on():
    """Codes and latents that span 4 axes (a 3-sphere placed in 16 dimensions, latents near their codes): their
    assignments survive flattening onto 4 axes or more, not onto fewer; raw codes, flattened without going back to
    the sphere, likewise."""
    codes = embedded(sphere(300, 4, seed=1), 16).float()
    noise = torch.randn(2000, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.02
    latents = embedded(sphere(2000, 4, seed=3) + noise, 16).float()
    latents = latents / latents.norm(dim=1, keepdim=True)
    kept = assignments_kept(codes, latents, [16, 4, 3, 1, 0], on_sphere=True)
    assert kept[0] == kept[1] == 1.0 and kept[2] < 0.9 and kept[3] < kept[2] and kept[4] < 0.01
    assert assignments_kept(codes * 2, latents * 2, [4, 2], on_sphere=False)[0] == 1.0
    # A code stored twice is one code: no latent changes code by picking its twin.
    twice, uses = torch.cat([codes, codes[:50]]), torch.ones(350)
    assert assignments_kept(twice, latents, [16], on_sphere=True, uses=uses) == [1.0]
    with pytest.raises(ValueError, match=r"each k must be in 0\.\.16"):
        assignments_kept(codes, latents, [17], on_sphere=True)


def test_the_projection_explorer_shows_an_image_at_every_axis_count(capsys):
    from llamagen.analysis.geometry import usage_axes
    from llamagen.analysis.widgets import projection_explorer

    tokenizer = small_tokenizer()
    images = {"photo": sample_image("coffee").resize((32, 24)), "shape": sample_image("shapes 1").resize((16, 16))}
    explorer = projection_explorer(tokenizer, images, usage_axes(tokenizer, images.values()))
    image, axes = explorer.children[:2]
    assert list(image.options) == ["photo", "shape"] and (axes.min, axes.max, axes.value) == (0, 8, 4)
    for k in (0, 8):
        axes.value = k  # outside a kernel, what it shows goes to stdout
        text = capsys.readouterr().out
        assert f"with {k} of 8 axes" in text and "size=96x24" in text  # the image, its decode, the flattened one
    assert "100.0% of the positions keep their code" in text
