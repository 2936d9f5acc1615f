"""The photographs that scikit-image ships (`skimage.data`), available offline.

These are the only photos the embedded tokenizers train on; photos a user brings are what they are
judged on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RGB_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "colorwheel",
)
GREY_PHOTOS = ("camera", "moon", "coins", "clock", "brick", "grass", "gravel", "page", "text")
PHOTO_NAMES = RGB_PHOTOS + GREY_PHOTOS


def load_photo(name: str) -> Image.Image:
    """One of `PHOTO_NAMES` as an RGB PIL image (greyscale photos are repeated over the three channels)."""
    if name not in PHOTO_NAMES:
        raise ValueError(f"unknown photo {name!r}; choose one of {', '.join(PHOTO_NAMES)}")
    from skimage import data  # imported here: scikit-image takes a moment to import

    pixels = getattr(data, name)()
    if name == "stereo_motorcycle":
        pixels = pixels[0]  # (left view, right view, disparity): the left view
    return Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")
