"""Kernel distance (KID; Bińkowski et al. 2018, "Demystifying MMD GANs", arXiv 1801.01401) between two feature
sets, without bias, with its standard error.

KID is the squared maximum mean discrepancy under the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 of
d-dimensional features. Its U-statistic (each set's kernel averaged over distinct pairs only) has the true
distance as its mean at any sample size, where FID's estimate is biased upward by an amount that grows as the
samples shrink, and needs more samples than dimensions for its covariances to be invertible. So two
generators scored on a few hundred images each can be told apart by KID, and the standard error says how
far: it is the two-sample jackknife's (each set's delete-one variance, added), computed in closed form from
the kernel matrices' row sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KernelDistance:
    value: float  # the unbiased estimate of the squared MMD; it can fall below 0 when the sets are alike
    standard_error: float

    def __str__(self) -> str:
        return f"{self.value:.4g} (standard error {self.standard_error:.2g})"


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, D) x (N, D) -> (M, N): (a.b / D + 1)^3, in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a @ b.T / a.shape[1] + 1) ** 3


def kernel_distance(a: np.ndarray, b: np.ndarray) -> KernelDistance:
    """KID between two (N, D) feature sets of at least 3 rows each, e.g. a judge's features of generated and of
    real images."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 3:
        raise ValueError(f"need two (N >= 3, D) feature sets of one width, got {a.shape} and {b.shape}")
    within_a, within_b = _within(polynomial_kernel(a, a)), _within(polynomial_kernel(b, b))
    across = polynomial_kernel(a, b)
    m, n = across.shape
    value = within_a.mean + within_b.mean - 2 * across.mean()
    # Each row of a left out in turn: its own pairs leave the within-a mean, its row leaves the across mean.
    without_row_of_a = within_a.without_each + within_b.mean - 2 * (across.sum() - across.sum(1)) / ((m - 1) * n)
    without_row_of_b = within_a.mean + within_b.without_each - 2 * (across.sum() - across.sum(0)) / (m * (n - 1))
    variance = _jackknife_variance(without_row_of_a) + _jackknife_variance(without_row_of_b)
    return KernelDistance(float(value), float(np.sqrt(variance)))


@dataclass(frozen=True)
class _WithinSet:
    mean: float  # the kernel's mean over distinct pairs
    without_each: np.ndarray  # (N,): the same mean with each row left out


def _within(kernel: np.ndarray) -> _WithinSet:
    count = len(kernel)
    off_diagonal = kernel - np.diag(np.diag(kernel))
    total, rows = off_diagonal.sum(), off_diagonal.sum(1)
    return _WithinSet(total / (count * (count - 1)), (total - 2 * rows) / ((count - 1) * (count - 2)))


def _jackknife_variance(leave_one_out: np.ndarray) -> float:
    count = len(leave_one_out)
    return float((count - 1) / count * ((leave_one_out - leave_one_out.mean()) ** 2).sum())
