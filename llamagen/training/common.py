"""Pieces every training loop shares: weight EMA, atomic resumable checkpoints, clean stops, JSONL logs."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from llamagen.checkpoints import write_atomically, write_text_atomically
from llamagen.training.distributed import Processes

LATEST_CHECKPOINT = "latest.pt"


def check_loop_settings(settings) -> None:
    """Refuse training settings no loop can run: counts below 1, an EMA decay outside [0, 1)."""
    for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(settings, name)}")
    decay = getattr(settings, "ema_decay", 0.0)
    if not 0 <= decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {decay}")


def adamw_decaying_matrices(module: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float):
    """AdamW with weight decay on the parameters of two or more dimensions (matrices, embeddings) only, as
    the original's `configure_optimizers` and open_clip's training do; norms and biases are not decayed."""
    matrices = [p for p in module.parameters() if p.dim() >= 2]
    others = [p for p in module.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


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


class TrainingRun:
    """A run's folder, shared by every training loop: refusing to overwrite another run, the resumed state,
    `config.json` (with the command that started it, for its model card), the log, the progress bar and
    checkpoints. Only the first process writes."""

    def __init__(self, out_dir, resume: bool, processes: Processes, model_config: dict, training, command):
        self.out_dir, self.processes, self.model_config = Path(out_dir), processes, model_config
        if not resume and (self.out_dir / "metrics.jsonl").exists():
            raise ValueError(
                f"{str(self.out_dir)!r} already holds a training run; pass resume=True (--resume) to continue it"
            )
        self.state = load_training_state(self.out_dir) if resume else None
        if self.state is not None and self.state["model_config"] != model_config:
            raise ValueError(f"the checkpoint in {str(self.out_dir)!r} was trained with another model config")
        self.start = self.state["step"] if self.state is not None else 0
        self.log = MetricsLog(self.out_dir / "metrics.jsonl")
        if processes.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            settings = {"model": model_config, "training": dataclasses.asdict(training), "command": command}
            (self.out_dir / "config.json").write_text(json.dumps(settings, indent=2))
            self.log.drop_after(self.start)  # lines a killed run wrote after its last checkpoint come again

    def restore_rng(self) -> None:
        """After the model is built (which draws from the RNG), continue the interrupted run's random stream."""
        if self.state is not None:
            torch.set_rng_state(self.state["rng"])

    def checkpoint(self, step: int, state: dict[str, Any]) -> None:
        if self.processes.is_main:
            extra = {"step": step, "rng": torch.get_rng_state(), "model_config": self.model_config}
            save_training_state(self.out_dir, {**state, **extra})

    def write(self, record: dict[str, Any]) -> None:
        if self.processes.is_main:
            self.log.write(record)

    def progress_bar(self, total: int, show: bool) -> tqdm:
        return tqdm(total=total, initial=self.start, disable=not (show and self.processes.is_main), dynamic_ncols=True)


def run_steps(
    run: TrainingRun,
    batches: Iterable[dict],
    total: int,
    batch_size: int,
    take_step: Callable[[dict, int], dict[str, float]],
    state: Callable[[], dict[str, Any]],
    log_every: int,
    checkpoint_every: int,
    show_progress: bool,
    extra_record: Callable[[], dict[str, float]] = dict,
    shown: tuple[str, ...] = ("loss",),
) -> int:
    """The loop every trainer shares; returns the step reached (short of `total` when a signal stopped it).

    `take_step(batch, step)` updates the models and returns the step's losses; every `log_every` steps their
    mean over the processes goes to the log, with `extra_record()` and the throughput; every
    `checkpoint_every` steps, and at the end, `state()` is checkpointed. SIGINT and SIGTERM stop the loop
    between steps, on every process at once.
    """
    processes = run.processes
    progress = run.progress_bar(total, show_progress)
    window_start, window_samples, skipped = time.perf_counter(), 0, 0
    step = run.start
    with StopRequest() as stop:
        for batch in batches:
            if processes.any(stop.requested):
                break
            if batch["skipped"]:
                skipped += batch["skipped"]
                if len(batch) == 1:
                    raise ValueError(f"none of the samples of step {step + 1} could be read")
            losses = take_step(batch, step)
            window_samples += batch_size
            step += 1
            progress.update()
            if step % log_every == 0:
                losses = processes.mean(losses)
                record = {
                    "step": step,
                    **losses,
                    **extra_record(),
                    "images_per_s": window_samples / (time.perf_counter() - window_start),
                }
                if skipped:
                    record["unreadable_images"] = skipped
                run.write(record)
                progress.set_postfix({key: f"{record[key]:.4g}" for key in (*shown, "images_per_s") if key in record})
                window_start, window_samples = time.perf_counter(), 0
            if step % checkpoint_every == 0:
                run.checkpoint(step, state())
    progress.close()
    run.checkpoint(step, state())
    return step
