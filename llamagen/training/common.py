"""What every training loop shares: its run folder (`TrainingRun`: lock, resume, checkpoints, logs, clean stops),
the weight EMA and the optimizer. The settings are in `settings.py`."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from llamagen.checkpoints import first_line
from llamagen.files import write_atomically, write_text_atomically
from llamagen.training.distributed import LAUNCHER_GONE, Processes
from llamagen.training.settings import TrainingSettings

LATEST_CHECKPOINT = "latest.pt"
PREVIOUS_CHECKPOINT = "previous.pt"
# Training settings that change what is logged or saved when, not the weights: a resumed run may change them.
_FREE_SETTINGS = ("log_every", "checkpoint_every")


def adamw_decaying_matrices(module: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float):
    """AdamW with weight decay on the parameters of two or more dimensions (matrices, embeddings) only, as
    the original's `configure_optimizers` and open_clip's training do; norms and biases are not decayed."""
    matrices = [p for p in module.parameters() if p.dim() >= 2]
    others = [p for p in module.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


@contextlib.contextmanager
def keeping_hyperparameters(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Within the block the optimizer's state is loaded; its groups' hyper-parameters (weight decay, betas) stay
    those of this run's settings, not the checkpoint's, so that a setting changed on resume takes effect."""
    kept = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    yield
    for group, values in zip(optimizer.param_groups, kept, strict=True):
        group.update(values)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """The checkpoint's moments and step counts, this run's hyper-parameters (`keeping_hyperparameters`)."""
    with keeping_hyperparameters(optimizer):
        optimizer.load_state_dict(state)


@torch.no_grad()
def forget_moments(optimizer: torch.optim.Optimizer, parameter: torch.Tensor, rows: torch.Tensor) -> None:
    """Zero Adam's moments of `parameter`'s `rows` (a boolean mask): entries moved by a restart start afresh
    rather than with the momentum of where they were."""
    moments = optimizer.state.get(parameter, {})
    for name in ("exp_avg", "exp_avg_sq"):
        if name in moments:
            moments[name][rows] = 0


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (the usage window) are copied."""
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param.detach(), 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def save_training_state(directory: Path, state: dict[str, Any]) -> Path:
    """Write the resumable state atomically, keeping the one before as `previous.pt`: a kill during the write
    leaves the last checkpoint whole, and a checkpoint that later proves unreadable has one to fall back on.
    At every moment `latest.pt` is a whole checkpoint (the previous one is hard-linked aside first)."""
    path, previous = directory / LATEST_CHECKPOINT, directory / PREVIOUS_CHECKPOINT
    if path.is_file():
        aside = directory / f".{PREVIOUS_CHECKPOINT}.tmp"
        aside.unlink(missing_ok=True)
        os.link(path, aside)
        os.replace(aside, previous)
    write_atomically(path, lambda temporary: torch.save(state, temporary))
    return path


def load_training_state(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint written in `directory`, or None when there is none (a fresh start)."""
    path = directory / LATEST_CHECKPOINT
    if not path.is_file():
        return None
    return _read_state(path)


def _read_state(path: Path) -> Any:
    """A checkpoint's contents, tensors and plain data only (nothing in it can run code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def has_checkpoint(directory: Path) -> bool:
    """Whether `directory` holds a checkpoint to resume from (readable or not)."""
    return any((directory / name).is_file() for name in (LATEST_CHECKPOINT, PREVIOUS_CHECKPOINT))


def _readable_checkpoint(directory: Path) -> tuple[Path, dict[str, Any], list[str]]:
    """The newest checkpoint of `directory` that loads (latest.pt, else previous.pt), its state, and why newer
    ones did not; a ValueError naming each failure when none does."""
    failures = []
    for name in (LATEST_CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = directory / name
        if not path.is_file():
            failures.append(f"{name} is missing")
            continue
        try:
            state = _read_state(path)
        except Exception as error:  # a truncated or garbage file fails in many ways inside the unpickler
            failures.append(f"{name} is unreadable ({first_line(error)})")
            continue
        if not isinstance(state, dict) or "step" not in state:
            failures.append(f"{name} is not a training checkpoint")
            continue
        return path, state, failures
    raise ValueError(f"nothing to resume in {str(directory)!r}: " + "; ".join(failures))


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


class RefusedByTheFirstProcess(ValueError):
    """The first process's refusal of a run, on the other processes: it reports the error, they need not."""

    reported_elsewhere = True


