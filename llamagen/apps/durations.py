"""How long a tokenizer takes on an image of a given size, from what this server has measured.

Gradio's queue announces the mean duration of a listener's past calls, whatever the input: after a few
64-pixel samples, a 1-megapixel upload (hundreds of times the work) would be announced at a fraction of a
second. Reconstruction time is a fixed cost plus a cost per pixel (the convolutions; attention at the latent
resolution adds a little more on the largest images), so each tokenizer's recent runs are fitted by a line.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

REMEMBERED_RUNS = 32


class DurationModel:
    """Seconds against pixels for one tokenizer on this server, from its last `REMEMBERED_RUNS` runs."""

    def __init__(self) -> None:
        self._runs: deque[tuple[int, float]] = deque(maxlen=REMEMBERED_RUNS)
        self._lock = threading.Lock()  # requests of several pages record and read at once

    def record(self, pixels: int, seconds: float) -> None:
        with self._lock:
            self._runs.append((pixels, seconds))

    def estimate(self, pixels: int) -> float | None:
        """Seconds for an image of `pixels`; None before any run.

        The least-squares line through the runs (time = fixed + per pixel) once two sizes have been seen and
        the line rises from a fixed cost of zero or more; otherwise time in proportion to pixels, at the runs'
        mean rate."""
        with self._lock:
            runs = np.array(self._runs, dtype=np.float64).reshape(-1, 2)
        if len(runs) == 0:
            return None
        sizes, times = runs[:, 0], runs[:, 1]
        if len(np.unique(sizes)) >= 2:
            per_pixel, fixed = np.polyfit(sizes, times, 1)
            if per_pixel > 0 and fixed >= 0:
                return float(fixed + per_pixel * pixels)
        return float(times.sum() / sizes.sum() * pixels)


def describe_estimate(seconds: float | None, width: int, height: int, tokenizer: str) -> str:
    """What the page says while a reconstruction runs."""
    size = f"{width}x{height} pixels through {tokenizer}"
    if seconds is None:
        return f"{size}: the first on this server, so no estimate yet"
    shown = f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"
    return f"{size}: about {shown} s, going by this server's last runs of it"
