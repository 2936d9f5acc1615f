"""How well a tokenizer reconstructs images it never saw, and how much of its codebook they use."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from llamagen.reconstruction import reconstruct
from llamagen.tokenizer import VQModel

HELD_OUT_CROPS_PER_PHOTO = 5  # the four corners and the centre


@dataclass
class TokenizerEvaluation:
    images: int
    psnr: float  # dB, mean over images, 8-bit pixels
    ssim: float  # mean over images, data range 255
    bits_per_pixel: float
    used_codes: int  # distinct codes over all the images
    codebook_usage: float  # used_codes / codebook size
    perplexity: float  # exp(entropy) of the codes' frequencies: the effective number of codes used
    dead_codes: int  # codes no image used

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def held_out_crops(size: int = 256) -> list[Image.Image]:
    """Square crops (corners and centre) of the photos no embedded tokenizer trains on."""
    from llamagen.data.photos import HELD_OUT_PHOTOS, load_photo

    crops = []
    for name in HELD_OUT_PHOTOS:
        photo = load_photo(name)
        w, h = photo.size
        if min(w, h) < size:
            raise ValueError(f"photo {name} ({w}x{h}) is smaller than the {size}-pixel crops")
        corners = [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size), ((w - size) // 2, (h - size) // 2)]
        crops += [photo.crop((x, y, x + size, y + size)) for x, y in corners]
    return crops


def evaluate_tokenizer(tokenizer: VQModel, images: list[Image.Image]) -> TokenizerEvaluation:
    if not images:
        raise ValueError("no images to evaluate on")
    results = [reconstruct(tokenizer, image) for image in images]
    counts = torch.bincount(torch.cat([r.codes.flatten() for r in results]), minlength=tokenizer.config.codebook_size)
    frequencies = counts[counts > 0].double() / counts.sum()
    used = int((counts > 0).sum())
    return TokenizerEvaluation(
        images=len(images),
        psnr=sum(r.psnr for r in results) / len(results),
        ssim=sum(r.ssim for r in results) / len(results),
        bits_per_pixel=sum(r.bits_per_pixel for r in results) / len(results),
        used_codes=used,
        codebook_usage=used / tokenizer.config.codebook_size,
        perplexity=math.exp(-(frequencies * frequencies.log()).sum().item()),
        dead_codes=tokenizer.config.codebook_size - used,
    )
