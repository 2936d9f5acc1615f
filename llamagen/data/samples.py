"""Small fixed pictures that the apps and notebooks show and measure on: bundled photos, shapes and digits.

Single samples ("china", "shapes 2", "digits 0", ...) for reconstruction, and sets of images ("held-out
photos", "shapes (64)", ...) for codebook usage. Everything is deterministic: the same name, the same pixels.
"""

from __future__ import annotations

import functools

import torch
from PIL import Image

from llamagen.data.photos import HELD_OUT_PHOTOS, PHOTO_NAMES, TRAINING_PHOTOS, load_photo
from llamagen.images import tensor_to_pil

SHAPE_SAMPLES = ("shapes 0", "shapes 1", "shapes 2", "shapes 3")
DIGIT_SAMPLES = ("digits 0", "digits 1", "digits 2", "digits 3")
# Held-out photos first: what a tokenizer never saw is the fair test.
SAMPLES = (*HELD_OUT_PHOTOS, *(n for n in PHOTO_NAMES if n not in HELD_OUT_PHOTOS), *SHAPE_SAMPLES, *DIGIT_SAMPLES)
IMAGE_SETS = ("held-out photos", "training photos", "shapes (64)", "digits (64)")
SET_SIZE = 64


def _data_items(kind: str, count: int) -> list[Image.Image]:
    """The first `count` images of the shapes (64x64, seed 0) or digits (32x32) data."""
    if kind == "shapes":
        from llamagen.data.shapes import Shapes

        data = Shapes(size=64, seed=0)
    else:
        from llamagen.data.digits import Digits

        data = Digits(size=32)
    return tensor_to_pil(torch.stack([data[i]["image"] for i in range(count)]))


@functools.cache
def sample_image(name: str) -> Image.Image:
    """One of SAMPLES: a photo, or an item of the shapes or digits data."""
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLES)}")
    kind, _, index = name.partition(" ")
    if kind in ("shapes", "digits"):
        return _data_items(kind, int(index) + 1)[-1]
    return load_photo(name)


def image_set(name: str) -> list[Image.Image]:
    """The images of one of IMAGE_SETS."""
    if name == "held-out photos":
        return [load_photo(photo) for photo in HELD_OUT_PHOTOS]
    if name == "training photos":
        return [load_photo(photo) for photo in TRAINING_PHOTOS]
    if name in ("shapes (64)", "digits (64)"):
        return _data_items(name.split()[0], SET_SIZE)
    raise ValueError(f"unknown image set {name!r}; choose one of {', '.join(IMAGE_SETS)}")
