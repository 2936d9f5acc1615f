"""Handwritten digits: scikit-learn's `load_digits` (1,797 8x8 greyscale images), as 32x32 RGB.

The 8x8 images hold 17 grey levels (0-16); they are scaled to 8 bits and enlarged bicubically, so a
tokenizer sees smooth strokes rather than blocks. The last `TEST_IMAGES` are held out for evaluation.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

TEST_IMAGES = 297  # 1,500 for training, the rest held out
SPLITS = ("train", "test", "all")


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes a moment to import

    bunch = load_digits()
    return (bunch.images * (255 / 16)).round().astype(np.uint8), bunch.target.astype(np.int64)


class Digits(torch.utils.data.Dataset):
    """Item k is image k % len(self) of the split (epochs repeat it); dicts of image (3, size, size) in [-1, 1]
    and label (the digit)."""

    shuffle_each_epoch: ClassVar[bool] = True
    class_names: ClassVar[tuple[str, ...]] = tuple(str(digit) for digit in range(10))

    def __init__(self, split: str = "train", size: int = 32):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if size < 8:
            raise ValueError(f"images must be at least 8 pixels wide, got {size}")
        images, labels = _digits()
        part = {"train": slice(0, -TEST_IMAGES), "test": slice(-TEST_IMAGES, None), "all": slice(None)}[split]
        self.images, self.labels, self.size = images[part], labels[part], size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        index %= len(self.images)
        grey = Image.fromarray(self.images[index]).resize((self.size, self.size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(grey, dtype=np.uint8).copy()).float() / 127.5 - 1.0
        return {"image": pixels.expand(3, -1, -1).clone(), "label": int(self.labels[index])}
