"""Photographs that Python packages ship, available offline.

The embedded tokenizers train on the photographs of scikit-image (`skimage.data`), and photo-vq also on the
six colour photos Gradio ships (`GRADIO_PHOTOS`, data set `photos+gradio`); the held-out ones (two from
scikit-learn, one from Matplotlib) and photos a user brings are what they are judged on.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
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
TRAINING_PHOTOS = RGB_PHOTOS + GREY_PHOTOS
# Gradio's example photos (file names without the extension): a cheetah, a lion, a tower and a statue, JPEGs
# of 256 to 910 pixels. (Gradio is installed for the apps; cheetah1-copy in its test data repeats cheetah1.)
GRADIO_PHOTOS = {
    "cheetah": "media_assets/images/cheetah.jpg",
    "cheetah1": "media_assets/images/cheetah1.jpg",
    "groot": "media_assets/images/groot.jpeg",
    "lion": "media_assets/images/lion.jpg",
    "tower": "media_assets/images/tower.jpg",
    "cheetah2": "test_data/cheetah2.jpg",
}
HELD_OUT_PHOTOS = ("china", "flower", "grace_hopper")
PHOTO_NAMES = TRAINING_PHOTOS + tuple(GRADIO_PHOTOS) + HELD_OUT_PHOTOS
# The training sets `open_dataset` names: scikit-image's photos, and those with Gradio's.
PHOTO_SETS = {"photos": TRAINING_PHOTOS, "photos+gradio": TRAINING_PHOTOS + tuple(GRADIO_PHOTOS)}


def _package_folder(package: str, name: str) -> Path:
    """An installed package's folder, found without importing it (scikit-learn takes 2 s, Gradio more)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the photo {name!r} comes with {package}, which is not installed")
    return Path(spec.submodule_search_locations[0])


def load_photo(name: str) -> Image.Image:
    """One of `PHOTO_NAMES` as an RGB PIL image (greyscale photos are repeated over the three channels)."""
    # Imported here: scikit-image, scikit-learn and Matplotlib each take a moment to import.
    if name in TRAINING_PHOTOS:
        from skimage import data

        pixels = getattr(data, name)()
        if name == "stereo_motorcycle":
            pixels = pixels[0]  # (left view, right view, disparity): the left view
    elif name in ("china", "flower"):
        pixels = np.asarray(Image.open(_package_folder("sklearn", name) / "datasets" / "images" / f"{name}.jpg"))
    elif name in GRADIO_PHOTOS:
        pixels = np.asarray(Image.open(_package_folder("gradio", name) / GRADIO_PHOTOS[name]).convert("RGB"))
    elif name == "grace_hopper":
        from matplotlib import cbook

        pixels = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    else:
        raise ValueError(f"unknown photo {name!r}; choose one of {', '.join(PHOTO_NAMES)}")
    return Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")


@functools.cache
def _photos(names: tuple[str, ...]) -> tuple[Image.Image, ...]:
    return tuple(load_photo(name) for name in names)


def turn_hue(image: Image.Image, turn: int) -> Image.Image:
    """Rotate every pixel's hue by turn/256 of a full circle; greys and brightness are left as they are."""
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + turn) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


class PhotoCrops(torch.utils.data.Dataset):
    """Random square crops of the training photos (`photos`: a key of PHOTO_SETS), resized to `size`, flipped
    at random; each crop from a photo drawn uniformly.

    Sample `i` is a pure function of (`seed`, `i`): the crop side is drawn log-uniformly between
    `size` (or the photo's short side, if smaller) and the photo's short side, so that both fine
    texture and whole objects are seen. With `hue_jitter`, half the crops have their hue turned by a
    random angle: the bundled photos hold few greens or saturated blues, and a tokenizer that never saw
    a colour cannot reconstruct it. The data set is as long as asked; training that resumes at step s
    simply continues from sample s x batch.
    """

    shuffle_each_epoch: ClassVar[bool] = False  # each index is already a fresh random draw

    def __init__(self, size: int = 64, seed: int = 0, length: int = 10**9, hue_jitter: bool = False,
                 photos: str = "photos"):  # fmt: skip
        if size < 8:
            raise ValueError(f"crop size must be at least 8 pixels, got {size}")
        if photos not in PHOTO_SETS:
            raise ValueError(f"unknown photo set {photos!r}; choose one of {', '.join(PHOTO_SETS)}")
        self.size, self.length, self.seed, self.hue_jitter = size, length, seed, hue_jitter
        self.names = PHOTO_SETS[photos]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        """{"image": (3, size, size) float32 in [-1, 1]}."""
        rng = np.random.default_rng([self.seed, index])
        photos = _photos(self.names)
        photo = photos[rng.integers(len(photos))]
        short = min(photo.size)
        smallest = min(self.size, short)
        side = int(np.rint(np.exp(rng.uniform(np.log(smallest), np.log(short)))))
        left = int(rng.integers(photo.width - side + 1))
        top = int(rng.integers(photo.height - side + 1))
        crop = photo.crop((left, top, left + side, top + side)).resize((self.size, self.size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.hue_jitter and rng.random() < 0.5:
            crop = turn_hue(crop, int(rng.integers(1, 256)))
        pixels = torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1)
        return {"image": pixels.float() / 127.5 - 1.0}
