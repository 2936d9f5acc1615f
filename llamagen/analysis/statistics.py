"""Means with bootstrap confidence intervals: every number a study reports stands beside its n and its interval."""

from __future__ import annotations

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


def by_grid_row(per_position: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, grid*grid) values per image position in raster order -> (B, grid) means per row of the token grid."""
    return per_position.reshape(per_position.shape[0], grid, grid).mean(-1)
