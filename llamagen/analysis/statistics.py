"""Means and proportions with confidence intervals: every number a study reports stands beside its n and its
interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Estimate:
    """The mean over `n` samples, with the bounds of its `level` bootstrap interval (each of the same shape)."""

    mean: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    n: int
    level: float

    def __str__(self) -> str:
        if self.mean.numel() != 1:
            return f"means of {self.n} samples ({self.level:.0%} intervals), shape {tuple(self.mean.shape)}"
        return f"{self.mean.item():.4g} [{self.low.item():.4g}, {self.high.item():.4g}] (n={self.n}, {self.level:.0%})"


def bootstrap_mean(samples: torch.Tensor, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """The mean over the first dimension of `samples` (n, ...) and its percentile bootstrap interval: the
    samples drawn with replacement `resamples` times, the interval the middle `level` of those means."""
    n = samples.shape[0]
    if n < 2:
        raise ValueError(f"an interval needs at least 2 samples, got {n}")
    samples = samples.double()
    picks = torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    means = samples[picks].mean(1)  # (resamples, ...)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0)
    return Estimate(samples.mean(0), low, high, n, level)


def proportion(successes: int, n: int, level: float = 0.95) -> Estimate:
    """A share of `successes` among `n` trials (a judge's accuracy) with its Wilson score interval, which stays
    inside [0, 1] and is not empty at 0 or n successes, where a bootstrap of 0/1 samples collapses to a point."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z = _normal_quantile(1 - (1 - level) / 2)
    share = successes / n
    centre = (share + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(share * (1 - share) / n + z**2 / (4 * n**2))
    # At 0 or n successes one bound is exactly 0 or 1 (rounding would leave it a hair inside).
    low = 0.0 if successes == 0 else centre - half
    high = 1.0 if successes == n else centre + half
    return Estimate(*(torch.tensor(value, dtype=torch.float64) for value in (share, low, high)), n, level)


def seed_mean(values, level: float = 0.95) -> Estimate:
    """The mean of one measure over runs that differ only in their seed, with Student's t interval: with a few
    seeds a bootstrap has too few distinct resamples (3 seeds: 10) to give an interval."""
    from scipy.stats import t  # scipy comes with scikit-learn and scikit-image

    values = torch.as_tensor(values, dtype=torch.float64)
    n = values.numel()
    if n < 2:
        raise ValueError(f"an interval over seeds needs at least 2 runs, got {n}")
    half = float(t.ppf(1 - (1 - level) / 2, n - 1)) * values.std() / math.sqrt(n)
    mean = values.mean()
    return Estimate(mean, mean - half, mean + half, n, level)


def _normal_quantile(p: float) -> float:
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p, dtype=torch.float64)))


def by_grid_row(per_position: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, grid*grid) values per image position in raster order -> (B, grid) means per row of the token grid."""
    return per_position.reshape(per_position.shape[0], grid, grid).mean(-1)
