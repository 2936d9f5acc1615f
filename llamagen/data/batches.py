"""Batches by step: which samples a training step sees depends only on (seed, step), never on history.

Sample number g = step x batch + i is mapped to a data set index: for procedural data sets (every index a
fresh random draw) the index is g itself; for finite ones it is epoch x N + permutation_epoch[g mod N],
with a permutation drawn from (seed, epoch), and the data set shows file index mod N with augmentation
drawn from the whole index. So a resumed run continues the exact data order, and under torchrun each of
W processes takes its own contiguous 1/W of every global batch, the same samples as one process would.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler, default_collate


def seeded_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The random stream of draw `index` (an epoch, a step) of a run seeded `seed`: a function of the two alone,
    so a resumed run draws what one never stopped drew."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + index)


@functools.lru_cache(maxsize=2)
def _permutation(length: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(length, generator=seeded_generator(seed, epoch))


def is_procedural(dataset) -> bool:
    """Whether every index of `dataset` is a fresh random draw (rendered shapes, photo crops): no epochs, no end."""
    return not getattr(dataset, "shuffle_each_epoch", True)


def sample_index(dataset, sample: int, seed: int) -> int:
    """The data set index that global sample number `sample` reads."""
    if is_procedural(dataset):
        return sample
    epoch, position = divmod(sample, len(dataset))
    return epoch * len(dataset) + int(_permutation(len(dataset), seed, epoch)[position])


class StepBatches(Sampler[list[int]]):
    """Index lists for steps start ... steps - 1: this process's share of each global batch."""

    def __init__(self, dataset, batch_size: int, start: int, steps: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"the batch size {batch_size} is not divisible by the {world} processes")
        self.dataset, self.batch_size, self.start, self.steps = dataset, batch_size, start, steps
        self.seed, self.rank, self.share = seed, rank, batch_size // world

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            first = step * self.batch_size + self.rank * self.share
            yield [sample_index(self.dataset, g, self.seed) for g in range(first, first + self.share)]


def collate_images(items: list[dict | None]) -> dict:
    """Stack the readable items; `skipped` counts those that could not be read (None)."""
    readable = [item for item in items if item is not None]
    batch = default_collate(readable) if readable else {}
    batch["skipped"] = len(items) - len(readable)
    return batch


def step_loader(dataset, batch_size: int, start: int, steps: int, seed: int, workers: int = 0, rank: int = 0,
                world: int = 1) -> DataLoader:  # fmt: skip
    """Batches for steps start ... steps - 1, read by `workers` processes (0: in this one)."""
    return DataLoader(
        dataset,
        batch_sampler=StepBatches(dataset, batch_size, start, steps, seed, rank, world),
        num_workers=workers,
        collate_fn=collate_images,
        persistent_workers=False,
        # Its own generator: a DataLoader draws its workers' base seed when iterated, and drawing it from the
        # global RNG would shift the dropout masks of a resumed run against those of an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
