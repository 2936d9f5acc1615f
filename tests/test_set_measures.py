"""The measures of generated sets on synthetic features with known answers: FID in principal axes and its
jackknife interval, the none reading's threshold, and diversity's interval over conditions."""

import math

import numpy as np
import pytest
import torch

from llamagen.evaluation.set_measures import FrechetSpace, NoneReading, relative_diversity


def gaussian(count: int, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    """64-dimensional features whose variance sits in 8 axes (4 each; 0.01 in the rest), shifted along the first."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.cat([torch.full((8,), 2.0), torch.full((56,), 0.1)])
    features = torch.randn(count, 64, generator=generator, dtype=torch.float64) * scale
    features[:, 0] += shift
    return features


def test_fid_in_the_leading_axes_finds_the_closed_form():
    """Equal covariances and means 3 apart: FID is 3^2 = 9, found in the 8 axes that hold the variance (the
    sample means' difference along the shift has a standard deviation of 0.03, so the estimate's is 0.2); the
    same distribution reads near 0."""
    space = FrechetSpace(gaussian(8000), dimensions=8)
    assert space.distance(gaussian(8000, shift=3.0, seed=1)) == pytest.approx(9.0, abs=0.6)
    assert space.distance(gaussian(8000, seed=2)) < 0.1


def test_the_jackknife_interval_is_as_wide_as_the_spread_across_samples():
    """Across 40 independent generated sets of 200, the FIDs spread as the jackknife's standard error says; the
    interval holds its estimate."""
    space = FrechetSpace(gaussian(8000), dimensions=8)
    intervals = [space.distance_interval(gaussian(200, shift=1.0, seed=seed)) for seed in range(1, 41)]
    values = np.array([interval.value for interval in intervals])
    standard_errors = np.array([(interval.high - interval.low) / (2 * 1.959964) for interval in intervals])
    assert all(interval.low < interval.value < interval.high for interval in intervals)
    assert 0.6 < values.std(ddof=1) / standard_errors.mean() < 1.6


def test_fid_needs_more_images_than_axes():
    space = FrechetSpace(gaussian(500), dimensions=8)
    assert math.isnan(space.distance(gaussian(8)))
    interval = space.distance_interval(gaussian(9))  # a value, but too few to leave groups out
    assert not math.isnan(interval.value) and math.isnan(interval.low)
    with pytest.raises(ValueError, match="8 axes need at least that many real features"):
        FrechetSpace(gaussian(5), dimensions=8)


def test_the_none_threshold_leaves_one_real_image_in_a_hundred_below_it():
    real = {"shape": torch.linspace(0.001, 1.0, 1000), "colour": torch.linspace(0.5, 1.0, 1000)}
    reading = NoneReading(real)
    assert reading.thresholds["shape"] == pytest.approx(0.011, abs=0.001)
    assert reading.read_as_none(real, ["shape"]).float().mean() == pytest.approx(0.01, abs=0.002)
    confidence = {"shape": torch.tensor([0.005, 0.9, 0.9]), "colour": torch.tensor([0.9, 0.9, 0.4])}
    assert reading.read_as_none(confidence, ["shape"]).tolist() == [True, False, False]
    assert reading.read_as_none(confidence, ["shape", "colour"]).tolist() == [True, False, True]


def test_diversity_is_relative_to_real_spread_with_an_interval_over_conditions():
    """Groups whose two members are 1, 2, ..., 10 apart: mean spread 5.5; relative to a real spread of 5.5 it
    is 1, inside an interval that a single group cannot give."""
    features = torch.tensor([[0.0], [0.0]]).repeat(10, 1)
    features[1::2, 0] = torch.arange(1, 11, dtype=torch.float32)
    groups = torch.arange(10).repeat_interleave(2)
    diversity = relative_diversity(features, groups, real_spread=5.5)
    assert diversity.value == pytest.approx(1.0) and diversity.low < 1.0 < diversity.high
    single = relative_diversity(features[:2], groups[:2], real_spread=1.0)
    assert single.value == pytest.approx(1.0) and math.isnan(single.low)
    assert math.isnan(relative_diversity(features[:1], groups[:1], real_spread=1.0).value)


def test_coverage_taken_in_blocks_of_rows_is_coverage_taken_at_once(monkeypatch):
    from llamagen.evaluation import set_measures

    generator = torch.Generator().manual_seed(0)
    points, centres = torch.randn(300, 5, generator=generator), torch.randn(250, 5, generator=generator) + 0.3
    at_once = set_measures.coverage(points, centres)
    monkeypatch.setattr(set_measures, "DISTANCE_ROWS", 64)
    assert torch.equal(set_measures.coverage(points, centres), at_once) and 0.2 < at_once.float().mean() < 1
