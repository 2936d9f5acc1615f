"""Intervals (`llamagen.analysis.statistics`) against the answers known for normal samples, proportions and seeds."""

import math

import pytest
import torch

from llamagen.analysis.statistics import (
    bootstrap_mean,
    by_grid_row,
    intervals_apart,
    proportion,
    seed_estimate,
    seed_mean,
    shown_estimate,
    token_histograms_differ,
)


def test_the_interval_of_normal_samples_is_about_the_normal_one():
    """For n draws of N(0, 1) the 95% interval of the mean is +-1.96/sqrt(n) around it."""
    samples = torch.randn(400, generator=torch.Generator().manual_seed(1))
    estimate = bootstrap_mean(samples)
    half = 1.96 * samples.double().std().item() / math.sqrt(len(samples))
    assert estimate.mean.item() == pytest.approx(samples.double().mean().item())
    assert estimate.high.item() - estimate.mean.item() == pytest.approx(half, rel=0.15)
    assert estimate.mean.item() - estimate.low.item() == pytest.approx(half, rel=0.15)
    assert estimate.n == 400 and "n=400" in str(estimate)


def test_intervals_cover_the_true_mean_about_as_often_as_they_say():
    generator = torch.Generator().manual_seed(2)
    covered = 0
    for trial in range(200):
        samples = torch.randn(50, generator=generator) + 3.0
        estimate = bootstrap_mean(samples, resamples=500, seed=trial)
        covered += int(estimate.low.item() <= 3.0 <= estimate.high.item())
    assert 0.88 <= covered / 200 <= 0.99  # 95% nominal; the percentile bootstrap runs a little narrow at n = 50


def test_per_position_values_keep_their_shape_and_rows_average():
    values = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 16)
    estimate = bootstrap_mean(values)
    assert estimate.mean.shape == estimate.low.shape == (16,)
    assert (estimate.low <= estimate.mean).all() and (estimate.mean <= estimate.high).all()
    assert torch.equal(by_grid_row(values, 4)[0], torch.tensor([1.5, 5.5, 9.5, 13.5]))


def test_one_sample_has_no_interval():
    with pytest.raises(ValueError, match="at least 2 samples"):
        bootstrap_mean(torch.ones(1))


def test_a_proportions_interval_is_wilsons_and_stays_open_at_the_ends():
    # Wilson's 95% interval for 5 of 10 is [0.2366, 0.7634]; for 0 of 10, [0, 0.2775] (standard tables).
    half = proportion(5, 10)
    assert (half.mean.item(), round(half.low.item(), 4), round(half.high.item(), 4)) == (0.5, 0.2366, 0.7634)
    none = proportion(0, 10)
    assert none.low.item() == 0 and round(none.high.item(), 4) == 0.2775
    every = proportion(10, 10)
    assert round(every.low.item(), 4) == 0.7225 and every.high.item() == 1
    assert str(proportion(83, 100)).startswith("0.83 [") and "(n=100, 95%)" in str(proportion(83, 100))
    with pytest.raises(ValueError, match="successes <= n"):
        proportion(11, 10)


def test_a_mean_over_seeds_has_students_interval():
    estimate = seed_mean([1.0, 2.0, 3.0])
    # n = 3: mean 2, standard deviation 1, t(2 degrees, 97.5%) = 4.3027: 2 +- 4.3027 / sqrt(3).
    assert (estimate.n, float(estimate.mean)) == (3, 2.0)
    assert float(estimate.low) == pytest.approx(2 - 2.48417, abs=1e-4)
    assert float(estimate.high) == pytest.approx(2 + 2.48417, abs=1e-4)
    assert float(seed_mean([5.0, 5.0]).high) == 5.0  # no spread, no width
    with pytest.raises(ValueError, match="at least 2 runs, got 1"):
        seed_mean([1.0])


