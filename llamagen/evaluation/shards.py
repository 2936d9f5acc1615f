"""A large set of per-image arrays made by one process or many, in shards that survive a stop.

The set's images are cut into shards of a fixed number; process r of W makes shards r, r + W, ..., writes each
atomically into a folder beside the output (`OUT.shards/`) and skips a shard already there, so a killed run
resumes where it stopped. The folder records what the set is (`ShardPlan.identity`): a run that would mix two
sets in it is refused. Once every shard is there, one process joins them, in order, into the output `.npz`
and removes the folder. `llamagen sample` and `llamagen reconstruct --folder` write their sets this way.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamagen.files import write_atomically


@dataclass(frozen=True)
class ShardPlan:
    """`images` images in shards of `shard_size`; `identity`: what makes the set this set (JSON values)."""

    images: int
    shard_size: int
    identity: dict

    def __post_init__(self):
        if self.images < 1:
            raise ValueError("a set needs at least one image")
        if self.shard_size < 1:
            raise ValueError(f"the shard size must be at least 1, got {self.shard_size}")

    @property
    def shards(self) -> int:
        return -(-self.images // self.shard_size)

    def indices(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.images))

    def recorded(self) -> dict:
        """What the folder records: the identity as JSON reads it back, with the set's size and shard size."""
        return json.loads(json.dumps({**self.identity, "images": self.images, "shard_size": self.shard_size}))


def shard_folder(out: Path) -> Path:
    return out.with_name(out.name + ".shards")


def _shard_path(out: Path, shard: int) -> Path:
    return shard_folder(out) / f"shard_{shard:06d}.npz"


def check_shards(plan: ShardPlan, out: Path) -> None:
    """Refuse a shard folder beside `out` that holds another set (any process may check, before any work)."""
    record = shard_folder(out) / "set.json"
    if not record.is_file():
        return
    found, wanted = json.loads(record.read_text()), plan.recorded()
    if found != wanted:
        changed = sorted(key for key in wanted.keys() | found.keys() if found.get(key) != wanted.get(key))
        raise ValueError(f"{str(record.parent)!r} holds shards of another set ({', '.join(changed)} differ): "
                         "remove it, or write this set elsewhere")  # fmt: skip


def start_shards(plan: ShardPlan, out: Path) -> None:
    """The shard folder beside `out`, made and told what set it holds (one process, after `check_shards`)."""
    record = shard_folder(out) / "set.json"
    if record.is_file():
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(plan.recorded(), indent=1)
    write_atomically(record, lambda temporary: Path(temporary).write_text(text))


def write_shards(plan: ShardPlan, out: Path, make: Callable[[Sequence[int]], dict[str, np.ndarray]], rank: int = 0,
                 world: int = 1, progress: Callable[[int], None] | None = None) -> None:  # fmt: skip
    """This process's shards (`rank` of `world`) into the folder `start_shards` made: `make(indices)` gives the
    arrays of those images (one row each), written atomically; shards already there are kept.
    `progress(images)` after each shard made here."""
    for shard in range(rank, plan.shards, world):
        path = _shard_path(out, shard)
        if path.is_file():
            continue
        indices = plan.indices(shard)
        arrays = {**make(indices), "indices": np.asarray(indices)}
        write_atomically(path, lambda temporary, arrays=arrays: save_npz(temporary, **arrays))
        if progress is not None:
            progress(len(indices))


def written_images(plan: ShardPlan, out: Path, shards: Sequence[int] | range | None = None) -> int:
    """How many of the set's images (of `shards`, all by default) are already in written shards."""
    shards = range(plan.shards) if shards is None else shards
    return sum(len(plan.indices(shard)) for shard in shards if _shard_path(out, shard).is_file())


def make_in_processes(plan: ShardPlan, out: Path, processes, write_mine: Callable) -> bool:
    """Every process's shards, under torchrun or alone (`processes`, `llamagen.training.distributed`): the folder
    checked by each process, made by the first, then `write_mine(rank=, world=, progress=)` on each, with a
    progress bar per process and, under torchrun, one for the whole set on the first. Bars start from the images
    already written, so a resumed run shows what is left. Returns, on every process once all shards are
    written, whether it is the first (which then gathers them)."""
    import tqdm

    check_shards(plan, out)  # every process, before any waits for another
    if processes.is_main:
        start_shards(plan, out)
    processes.gather(None)  # the others wait for the folder
    my_shards = range(processes.rank, plan.shards, processes.world)
    mine = sum(len(plan.indices(shard)) for shard in my_shards)
    done = written_images(plan, out, my_shards)
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm.tqdm(total=mine, initial=done, desc=f"process {processes.rank}",
                                            position=processes.rank, unit="image"))  # fmt: skip
        if processes.distributed and processes.is_main:
            stack.enter_context(_whole_set_bar(plan, out, position=processes.world))
        write_mine(rank=processes.rank, world=processes.world, progress=bar.update)
        processes.gather(None)  # every shard written
    return processes.is_main


@contextlib.contextmanager
def _whole_set_bar(plan: ShardPlan, out: Path, position: int, every: float = 1.0):
    """A bar of the whole set's written images, read from the shard folder every `every` seconds: the shards
    are files in one folder that every process writes to, so counting them needs no message between processes."""
    import tqdm

    stop = threading.Event()
    with tqdm.tqdm(total=plan.images, desc="all processes", position=position, unit="image") as bar:

        def follow() -> None:
            while True:
                stopping = stop.wait(every)
                bar.update(written_images(plan, out) - bar.n)
                if stopping:
                    return

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        try:
            yield bar
        finally:
            stop.set()
            thread.join()


def save_npz(path, **arrays) -> None:
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def gather(plan: ShardPlan, out: Path) -> dict[str, np.ndarray]:
    """Every shard's arrays joined in order (without their indices), after checking that each shard holds the
    images of its place. Refused while a shard is missing; the folder stays until `finish` is called."""
    missing = [shard for shard in range(plan.shards) if not _shard_path(out, shard).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {plan.shards} shards of {str(out)!r} are not written yet "
                                f"(the first: {missing[0]}): run the command again to finish them")  # fmt: skip
    parts: dict[str, list[np.ndarray]] = {}
    for shard in range(plan.shards):
        with np.load(_shard_path(out, shard)) as loaded:
            if not np.array_equal(loaded["indices"], np.asarray(plan.indices(shard))):
                raise ValueError(f"shard {shard} of {str(out)!r} holds other images than its place in the set")
            for name in loaded.files:
                if name != "indices":
                    parts.setdefault(name, []).append(loaded[name])
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def finish(out: Path) -> None:
    """Remove the shard folder of a set whose outputs are written."""
    shutil.rmtree(shard_folder(out))
