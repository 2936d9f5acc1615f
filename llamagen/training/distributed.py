"""One process or many under torchrun: the same training code, with DDP when WORLD_SIZE > 1.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; the process group uses NCCL on GPUs and gloo on the CPU.
The first process (rank 0) alone writes checkpoints, logs and the progress bar.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

TIMEOUT_VARIABLE = "LLAMAGEN_COLLECTIVE_TIMEOUT"
DEFAULT_COLLECTIVE_TIMEOUT = 600


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Called when the processes close, whatever ended the work: what must be let go of (a run folder's lock).
    on_close: list[Callable[[], None]] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def any(self, flag: bool) -> bool:
        """True on every process when any one of them says so (a stop signal seen by one stops all)."""
        if not self.distributed:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the processes (what a log line should report, not rank 0's share)."""
        if not self.distributed:
            return values
        stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(stacked)
        return dict(zip(values, (stacked / self.world).tolist(), strict=True))

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's values of `tensor` on every process (in place; bool tensors travel as bytes)."""
        if not self.distributed:
            return tensor
        carrier = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
        dist.broadcast(carrier, src=0)
        if carrier is not tensor:
            tensor.copy_(carrier.bool())
        return tensor

    def share(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every process."""
        if not self.distributed:
            return value
        carrier = [value]
        dist.broadcast_object_list(carrier, src=0)
        return carrier[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value` (any picklable object), in rank order, on every process."""
        if not self.distributed:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def close(self, cleanly: bool = True) -> None:
        """Let go of what the work held, then of the process group. `cleanly`: every process got here without
        error, so they can wait for each other before the group goes (not after a collective timed out)."""
        for release in self.on_close:
            release()
        self.on_close.clear()
        if self.distributed and dist.is_initialized():
            if cleanly:
                # Every rank reaches here before any tears the group down, so none has collective work in flight.
                dist.barrier()
            dist.destroy_process_group()
            # The group's C++ side (gloo's worker threads) lives on while the finished run's DDP or FSDP
            # structures, which sit in reference cycles, still hold it. Left to interpreter exit, its teardown
            # aborted a process at times ("terminate called without an active exception", in clean-clone runs
            # of the FSDP test): free it here, while Python is whole.
            gc.collect()


@contextlib.contextmanager
def process_group(device: str | torch.device | None = None, alone: bool = False) -> Iterator[Processes]:
    """`start_processes` for the work of a `with` block, closed after it; a collective that timed out comes out
    as a `CollectiveTimeout` with a one-line message."""
    processes = start_processes(device, alone)
    try:
        yield processes
    except Exception as error:
        timed_out = processes.distributed and _is_collective_timeout(error)
        processes.close(cleanly=False)
        if timed_out:
            raise _collective_timeout_error() from None
        raise
    processes.close()


def start_processes(device: str | torch.device | None = None, alone: bool = False) -> Processes:
    """The process group torchrun asked for (initialised here), or a single process; with `alone`, this process
    by itself even under torchrun (on its own GPU), for work shared out whole, as a study's runs.

    Under torchrun, a collective that waits longer than LLAMAGEN_COLLECTIVE_TIMEOUT seconds (default 600) for
    another process fails (`CollectiveTimeout`) instead of blocking for good behind a frozen or dead process, and
    each process stops as SIGTERM would stop it (saving a checkpoint) when the launcher dies (`LAUNCHER_GONE`)."""
    world = 1 if alone else int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if world == 1:
        return Processes(device=device)
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = collective_timeout()
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout))
        _stop_when_the_launcher_dies()
    return Processes(rank=rank, world=world, device=device)


def collective_timeout() -> float:
    """Seconds a collective may wait for the other processes (LLAMAGEN_COLLECTIVE_TIMEOUT; default 600)."""
    text = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_COLLECTIVE_TIMEOUT))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < math.inf:
        raise ValueError(f"{TIMEOUT_VARIABLE} must be a number of seconds above 0, got {text!r}")
    return seconds


class CollectiveTimeout(TimeoutError):
    """A process waited longer than the collective timeout for the others."""


def _is_collective_timeout(error: BaseException) -> bool:
    """Whether `error`, raised out of a collective or DDP's backward, says it timed out waiting for a process."""
    text = str(error)
    return isinstance(error, RuntimeError | dist.DistBackendError) and ("Timed out" in text or "timed out" in text)


def _collective_timeout_error() -> CollectiveTimeout:
    return CollectiveTimeout(
        f"another process did not answer within {collective_timeout():g} s (frozen or dead; "
        f"{TIMEOUT_VARIABLE} sets the wait): this one stops; --resume continues from the last checkpoint"
    )


# Set when torchrun's agent, this process's parent, is gone: the training loop then stops as on SIGTERM, saving
# a checkpoint. A flag, not a signal to this process: the loop may already have stopped on another process's word
# (its watcher saw the launcher go first), and a SIGTERM arriving then, past the loop's handler, would kill this
# process in the middle of writing that checkpoint.
LAUNCHER_GONE = threading.Event()


def _stop_when_the_launcher_dies() -> None:
    """Watch the parent process (torchrun's agent); when it is gone, set `LAUNCHER_GONE`, which makes the
    training loop save and stop, instead of running on unsupervised beside a new launch."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        LAUNCHER_GONE.set()

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
