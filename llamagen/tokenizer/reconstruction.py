"""Tokenize an image and decode it back, with what it costs and what it loses.

An image whose height or width the downsample factor does not divide is padded at the bottom and
right by repeating the edge pixels (which adds no new edge for the tokenizer to spend codes on), and
the reconstruction is cropped back to the original size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from llamagen.images import pil_to_tensor, tensor_to_uint8
from llamagen.metrics import psnr, ssim
from llamagen.tokenizer.local_decode import DecodedCodes, recorded_decode
from llamagen.tokenizer.model import VQModel


@dataclass
class Reconstruction:
    original: Image.Image
    reconstruction: Image.Image
    codes: torch.Tensor  # (h, w) int64 code indices, for the padded image
    psnr: float  # dB, on the 8-bit pixels of the two images (data range 255)
    ssim: float  # data range 255; NaN for images under 11 pixels a side
    bits_per_pixel: float  # tokens x log2(codebook size) / pixels of the original image
    distinct_codes: int
    decoded: DecodedCodes | None = None  # kept for `local_decode.decode_edit` when asked for

    @property
    def ssim_text(self) -> str:
        """SSIM as shown to a user: 4 decimals, or why there is none."""
        return "n/a (image under 11 pixels)" if math.isnan(self.ssim) else f"{self.ssim:.4f}"

    def side_by_side(self) -> Image.Image:
        """The original on the left, the reconstruction on the right."""
        width, height = self.original.size
        canvas = Image.new("RGB", (2 * width, height))
        canvas.paste(self.original, (0, 0))
        canvas.paste(self.reconstruction, (width, 0))
        return canvas


def pad_to_multiple(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, ceil(H/f)*f, ceil(W/f)*f), edge pixels repeated at the bottom and right."""
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % factor, -width % factor
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")


@torch.no_grad()
def tokenize_image(tokenizer: VQModel, image: Image.Image) -> torch.Tensor:
    """One RGB image -> its (h, w) codes on the CPU, padded as `reconstruct` pads it."""
    pixels = pad_to_multiple(pil_to_tensor(image), tokenizer.downsample_factor).to(tokenizer.device)
    return tokenizer.tokenize(pixels)[0].cpu()


def reconstruct(tokenizer: VQModel, image: Image.Image, keep_for_edits: bool = False) -> Reconstruction:
    """Round-trip one RGB image through the tokenizer and measure the result. `keep_for_edits` keeps what a
    local re-decode of an edited code needs (`Reconstruction.decoded`): the decode takes 10-50% longer, and the
    first one for a tokenizer also measures how far its edits reach (`local_decode.edit_reach`)."""
    return reconstruct_batch(tokenizer, [image], keep_for_edits)[0]


def reconstruct_batch(
    tokenizer: VQModel, images: list[Image.Image], keep_for_edits: bool = False
) -> list[Reconstruction]:
    """Round-trip RGB images of one size as one batch. A decoded pixel may differ by a level from a round trip of
    the image alone: the convolutions' arithmetic depends on the batch."""
    if len({image.size for image in images}) != 1:
        raise ValueError(f"a batch needs images of one size, got {sorted({image.size for image in images})}")
    originals = torch.cat([pil_to_tensor(image) for image in images])
    height, width = originals.shape[-2:]
    codes = tokenizer.tokenize(pad_to_multiple(originals, tokenizer.downsample_factor))
    if keep_for_edits:
        kept = [recorded_decode(tokenizer, grid) for grid in codes]
        decoded_pixels = np.stack([decoded.pixels[:height, :width] for decoded in kept])
    else:
        kept = [None] * len(images)
        decoded_pixels = tensor_to_uint8(tokenizer.detokenize(codes)[..., :height, :width])
    bits_per_pixel = codes[0].numel() * math.log2(tokenizer.config.codebook_size) / (height * width)
    original_pixels = tensor_to_uint8(originals)
    psnrs = psnr(original_pixels, decoded_pixels, data_range=255.0).tolist()
    ssims = ssim(original_pixels, decoded_pixels, data_range=255.0).tolist()
    return [
        Reconstruction(
            original=Image.fromarray(original_pixels[i]),
            reconstruction=Image.fromarray(decoded_pixels[i]),
            codes=codes[i].cpu(),
            psnr=psnrs[i],
            ssim=ssims[i],
            bits_per_pixel=bits_per_pixel,
            distinct_codes=int(codes[i].unique().numel()),
            decoded=kept[i],
        )
        for i in range(len(images))
    ]
