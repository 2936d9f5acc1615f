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


@dataclass
class HistogramTest:
    """A two-sample test of token histograms: the p-value of all positions together, and each position's own."""

    p_value: float
    position_p_values: torch.Tensor  # (L,)
    permutations: int


def token_histograms_differ(
    a: torch.Tensor,
    b: torch.Tensor,
    groups: tuple[torch.Tensor, torch.Tensor] | None = None,
    permutations: int = 999,
    least_expected: float = 5.0,
    seed: int = 1_000_003,
) -> HistogramTest:
    """Whether two samples of L-token sequences, (n_a, L) and (n_b, L) token ids, draw their tokens from one
    distribution at each position, by a permutation test.

    At each position Pearson's chi-squared statistic compares the two samples' token counts, tokens too rare
    for it (fewer than `least_expected` expected in the smaller sample) pooled into one bin; the test's
    statistic is the sum over positions, so that a small change at many positions adds up. Its p-value is
    read from `permutations` random reassignments of whole sequences to the two samples, which keeps the
    dependence between a sequence's positions that a chi-squared table of every token would ignore. Each
    position's p-value is read from the same reassignments. `groups`: (n_a,) and (n_b,) ids of the condition
    each sequence was drawn for (its class): sequences are then reassigned within their group only, so that
    the samples' mix of conditions, which moves the tokens far more than what is tested, stays as it is.
    `seed` seeds the reassignments; it is not 0, which the samples themselves are often drawn with: a stream
    of uniforms that both drew and reassigned the samples would sort them by token."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (n, L) samples of one length, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[0], b.shape[0]) < 2 or permutations < 1:
        raise ValueError(f"need two sequences a sample and one permutation at least, got {a.shape[0]}, "
                         f"{b.shape[0]} and {permutations}")  # fmt: skip
    both = torch.cat([a, b]).long()
    n, length = both.shape
    group = torch.zeros(n, dtype=torch.long) if groups is None else torch.cat(groups).long()
    if group.shape != (n,):
        raise ValueError(f"groups must hold one id per sequence, ({a.shape[0]},) and ({b.shape[0]},)")
    group = torch.unique(group, return_inverse=True)[1]
    group_sizes = torch.bincount(group)
    group_start = group_sizes.cumsum(0) - group_sizes
    in_a_per_group = torch.bincount(group[: a.shape[0]], minlength=len(group_sizes))
    vocab = int(both.max()) + 1
    smaller = min(a.shape[0], b.shape[0]) / n
    # Each position's bins: a token of its own where common enough, else the pooled bin (bin 0); the totals,
    # and so the bins, are the same under every reassignment.
    totals = torch.zeros(length, vocab).scatter_add_(1, both.T, torch.ones(length, n))
    common = totals * smaller >= least_expected
    bin_of = torch.where(common, common.long().cumsum(1), 0)  # (L, vocab)
    bins = int(bin_of.max()) + 1
    flat_bins = (bin_of.gather(1, both.T) + bins * torch.arange(length)[:, None]).T  # (n, L) into L x bins
    bin_totals = torch.bincount(flat_bins.flatten(), minlength=length * bins).view(length, bins).double()
    share_a = a.shape[0] / n

    def statistics(in_a: torch.Tensor) -> torch.Tensor:
        counts_a = torch.bincount(flat_bins[in_a].flatten(), minlength=length * bins).view(length, bins).double()
        counts_b = bin_totals - counts_a
        expected_a, expected_b = bin_totals * share_a, bin_totals * (1 - share_a)
        used = bin_totals > 0
        terms = (counts_a - expected_a) ** 2 / expected_a.clamp_min(1e-12) + (counts_b - expected_b) ** 2 / (
            expected_b.clamp_min(1e-12)
        )
        return (terms * used).sum(1)  # (L,)

    observed = statistics(torch.arange(a.shape[0]))
    generator = torch.Generator().manual_seed(seed)
    at_least = torch.zeros(length)
    total_at_least = 0
    for _ in range(permutations):
        # Sequences sorted by group, in random order within it: each group's first members go to sample a.
        order = torch.argsort(group + torch.rand(n, generator=generator, dtype=torch.float64))
        rank_in_group = torch.arange(n) - group_start[group[order]]
        permuted = statistics(order[rank_in_group < in_a_per_group[group[order]]])
        at_least += permuted >= observed - 1e-9
        total_at_least += int(permuted.sum() >= observed.sum() - 1e-9)
    return HistogramTest(
        (1 + total_at_least) / (1 + permutations), ((1 + at_least) / (1 + permutations)).double(), permutations
    )


def seed_estimate(values) -> tuple[float, float, float, int]:
    """A study table's cell: the mean of a measure over seeds with its 95% t interval (`seed_mean`), as (mean,
    low, high, n), runs without the measure (None or NaN) left out; one run gives its value and no interval
    (NaN bounds), none gives NaN."""
    values = [float(v) for v in values if v is not None and not math.isnan(v)]
    if len(values) < 2:
        return (values[0] if values else math.nan, math.nan, math.nan, len(values))
    estimate = seed_mean(values)
    return (float(estimate.mean), float(estimate.low), float(estimate.high), estimate.n)


def shown_estimate(estimate: tuple[float, float, float, int], digits: int = 1, scale: float = 1.0,
                   share: bool = False) -> str:  # fmt: skip
    """A `seed_estimate` as "mean [low, high]", or "mean (n=1)" without an interval; `share`: the interval of a
    share is cut at 0 and 1, which the share cannot pass."""
    mean, low, high, n = estimate
    if share:
        low, high = max(low, 0.0), min(high, 1.0)
    if n < 2:
        return f"{scale * mean:.{digits}f} (n={n})"
    return f"{scale * mean:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def intervals_apart(a: tuple[float, float, float, int], b: tuple[float, float, float, int]) -> bool:
    """Whether two `seed_estimate`s are told apart: both have intervals and these do not overlap."""
    return a[3] >= 2 and b[3] >= 2 and (a[1] > b[2] or b[1] > a[2])
