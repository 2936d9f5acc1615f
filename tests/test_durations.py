"""The apps' reconstruction estimates: a line of time against pixels, fitted to this server's runs."""

import pytest

from llamagen.apps.durations import REMEMBERED_RUNS, DurationModel, describe_estimate


def test_no_estimate_before_any_run():
    assert DurationModel().estimate(10_000) is None


def test_one_size_seen_scales_in_proportion_to_pixels():
    model = DurationModel()
    model.record(1_000, 0.5)
    model.record(1_000, 0.7)
    assert model.estimate(4_000) == pytest.approx(2.4)


def test_two_sizes_give_the_fixed_cost_and_the_cost_per_pixel():
    model = DurationModel()
    for pixels in (4_096, 65_536, 273_280):  # a sample, a 256-pixel square, the 640x427 photo
        model.record(pixels, 0.2 + 5e-6 * pixels)
    assert model.estimate(1_000_000) == pytest.approx(5.2)
    # Gradio's own estimate, the mean of past durations, would announce a megapixel at a tenth of this.
    assert 0.2 + 5e-6 * (4_096 + 65_536 + 273_280) / 3 < 5.2 / 5


def test_a_line_that_falls_or_starts_below_zero_is_not_trusted():
    model = DurationModel()
    model.record(1_000, 1.0)
    model.record(2_000, 0.5)  # noise: the larger image happened to run faster
    assert model.estimate(3_000) == pytest.approx(1.5)  # at the mean rate: 1.5 s for 3,000 pixels


def test_only_the_latest_runs_count():
    model = DurationModel()
    model.record(1_000, 100.0)  # a run on a machine that was busy, long ago
    for _ in range(REMEMBERED_RUNS):
        model.record(1_000, 1.0)
    assert model.estimate(2_000) == pytest.approx(2.0)


def test_the_page_says_the_size_the_tokenizer_and_the_estimate():
    assert describe_estimate(None, 640, 427, "photo-vq") == (
        "640x427 pixels through photo-vq: the first on this server, so no estimate yet"
    )
    assert describe_estimate(3.14, 640, 427, "photo-vq").startswith("640x427 pixels through photo-vq: about 3.1 s")
    assert "about 42 s" in describe_estimate(42.4, 1000, 1000, "photo-vq")
