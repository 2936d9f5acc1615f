"""Pieces every training loop shares: weight EMA, atomic resumable checkpoints, clean stops, JSONL logs."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llamagen.checkpoints import write_atomically, write_text_atomically

LATEST_CHECKPOINT = "latest.pt"


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (the usage window) are copied."""
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param.detach(), 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def warmup_cosine(step: int, total: int, warmup: int, final_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up, then a cosine down to `final_ratio` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def save_training_state(directory: Path, state: dict[str, Any]) -> Path:
    """Write the resumable state atomically: a kill during the write leaves the previous checkpoint whole."""
    path = directory / LATEST_CHECKPOINT
    write_atomically(path, lambda temporary: torch.save(state, temporary))
    return path


def load_training_state(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint written in `directory`, or None when there is none (a fresh start)."""
    path = directory / LATEST_CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


class StopRequest:
    """Turns SIGINT and SIGTERM into a flag the loop checks between steps, so it can save and exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricsLog:
    """Appends one JSON object per line to `metrics.jsonl`."""

    def __init__(self, path: Path):
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far, oldest first."""
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def drop_after(self, step: int) -> None:
        """Forget the records of steps after `step` (atomically), so a resumed run does not repeat them."""
        if not self.path.exists():
            return
        records = self.records()
        kept = [record for record in records if record["step"] <= step]
        if len(kept) < len(records):
            write_text_atomically(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
