"""How well a tokenizer reconstructs images it never saw, and how much of its codebook they use."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from llamagen.evaluation.fid import RandomFeatures, frechet_distance, image_features
from llamagen.evaluation.judges import HELD_OUT_SEED
from llamagen.images import pil_to_tensor, tensor_to_pil
from llamagen.metrics import code_perplexity
from llamagen.tokenizer import VQModel
from llamagen.tokenizer.reconstruction import reconstruct, reconstruct_batch

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
    fid: float  # reconstruction FID: originals against reconstructions, in the feature space below
    fid_features: str  # "random-conv" (the substitute) or "inception-v3 (torchvision)"; see evaluation.fid

    def as_dict(self) -> dict[str, float | str]:
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


def held_out_whole_photos(size: int = 256) -> list[Image.Image]:
    """Each held-out photo whole: resized on its shorter side to `size` and centre-cropped to a square, as the
    paper's ImageNet images are read (a coarser scale than `held_out_crops`, which cut the photos as they are)."""
    from llamagen.data.photos import HELD_OUT_PHOTOS, load_photo
    from llamagen.evaluation.reconstruction_set import fitted

    return [fitted(load_photo(name), size) for name in HELD_OUT_PHOTOS]


def held_out_tiles(size: int) -> list[Image.Image]:
    """Every non-overlapping size x size tile of the held-out photos: many images, for usage statistics."""
    from llamagen.data.photos import HELD_OUT_PHOTOS, load_photo

    tiles = []
    for name in HELD_OUT_PHOTOS:
        photo = load_photo(name)
        for top in range(0, photo.height - size + 1, size):
            tiles += [photo.crop((x, top, x + size, top + size)) for x in range(0, photo.width - size + 1, size)]
    return tiles


HELD_OUT_SHAPES = 500  # for reconstruction metrics; drawn with the judges' held-out seed


def held_out_images(data: str, size: int | None = None) -> tuple[list[Image.Image], str]:
    """Images of a data set that its embedded tokenizer never trained on, and a sentence saying which."""
    if data == "photos":
        size = size or 256
        return held_out_crops(size), (
            f"{size}x{size} crops (corners and centre) of the held-out photos china, flower (scikit-learn) and "
            "grace_hopper (Matplotlib), never seen in training"
        )
    if data == "whole-photos":
        size = size or 256
        return held_out_whole_photos(size), (
            f"the held-out photos china, flower (scikit-learn) and grace_hopper (Matplotlib) whole, resized to {size} "
            "on the shorter side and centre-cropped"
        )
    if data == "photo-tiles":
        size = size or 32
        return held_out_tiles(size), f"every non-overlapping {size}x{size} tile of the three held-out photos"
    if data == "shapes":
        from llamagen.data.shapes import Shapes

        size = size or 64
        shapes = Shapes(size=size, seed=HELD_OUT_SEED)
        images = tensor_to_pil(torch.stack([shapes[i]["image"] for i in range(HELD_OUT_SHAPES)]))
        return (
            images,
            f"{HELD_OUT_SHAPES} {size}x{size} shapes drawn with seed {HELD_OUT_SEED} (training: seed 0)",
        )
    if data == "digits":
        from llamagen.data.digits import TEST_IMAGES, Digits

        size = size or 32
        digits = Digits("test", size=size)
        images = tensor_to_pil(torch.stack([digits[i]["image"] for i in range(len(digits))]))
        return images, f"the last {TEST_IMAGES} of scikit-learn's digits at {size}x{size}, held out of training"
    raise ValueError(f"no held-out images for {data!r}; choose photos, whole-photos, photo-tiles, shapes or digits")


def _features_of(features: nn.Module, pictures: list[Image.Image]) -> np.ndarray:
    if len({picture.size for picture in pictures}) == 1:
        return image_features(features, torch.cat([pil_to_tensor(picture) for picture in pictures]))
    return np.concatenate([image_features(features, pil_to_tensor(picture)) for picture in pictures])


def evaluate_tokenizer(
    tokenizer: VQModel,
    images: list[Image.Image],
    batch_size: int = 32,
    features: nn.Module | None = None,
    save_images: Path | None = None,
) -> TokenizerEvaluation:
    """Reconstruct every image and measure; `features` is the FID's space (default: `RandomFeatures`).

    With `save_images`, originals and reconstructions are written as PNGs to its `originals/` and
    `reconstructions/` folders, as torch-fidelity and clean-fid read them.
    """
    if not images:
        raise ValueError("no images to evaluate on")
    features = features if features is not None else RandomFeatures()
    results, original_features, reconstruction_features = [], [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        if len({image.size for image in chunk}) == 1:
            done = reconstruct_batch(tokenizer, chunk)
        else:
            done = [reconstruct(tokenizer, image) for image in chunk]
        if save_images is not None:
            for number, result in enumerate(done, start=start):
                for folder, picture in (("originals", result.original), ("reconstructions", result.reconstruction)):
                    (save_images / folder).mkdir(parents=True, exist_ok=True)
                    picture.save(save_images / folder / f"{number:05d}.png")
        original_features.append(_features_of(features, [r.original for r in done]))
        reconstruction_features.append(_features_of(features, [r.reconstruction for r in done]))
        results += done
    counts = torch.bincount(torch.cat([r.codes.flatten() for r in results]), minlength=tokenizer.config.codebook_size)
    used = int((counts > 0).sum())
    return TokenizerEvaluation(
        images=len(images),
        psnr=sum(r.psnr for r in results) / len(results),
        ssim=sum(r.ssim for r in results) / len(results),
        bits_per_pixel=sum(r.bits_per_pixel for r in results) / len(results),
        used_codes=used,
        codebook_usage=used / tokenizer.config.codebook_size,
        perplexity=code_perplexity(counts),
        dead_codes=tokenizer.config.codebook_size - used,
        fid=frechet_distance(np.concatenate(original_features), np.concatenate(reconstruction_features)),
        fid_features=features.name,
    )
