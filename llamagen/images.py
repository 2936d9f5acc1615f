"""Reading images safely and converting between PIL images and model tensors.

Every PIL mode becomes 8-bit RGB the way a person would expect:
- transparency (RGBA, LA, PA, P with a transparent colour) is composited over white;
- 16-bit greyscale (I;16*) is scaled by 255/65535; 32-bit integer (I) likewise when any value
  exceeds 255, else taken as 8-bit; float (F) is read as [0, 1] when it lies there, else as [0, 255];
- everything else (L, 1, P, CMYK, YCbCr, LAB, HSV) goes through PIL's own RGB conversion;
- the EXIF orientation is applied, so a phone photo is upright.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# The largest image read by default. Tokenizing holds several (channels x H x W) float32 maps at full
# resolution (128 channels for VQ-16: 2 GB each at 4 megapixels), so larger images would exhaust memory.
DEFAULT_MAX_MEGAPIXELS = 4.0
_WHITE = (255, 255, 255)


def load_image(
    path: str | os.PathLike, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, name: str | None = None
) -> Image.Image:
    """An RGB image from a file, or a ValueError that says what is wrong with the file (calling it `name`;
    default: its path in quotes)."""
    path = Path(path)
    name = name or repr(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {name}")
    if path.stat().st_size == 0:
        raise ValueError(f"{name} is an empty file, not an image")
    try:
        image = Image.open(path)
    except UnidentifiedImageError as error:
        raise ValueError(f"{name} is not an image that PIL can read") from error
    except Image.DecompressionBombError as error:
        raise ValueError(f"{name} is far over the size limit of {megapixels(max_megapixels)}") from error
    with image:
        check_image_size(image.width, image.height, max_megapixels, name)  # before decoding any pixel
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"{name} is truncated or corrupt: {error}") from error
        return to_rgb(ImageOps.exif_transpose(image))


def check_image_size(width: int, height: int, max_megapixels: float, name: str = "image") -> None:
    if width == 0 or height == 0:
        raise ValueError(f"{name} is empty ({width}x{height} pixels)")
    limit = int(max_megapixels * 1e6)
    if width * height > limit:
        raise ValueError(
            f"{name} is {width}x{height} = {width * height:,} pixels; the limit is {limit:,} pixels "
            f"({megapixels(max_megapixels)})"
        )


def enlarged(image: Image.Image, min_size: int) -> tuple[Image.Image, int]:
    """`image` enlarged by the smallest whole factor that makes its longer side at least `min_size` pixels, with
    nearest neighbour (every pixel stays exact, only bigger); and the factor."""
    scale = max(1, -(-min_size // max(image.size)))
    return image.resize((scale * image.width, scale * image.height), Image.NEAREST), scale


def megapixels(count: float) -> str:
    return f"{count:g} megapixel{'s' * (count != 1)}"


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode (see the module docstring for the rules)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        return _from_array(np.asarray(image, dtype=np.float64) / 257.0)
    if image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        return _from_array(values / 257.0 if values.max(initial=0) > 255 else values)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        in_unit_range = values.size and values.min() >= 0 and values.max() <= 1
        return _from_array(values * 255.0 if in_unit_range else values)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(grey: np.ndarray) -> Image.Image:
    """A greyscale array in [0, 255] (clipped) as an RGB image."""
    grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(grey8).convert("RGB")  # 2-D uint8 reads as mode L


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) float32 in [-1, 1]."""
    pixels = torch.from_numpy(np.asarray(to_rgb(image), dtype=np.uint8).copy())
    return (pixels.permute(2, 0, 1).float() / 127.5 - 1.0).unsqueeze(0)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounded to the nearest level."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> a list of RGB PIL images."""
    return [Image.fromarray(array) for array in tensor_to_uint8(images)]