class TrainingRun:
    """A run's folder, shared by every training loop: the lock that keeps other writers out, the resumed state,
    `config.json` (the settings and command that started it, for its model card; never rewritten),
    `history.jsonl` (each start and resume, with the settings it changed), the log, the progress bar and
    checkpoints. The first process does the folder's work; every process learns whether it may go on.

    A resumed run must use the settings its checkpoint was trained with: those that differ are refused, unless
    named in `changes` (then recorded in the history). `data` describes what the run trains on, compared alike.

    A trainer writes its loop over `run.steps(batches)`, logs when `run.log_due()` and checkpoints when
    `run.checkpoint_due()`, and once more after the loop.
    """

    def __init__(self, out_dir, resume: bool, processes: Processes, model_config: dict, training: TrainingSettings,
                 command, data: dict | None = None, changes: Collection[str] = ()):  # fmt: skip
        self.out_dir, self.processes, self.model_config = Path(out_dir), processes, model_config
        self.training = training
        self.settings = {**dataclasses.asdict(training), "data": data}
        self._lock, self._resumed = None, None
        processes.on_close.append(self.close)
        refusal, checkpoint = None, None
        if processes.is_main:
            try:
                checkpoint = self._open(resume, training, command, changes)
            except (ValueError, OSError) as error:
                refusal = error
        # The other processes wait on this for the first one's verdict instead of hanging in their first collective.
        verdict = processes.share(None if refusal is None else str(refusal))
        if verdict is not None:
            self.close()
            if refusal is not None:
                raise refusal
            raise RefusedByTheFirstProcess(verdict)
        checkpoint = processes.share(checkpoint)
        if processes.is_main or checkpoint is None:
            self.state = self._resumed
        else:
            self.state = _read_state(checkpoint)
        self.start = self.state["step"] if self.state is not None else 0
        self.step = self.start  # steps done
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl")
        if processes.is_main:
            self.metrics.drop_after(self.start)  # lines a killed run wrote after its last checkpoint come again
        self._window_start, self._window_samples, self._skipped = time.perf_counter(), 0, 0
        self._progress: tqdm | None = None

    def _open(self, resume: bool, training, command, changes) -> str | None:
        """Lock the folder, check it holds what `resume` says, write the history; the checkpoint to resume."""
        out = self.out_dir
        if resume and not (out / "config.json").is_file():
            raise ValueError(f"nothing to resume: {str(out)!r} holds no training run (check --out)")
        out.mkdir(parents=True, exist_ok=True)
        self._lock = lock_run_folder(out)
        for partial in out.glob(".*.tmp"):  # what a killed write left; no other process writes here now
            partial.unlink()
        event = {"time": round(time.time(), 3), "command": command}
        if not resume:
            if any((out / name).exists() for name in ("config.json", "metrics.jsonl", LATEST_CHECKPOINT)):
                raise ValueError(
                    f"{str(out)!r} already holds a training run; pass resume=True (--resume) to continue it"
                )
            settings = {"model": self.model_config, "training": dataclasses.asdict(training), "command": command}
            write_text_atomically(out / "config.json", json.dumps(settings, indent=2))
            self._append_history({"event": "start", "step": 0, **event})
            return None
        path, state, failures = _readable_checkpoint(out)
        self._resumed = state
        if state["model_config"] != self.model_config:
            raise ValueError(f"the checkpoint in {str(out)!r} was trained with another model config")
        used = state.get("settings")
        if used is None:  # a checkpoint written before checkpoints kept their settings: config.json has them
            used = {**json.loads((out / "config.json").read_text())["training"], "data": self.settings["data"]}
        # A setting added since the run began is one it trained without: as its default, which keeps the old way.
        defaults = {field.name: field.default for field in dataclasses.fields(training)
                    if field.default is not dataclasses.MISSING}  # fmt: skip
        changed = _changed_settings({**defaults, **used}, self.settings)
        refused = {name: values for name, values in changed.items() if name not in changes}
        if refused:
            differences = [f"{name}: the run used {before!r}, this asks for {now!r}"
                           for name, (before, now) in refused.items()]  # fmt: skip
            raise ValueError(
                f"resuming {str(out)!r} with other settings ({'; '.join(differences)}). Repeat the run's settings, "
                "or change them knowingly with --override NAME[=VALUE]"
            )
        if failures:
            print(f"resuming from {path.name}: " + "; ".join(failures), file=sys.stderr)
            if (out / LATEST_CHECKPOINT).is_file():  # kept for a look, and kept from becoming previous.pt
                os.replace(out / LATEST_CHECKPOINT, out / f"{LATEST_CHECKPOINT}.unreadable")
        changed_values = {name: list(values) for name, values in changed.items()}
        self._append_history(
            {"event": "resume", "step": state["step"], "checkpoint": path.name, "changed": changed_values, **event}
        )
        return str(path)

    def _append_history(self, record: dict[str, Any]) -> None:
        with (self.out_dir / "history.jsonl").open("a") as file:
            file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Let go of the folder's lock (a process that ends lets go of it too)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def start_rng(self) -> None:
        """After the models are built (alike on every process, from the seed), the random stream of this process:
        the interrupted run's, when resuming; otherwise one of its own for each process after the first, so that
        dropout and condition dropout draw independent masks on each."""
        if self.state is not None:
            states = self.state["rng"]
            if isinstance(states, torch.Tensor):  # written before checkpoints kept a stream per process
                states = [{"cpu": states}]
            if len(states) != self.processes.world:
                raise ValueError(
                    f"the checkpoint was trained by {len(states)} process(es), not {self.processes.world}: "
                    "resume it with as many"
                )
            _set_rng_state(states[self.processes.rank], self.processes.device)
        elif self.processes.rank > 0:
            torch.manual_seed((torch.initial_seed() * 1_000_003 + self.processes.rank) % 2**63)

    @property
    def finished(self) -> bool:
        return self.step >= self.training.steps

    def steps(self, batches: Iterable[dict], show_progress: bool = True) -> Iterator[tuple[int, dict]]:
        """(step, batch) for each step from the run's start (steps count from 0), while the batches last. SIGINT,
        SIGTERM and, under torchrun, the launcher's death end the loop between steps, on every process at once;
        `self.step` counts the steps done, the one just yielded included."""
        self._progress = tqdm(total=self.training.steps, initial=self.start, dynamic_ncols=True,
                              disable=not (show_progress and self.processes.is_main))  # fmt: skip
        with StopRequest() as stop:
            for batch in batches:
                if self.processes.any(stop.requested or LAUNCHER_GONE.is_set()):
                    break
                if batch["skipped"]:
                    self._skipped += batch["skipped"]
                    if len(batch) == 1:
                        raise ValueError(f"none of the samples of step {self.step + 1} could be read")
                self.step += 1
                self._window_samples += self.training.batch_size
                self._progress.update()
                yield self.step - 1, batch
        self._progress.close()

    def log_due(self) -> bool:
        return self.step % self.training.log_every == 0

    def log(self, losses: dict[str, float], shown: tuple[str, ...] = ("loss",), **extra: float) -> None:
        """Log the step's losses (their mean over the processes), `extra`, the throughput since the last line and
        the unreadable samples met so far; show `shown` beside the progress bar. Every process calls this."""
        record = {
            "step": self.step,
            **self.processes.mean(losses),
            **extra,
            "images_per_s": self._window_samples / (time.perf_counter() - self._window_start),
        }
        if self._skipped:
            record["unreadable_images"] = self._skipped
        if self.processes.is_main:
            self.metrics.write(record)
        self._progress.set_postfix({key: f"{record[key]:.4g}" for key in (*shown, "images_per_s") if key in record})
        self._window_start, self._window_samples = time.perf_counter(), 0

    def checkpoint_due(self) -> bool:
        return self.step % self.training.checkpoint_every == 0

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Checkpoint `state` at the steps done. Every process calls this: each one's random stream goes into
        the checkpoint, which the first writes."""
        rng = self.processes.gather(_rng_state(self.processes.device))
        if self.processes.is_main:
            extra = {"step": self.step, "rng": rng, "model_config": self.model_config, "settings": self.settings}
            save_training_state(self.out_dir, {**state, **extra})


def lock_run_folder(folder: Path):
    """An exclusive lock on the run folder for as long as the returned file stays open (the system lets go of it
    when the process ends, however it ends); refused at once when another process holds it."""
    handle = try_lock(folder / ".lock")
    if handle is None:
        holder = (folder / ".lock").read_text().strip() or "another process"
        raise ValueError(f"{str(folder)!r} is being written by a training run ({holder}): wait for it to end, "
                         "or train into another --out")  # fmt: skip
    return handle


def try_lock(path: Path):
    """The open file `path`, locked exclusively and naming this process, for as long as it stays open; None at once
    where another process holds it. The system lets go of the lock when the process ends, however it ends, so a
    lock never outlives a killed holder."""
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.truncate(0)
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


def _changed_settings(used: dict[str, Any], asked: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """name -> (what the run used, what is asked now) for the settings that differ, bar the free ones."""
    names = [name for name in {**used, **asked} if name not in _FREE_SETTINGS]
    return {name: (used.get(name), asked.get(name)) for name in names if used.get(name) != asked.get(name)}


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
