"""Measures of a set of generated images in a judge's feature space, each with an interval that says how far a
few hundred images carry it.

- FID in the judge's leading principal axes (`FrechetSpace`): a Fréchet distance needs more images than
  dimensions for its covariances to be invertible, and a few hundred images against the judge's 256 features
  give a number set by the sample size more than by the images. The axes are fit on the real images, and the
  interval is a jackknife's over the generated ones (the real set held fixed).
- Precision and recall (Kynkäänniemi et al., 2019) as per-image indicators: whether each generated image lies
  inside some real image's k-nearest-neighbour ball, and each real image inside some generated one's. Their
  shares get Wilson intervals, the other set's balls held fixed.
- Diversity among images the judge reads as right: the mean distance between two images of one condition,
  counting only images judged to show their condition with a real image's confidence, so images that broke
  under strong guidance (far apart, and read as nothing) do not count as variety. Its interval is a bootstrap
  over the conditions.
- Read as none (`NoneReading`): the share of images on which the judge's confidence in a stated attribute falls
  below what all but 1% of real held-out images get.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llamagen.evaluation.fid import frechet_distance

NEIGHBOURS = 3  # k of the precision/recall balls (the paper's choice)
DISTANCE_ROWS = 1024  # rows of a distance matrix computed at once (1,024 x 50,000 doubles: 400 MB)
FID_DIMENSIONS = 32  # principal axes of the judge's features that FID is measured in
BOOTSTRAP_RESAMPLES = 200
JACKKNIFE_GROUPS = 20
INTERVAL_Z = 1.959964  # the normal quantile of a two-sided 95% interval, for intervals from standard errors
REAL_CONFIDENCE_QUANTILE = 0.01  # "read as none": less sure than all but this share of real images


@dataclass(frozen=True)
class Interval:
    """A measure's value and the bounds of its 95% interval."""

    value: float
    low: float
    high: float

    @classmethod
    def undefined(cls) -> Interval:
        return cls(float("nan"), float("nan"), float("nan"))


def _pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double(), b.double())


def coverage(points: torch.Tensor, centres: torch.Tensor, k: int = NEIGHBOURS) -> torch.Tensor:
    """(N,) booleans: whether each of `points` lies inside the ball of some of `centres` that reaches that
    centre's k-th nearest neighbour among the centres (itself not counted). The distances are taken
    `DISTANCE_ROWS` rows at a time, so that sets of 50,000 fit in memory."""
    radii = torch.cat([_pairwise(centres[i : i + DISTANCE_ROWS], centres).kthvalue(k + 1, dim=1).values
                       for i in range(0, len(centres), DISTANCE_ROWS)])  # fmt: skip
    return torch.cat([(_pairwise(points[i : i + DISTANCE_ROWS], centres) <= radii[None]).any(dim=1)
                      for i in range(0, len(points), DISTANCE_ROWS)])  # fmt: skip


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall of `fake` against `real` features (N, D)."""
    return float(coverage(fake, real, k).double().mean()), float(coverage(real, fake, k).double().mean())


def group_spreads(features: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The mean distance between two features of the same group, for each group of two or more members."""
    spreads = []
    for group in groups.unique():
        members = features[groups == group]
        if len(members) > 1:
            spreads.append(_pairwise(members, members).sum() / (len(members) * (len(members) - 1)))
    return torch.stack(spreads) if spreads else torch.empty(0, dtype=torch.float64)


def within_group_spread(features: torch.Tensor, groups: torch.Tensor) -> float:
    """Mean distance between two features of the same group, averaged over groups of two or more (NaN when no
    group has two members)."""
    spreads = group_spreads(features, groups)
    return float(spreads.mean()) if len(spreads) else float("nan")


def relative_diversity(features: torch.Tensor, groups: torch.Tensor, real_spread: float, seed: int = 0) -> Interval:
    """Within-group spread relative to `real_spread`, with a percentile bootstrap interval over the groups."""
    spreads = group_spreads(features, groups) / real_spread
    if len(spreads) == 0:
        return Interval.undefined()
    if len(spreads) == 1:
        return Interval(float(spreads[0]), float("nan"), float("nan"))
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(spreads), (BOOTSTRAP_RESAMPLES, len(spreads)), generator=generator)
    low, high = torch.quantile(spreads[picks].mean(1), torch.tensor([0.025, 0.975], dtype=torch.float64))
    return Interval(float(spreads.mean()), float(low), float(high))


class FrechetSpace:
    """The leading `dimensions` principal axes of real features: where FID is measured with a few hundred
    images, about ten per dimension."""

    def __init__(self, real: torch.Tensor, dimensions: int = FID_DIMENSIONS):
        if not 1 <= dimensions <= min(real.shape):
            raise ValueError(f"{dimensions} axes need at least that many real features and dimensions, got "
                             f"{tuple(real.shape)}")  # fmt: skip
        real = real.double()
        self.centre = real.mean(0)
        _, _, axes = torch.linalg.svd(real - self.centre, full_matrices=False)
        self.axes = axes[:dimensions].T  # (D, dimensions)
        self.dimensions = dimensions
        self.real = self.project(real)

    def project(self, features: torch.Tensor) -> np.ndarray:
        return ((features.double() - self.centre) @ self.axes).numpy()

    def distance(self, fake: torch.Tensor) -> float:
        """FID of `fake` features against the real ones, in these axes; NaN unless there are more images than
        axes."""
        projected = self.project(fake)
        return frechet_distance(self.real, projected) if len(projected) > self.dimensions else float("nan")

    def distance_interval(self, fake: torch.Tensor, seed: int = 0) -> Interval:
        """The distance, plus or minus 1.96 standard errors of the delete-a-group jackknife over the generated
        images (JACKKNIFE_GROUPS groups, the real set held fixed). Not a bootstrap: a resample drawn with
        replacement repeats images, FID's upward bias grows as the distinct images fall, and a percentile
        interval of real shapes against real ones came out [37, 62] around an estimate of 24. Leaving a group
        out repeats nothing."""
        count = len(fake)
        if count - -(-count // JACKKNIFE_GROUPS) <= self.dimensions:  # each estimate without a group needs them
            return Interval(self.distance(fake), float("nan"), float("nan"))
        projected = self.project(fake)
        groups = np.array_split(np.random.default_rng(seed).permutation(count), JACKKNIFE_GROUPS)
        without = np.array([frechet_distance(self.real, np.delete(projected, group, axis=0)) for group in groups])
        half = INTERVAL_Z * np.sqrt((JACKKNIFE_GROUPS - 1) / JACKKNIFE_GROUPS * ((without - without.mean()) ** 2).sum())
        value = frechet_distance(self.real, projected)
        return Interval(value, value - half, value + half)


class NoneReading:
    """Per attribute, the judge's confidence (its highest softmax probability) that all but
    `REAL_CONFIDENCE_QUANTILE` of real images reach; an image below it on a stated attribute is read as none."""

    def __init__(self, real_confidence: dict[str, torch.Tensor]):
        quantile = torch.tensor(REAL_CONFIDENCE_QUANTILE, dtype=torch.float64)
        self.thresholds = {name: float(torch.quantile(values.double(), quantile))
                           for name, values in real_confidence.items()}  # fmt: skip

    def read_as_none(self, confidence: dict[str, torch.Tensor], attributes) -> torch.Tensor:
        """(N,) booleans: images whose confidence on any of `attributes` falls below its threshold."""
        below = [confidence[name] < self.thresholds[name] for name in attributes]
        return torch.stack(below).any(dim=0)
