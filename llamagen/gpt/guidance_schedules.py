"""Guidance schedules: the classifier-free guidance scale of each image token.

LlamaGen guides every token at one scale (`"constant"`, the published behaviour), or stops guiding after a
number of tokens (`cfg_interval`). Its peers vary the scale over the sequence: VAR's sampler ramps it linearly
over its steps, from no guidance at the first to the full scale at the last (Tian et al. 2024, arXiv
2404.02905), and MAR weighs that linear ramp against a constant scale (Li et al. 2024, arXiv 2406.11838). Here:

- `"constant"`: the scale at every token;
- `"linear"`: from 1 (no guidance) at the first token to the scale at the last, as VAR;
- `"reverse"`: from the scale at the first token to 1 at the last;
- `"first-half"`: the scale on the first half of the tokens and none after, as LlamaGen's `cfg_interval` set
  to half the image (the same step, mean-matched to the ramps);
- a callable `schedule(token_index, token_count) -> scale`, for any other.

A ramp from 1 to s, and s on half the tokens, guide at (1 + s) / 2 on average: `peak_for_mean_scale` gives
the s that matches another schedule's mean, so that schedules are compared at equal mean scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = str | Callable[[int, int], float]
SCHEDULES = ("constant", "linear", "reverse", "first-half")


def guidance_scales(schedule: Schedule, cfg_scale: float, tokens: int) -> list[float]:
    """The scale of each of `tokens` tokens under `schedule`, whose full scale is `cfg_scale` (a callable
    schedule gives its own scales and ignores it)."""
    if callable(schedule):
        scales = [schedule(index, tokens) for index in range(tokens)]
        bad = [(index, scale) for index, scale in enumerate(scales) if not _is_scale(scale)]
        if bad:
            index, scale = bad[0]
            raise ValueError(
                f"the guidance schedule gave {scale!r} for token {index}: a scale is a number >= 0 "
                "(1 is no guidance, 0 is unconditional)"
            )
        return [float(scale) for scale in scales]
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown guidance schedule {schedule!r}: use one of {', '.join(SCHEDULES)} or a callable")
    if schedule == "constant" or tokens == 1:
        return [float(cfg_scale)] * tokens
    if schedule == "first-half":
        return [float(cfg_scale)] * (tokens // 2) + [1.0] * (tokens - tokens // 2)
    rising = [1 + (cfg_scale - 1) * index / (tokens - 1) for index in range(tokens)]
    return rising if schedule == "linear" else rising[::-1]


def peak_for_mean_scale(schedule: str, mean_scale: float) -> float:
    """The full scale at which `schedule` guides at `mean_scale` on average over the tokens."""
    if schedule == "constant":
        return mean_scale
    if schedule in ("linear", "reverse", "first-half"):
        return 2 * mean_scale - 1  # a ramp between 1 and s, or s on half the tokens, averages (1 + s) / 2
    raise ValueError(f"no mean-matched peak for the schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")


def _is_scale(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf
