"""A user's own images: an ImageNet-style folder (one sub-folder per class) or captioned images (JSONL).

Training crops follow the original's recipe (after ADM): the short side is resized to between 1 and 1.25
times the crop, a random square is cut, and it is flipped half the time. Item k shows file k % len(self)
with augmentation drawn from (seed, k), so every epoch sees new crops and a resumed run sees the same
ones. A file that cannot be read yields None; `collate_images` drops it and counts it, so a few bad files
in a million do not stop a run, and the count shows in the training log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from llamagen.images import load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Training resizes every image, so large ones are fine; this only guards against decompression bombs.
TRAINING_MAX_MEGAPIXELS = 100.0
MAX_ZOOM = 1.25  # short side resized to between the crop and 1.25 x the crop (a crop fraction of 0.8)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder`, at any depth (ImageNet's validation set: a folder per class), by path."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {str(folder)!r}")
    files = sorted(path for path in folder.rglob("*") if _is_image(path))
    if not files:
        raise ValueError(f"{str(folder)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def random_crop(image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """Resize the short side to size x U[1, MAX_ZOOM], cut a random size x size square, flip half the time."""
    short = size * rng.uniform(1.0, MAX_ZOOM)
    scale = short / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = int(rng.integers(width - size + 1)), int(rng.integers(height - size + 1))
    image = image.crop((left, top, left + size, top + size))
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1.0


class _ImageFiles(torch.utils.data.Dataset):
    shuffle_each_epoch: ClassVar[bool] = True

    def __init__(self, files: list[Path], size: int, seed: int):
        if size < 8:
            raise ValueError(f"images must be at least 8 pixels wide, got {size}")
        self.files, self.size, self.seed = files, size, seed

    def __len__(self) -> int:
        return len(self.files)

    def _image(self, index: int) -> torch.Tensor | None:
        try:
            image = load_image(self.files[index % len(self.files)], max_megapixels=TRAINING_MAX_MEGAPIXELS)
        except (OSError, ValueError):
            return None
        return _to_tensor(random_crop(image, self.size, np.random.default_rng([self.seed, index])))


class ImageFolder(_ImageFiles):
    """root/CLASS/**/IMAGE; classes are the sub-folders in sorted order (label = position)."""

    def __init__(self, root: str | os.PathLike, size: int = 256, seed: int = 0):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"no data folder at {str(root)!r}")
        files, labels, classes = [], [], []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            images = sorted(p for p in folder.rglob("*") if _is_image(p))
            if images:
                labels += [len(classes)] * len(images)
                classes.append(folder.name)
                files += images
        if not files:
            raise ValueError(
                f"no images in {str(root)!r}: expected one sub-folder per class holding "
                f"{', '.join(IMAGE_SUFFIXES)} files (the ImageNet layout)"
            )
        super().__init__(files, size, seed)
        self.labels, self.class_names = labels, tuple(classes)

    def __getitem__(self, index: int) -> dict | None:
        image = self._image(index)
        return None if image is None else {"image": image, "label": self.labels[index % len(self.files)]}


class CaptionedImages(_ImageFiles):
    """A JSONL file of {"path": ..., "caption": ...} lines; relative paths are relative to the file's folder."""

    def __init__(self, manifest: str | os.PathLike, size: int = 256, seed: int = 0):
        manifest = Path(manifest)
        if not manifest.is_file():
            raise ValueError(f"no captions file at {str(manifest)!r}")
        files, captions = [], []
        for number, line in enumerate(manifest.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                path, text = record["path"], record["caption"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(
                    f'{manifest}:{number}: expected a JSON object with "path" and "caption", got {line[:80]!r}'
                ) from error
            if not isinstance(text, str) or not isinstance(path, str):
                raise ValueError(f"{manifest}:{number}: path and caption must be strings")
            files.append(manifest.parent / path)
            captions.append(text)
        if not files:
            raise ValueError(f"{str(manifest)!r} lists no images")
        super().__init__(files, size, seed)
        self.captions = captions

    def __getitem__(self, index: int) -> dict | None:
        image = self._image(index)
        return None if image is None else {"image": image, "caption": self.captions[index % len(self.files)]}