def test_a_study_cell_leaves_out_missing_runs_and_says_when_it_has_no_interval():
    mean, low, high, n = seed_estimate([1.0, None, 2.0, math.nan, 3.0])
    assert (mean, n) == (2.0, 3) and low == pytest.approx(2 - 2.48417, abs=1e-4)
    assert shown_estimate((mean, low, high, n), digits=2) == "2.00 [-0.48, 4.48]"
    assert shown_estimate((0.5, -0.1, 1.2, 3), scale=100, share=True) == "50.0 [0.0, 100.0]"
    one = seed_estimate([0.25, None])
    assert one[0] == 0.25 and one[3] == 1 and math.isnan(one[1]) and shown_estimate(one, 2) == "0.25 (n=1)"
    assert math.isnan(seed_estimate([None])[0])
    assert intervals_apart((1.0, 0.9, 1.1, 3), (2.0, 1.8, 2.2, 3))
    assert not intervals_apart((1.0, 0.9, 1.9, 3), (2.0, 1.8, 2.2, 3))  # they overlap
    assert not intervals_apart(one, (2.0, 1.8, 2.2, 3))  # one run has no interval to compare


def test_token_histograms_are_told_apart_only_where_they_differ():
    """Known answers: position 0 drawn from one distribution in both samples, position 1 from distributions
    that put a tenth and a third of the mass on five tokens, position 2 a single token everywhere (nothing to
    test: p = 1). With two groups (classes) whose tokens differ, the samples' mix of them kept by the
    permutations, and a difference within one group seen."""
    generator = torch.Generator().manual_seed(0)
    weights = torch.ones(50)
    shifted = weights.clone()
    shifted[:5] *= 5.0

    def sample(n, first, second):
        columns = [torch.multinomial(first, n, True, generator=generator),
                   torch.multinomial(second, n, True, generator=generator), torch.full((n,), 7)]  # fmt: skip
        return torch.stack(columns, 1)

    same, apart = sample(600, weights, weights), sample(500, weights, shifted)
    test = token_histograms_differ(same, apart)
    p = test.position_p_values
    assert test.p_value < 0.01 and p.shape == (3,) and p[0] > 0.01 and p[1] < 0.01 and p[2] == 1.0
    assert token_histograms_differ(same, sample(500, weights, weights)).p_value > 0.05

    # Group 1's tokens sit elsewhere (ids 50-99); both samples hold both groups, in other proportions.
    def grouped(n_0, n_1, second):
        return torch.cat([sample(n_0, weights, second), sample(n_1, weights, weights) + 50])

    a, groups_a = grouped(300, 300, weights), torch.tensor([0] * 300 + [1] * 300)
    b, groups_b = grouped(200, 300, weights), torch.tensor([0] * 200 + [1] * 300)
    assert token_histograms_differ(a, b, (groups_a, groups_b)).p_value > 0.05
    assert token_histograms_differ(a, grouped(200, 300, shifted), (groups_a, groups_b)).p_value < 0.01
    with pytest.raises(ValueError, match="two \\(n, L\\) samples of one length"):
        token_histograms_differ(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 5, dtype=torch.long))


def test_the_token_histogram_test_holds_its_level_on_dependent_sequences():
    """Two samples of one distribution, 100 times: sequences of 16 tokens from a Markov chain whose start
    depends on one of 10 classes, so that positions depend on each other and on the class. The permutation
    test's p-values are about uniform: near 5% of them below 0.05, about half below 0.5."""
    generator = torch.Generator().manual_seed(123)
    classes, vocab = 10, 60
    starts = torch.softmax(torch.randn(classes, vocab, generator=generator) * 2, -1)
    steps = torch.softmax(torch.randn(vocab, vocab, generator=generator) * 2, -1)
    labels = torch.arange(400) % classes

    def sample():
        tokens = [torch.multinomial(starts[labels], 1, generator=generator)[:, 0]]
        for _ in range(15):
            tokens.append(torch.multinomial(steps[tokens[-1]], 1, generator=generator)[:, 0])
        return torch.stack(tokens, 1)

    p = torch.tensor([token_histograms_differ(sample(), sample(), (labels, labels), permutations=49, seed=i).p_value
                      for i in range(100)])  # fmt: skip
    assert float((p < 0.05).float().mean()) <= 0.1 and 0.3 <= float((p < 0.5).float().mean()) <= 0.7
