"""KID: the unbiased squared MMD under the cubic kernel, checked against its closed form for 1-D Gaussians."""

import numpy as np
import pytest

from llamagen.evaluation.kid import kernel_distance, polynomial_kernel


def kernel_mean(p: tuple[float, float], q: tuple[float, float]) -> float:
    """E[(x y + 1)^3] for independent x ~ N(p), y ~ N(q), 1-D (mean, sd): from the moments of each, since
    (xy + 1)^3 = x^3 y^3 + 3 x^2 y^2 + 3 x y + 1."""
    moments = [(mean, mean**2 + sd**2, mean**3 + 3 * mean * sd**2) for mean, sd in (p, q)]
    (m1, m2, m3), (n1, n2, n3) = moments
    return m3 * n3 + 3 * m2 * n2 + 3 * m1 * n1 + 1


def true_kid(p, q) -> float:
    return kernel_mean(p, p) + kernel_mean(q, q) - 2 * kernel_mean(p, q)


P, Q = (0.0, 1.0), (0.5, 1.2)


def draw(rng, gaussian, n):
    mean, sd = gaussian
    return rng.normal(mean, sd, size=(n, 1))


def biased(a, b) -> float:
    """The V-statistic: each set's kernel averaged over all pairs, a row with itself included."""
    return polynomial_kernel(a, a).mean() + polynomial_kernel(b, b).mean() - 2 * polynomial_kernel(a, b).mean()


def test_large_samples_find_the_closed_form_within_their_standard_error():
    rng = np.random.default_rng(0)
    estimate = kernel_distance(draw(rng, P, 4000), draw(rng, Q, 4000))
    assert abs(estimate.value - true_kid(P, Q)) < 3 * estimate.standard_error
    assert estimate.standard_error < 0.2 * true_kid(P, Q)  # not a margin so wide that anything passes


@pytest.mark.parametrize(("p", "q"), [(P, Q), (P, P)], ids=["different", "same"])
def test_the_estimate_is_unbiased_at_eight_samples_where_the_v_statistic_is_not(p, q):
    rng = np.random.default_rng(1)
    replicates = [(draw(rng, p, 8), draw(rng, q, 8)) for _ in range(4000)]
    ours = np.array([kernel_distance(a, b).value for a, b in replicates])
    theirs = np.array([biased(a, b) for a, b in replicates])
    margin = 3 * ours.std() / np.sqrt(len(ours))
    assert abs(ours.mean() - true_kid(p, q)) < margin
    assert theirs.mean() - true_kid(p, q) > 3 * margin  # the control: counting each row with itself inflates it


def test_the_standard_error_is_the_spread_of_the_estimate_across_samples():
    rng = np.random.default_rng(2)
    estimates = [kernel_distance(draw(rng, P, 60), draw(rng, Q, 60)) for _ in range(400)]
    spread = np.std([e.value for e in estimates])
    assert np.mean([e.standard_error for e in estimates]) == pytest.approx(spread, rel=0.25)


def test_features_of_any_width_and_sets_of_different_sizes():
    rng = np.random.default_rng(3)
    same = kernel_distance(rng.normal(size=(300, 16)), rng.normal(size=(200, 16)))
    shifted = kernel_distance(rng.normal(size=(300, 16)), rng.normal(0.5, 1.0, size=(200, 16)))
    assert abs(same.value) < 3 * same.standard_error
    assert shifted.value > 10 * shifted.standard_error


@pytest.mark.parametrize(
    "shapes", [((2, 4), (5, 4)), ((5, 4), (5, 3)), ((5,), (5,))], ids=["too-few", "widths", "not-a-matrix"]
)
def test_unusable_feature_sets_are_refused(shapes):
    with pytest.raises(ValueError, match=r"need two \(N >= 3, D\) feature sets of one width"):
        kernel_distance(*(np.zeros(shape) for shape in shapes))
