"""From generated tokens to images: the glue between the generator and the tokenizer."""

from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision.utils import make_grid

from llamagen.gpt import GPT
from llamagen.images import tensor_to_pil
from llamagen.tokenizer import VQModel


def check_compatible(tokenizer: VQModel, gpt: GPT) -> None:
    """Refuse a tokenizer and a generator that do not speak the same codes."""
    if tokenizer.config.codebook_size != gpt.config.vocab_size:
        raise ValueError(
            f"the generator predicts {gpt.config.vocab_size} codes but the tokenizer's codebook has "
            f"{tokenizer.config.codebook_size}: they were not trained together"
        )


def decode_tokens(tokenizer: VQModel, tokens: torch.Tensor) -> torch.Tensor:
    """(B, block_size) raster-order tokens -> (B, 3, H, W) images in [-1, 1] (H = W = grid x downsample)."""
    grid = math.isqrt(tokens.shape[1])
    if grid * grid != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not form a square grid")
    return tokenizer.detokenize(tokens.view(tokens.shape[0], grid, grid)).clamp(-1, 1)


def image_grid(images: torch.Tensor, columns: int | None = None) -> Image.Image:
    """(B, 3, H, W) images in [-1, 1] tiled into one picture, `columns` wide (default: about square)."""
    columns = columns or math.ceil(math.sqrt(images.shape[0]))
    return tensor_to_pil(make_grid(images.float().cpu(), nrow=columns, padding=2, pad_value=1.0)[None])[0]
