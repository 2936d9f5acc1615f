"""The VQ image tokenizer: images <-> grids of discrete codes (Sec. 2.1 of the paper)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llamagen.tokenizer.autoencoder import Decoder, Encoder
from llamagen.tokenizer.config import VQConfig
from llamagen.tokenizer.quantizer import QuantizerOutput, VectorQuantizer

# Pixel values a tokenizer accepts; a little slack absorbs rounding in the caller's scaling.
_PIXEL_RANGE_TOLERANCE = 1e-3
# Pixels a CPU encodes or decodes at a time: a few images' activations stay in its caches, where a large batch's
# go to memory and back at every layer (1,000 64x64 shapes decode in 13 s sixteen at a time, 26 s at once, on
# two cores), while parts of a few tiny images spend their time calling each layer rather than computing. Each
# image is computed on its own either way, so the results are the same.
CPU_PIXELS_AT_A_TIME = 16 * 64 * 64


@dataclass
class VQOutput:
    reconstruction: torch.Tensor  # (B, 3, H, W)
    quantizer: QuantizerOutput


class VQModel(nn.Module):
    """Encoder -> 1x1 conv to the codebook dimension -> quantizer -> 1x1 conv -> decoder.

    `tokenize(images) -> codes (B, H/f, W/f)` and `detokenize(codes) -> images`, with images in [-1, 1]
    and f = `config.downsample_factor`, for any height and width that f divides.
    """

    checkpoint_kind = "vq"  # the `kind` recorded in the project's checkpoint files

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(
            config.ch, config.encoder_ch_mult, config.num_res_blocks, config.z_channels, config.dropout_p
        )
        self.decoder = Decoder(
            config.ch, config.decoder_ch_mult, config.num_res_blocks, config.z_channels, config.dropout_p
        )
        self.quantize = VectorQuantizer(
            config.codebook_size,
            config.codebook_embed_dim,
            config.commit_loss_beta,
            config.entropy_loss_ratio,
            config.codebook_l2_norm,
            config.codebook_show_usage,
        )
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def device(self) -> torch.device:
        return self.quant_conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    # --- training path -------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> QuantizerOutput:
        return self.quantize(self.latent(images))

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) quantized latent -> (B, 3, h*f, w*f) image."""
        return self.decoder(self.decoder_input(quantized))

    def decoder_input(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) quantized latent -> (B, z_channels, h, w): what the decoder takes."""
        return self.post_quant_conv(quantized.to(self.dtype))

    def forward(self, images: torch.Tensor) -> VQOutput:
        quantized = self.encode(images)
        return VQOutput(self.decode(quantized.quantized), quantized)

    # --- inference path ------------------------------------------------------------------------

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] -> (B, H/f, W/f) int64 codes."""
        self._check_images(images)
        return torch.cat([self._tokenize(part) for part in self._parts(images)])

    def _tokenize(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantize.nearest_codes(self.latent(images))

    def latent(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, D, H/f, W/f): the encoder's output in the codebook's dimension, before
        quantization."""
        return self.quant_conv(self.encoder(images.to(self.device, self.dtype)))

    @torch.no_grad()
    def latent_vectors(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] -> (B * H/f * W/f, D) float32: each position's latent as the quantizer
        compares it with the codes, row by row."""
        return self.quantize.compared(self.latent(images)).reshape(-1, self.config.codebook_embed_dim)

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) integer codes -> (B, 3, h*f, w*f) images (float32, about [-1, 1])."""
        self._check_codes(codes)
        return torch.cat(
            [self.decode(self.quantize.lookup(part.to(self.device))).float() for part in self._parts(codes)]
        )

    def _parts(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The batch (images or codes) in the pieces it is run in: about `CPU_PIXELS_AT_A_TIME` pixels on a CPU,
        all at once elsewhere."""
        pixels = batch.shape[-2] * batch.shape[-1] * (1 if batch.dim() == 4 else self.downsample_factor**2)
        images_at_a_time = max(1, CPU_PIXELS_AT_A_TIME // pixels)
        if self.device.type != "cpu" or len(batch) <= images_at_a_time:
            return (batch,)
        return batch.split(images_at_a_time)

    def codebook_usage(self) -> float:
        return self.quantize.usage()

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
        height, width = images.shape[-2:]
        f = self.downsample_factor
        if images.numel() == 0:
            raise ValueError(f"images must not be empty, got shape {tuple(images.shape)}")
        if height % f or width % f:
            raise ValueError(
                f"image height and width must be multiples of the downsample factor {f}, got {height}x{width}"
                " (llamagen.tokenizer.reconstruction pads and crops back for you)"
            )
        low, high = images.min().item(), images.max().item()
        if low < -1 - _PIXEL_RANGE_TOLERANCE or high > 1 + _PIXEL_RANGE_TOLERANCE:
            raise ValueError(
                f"images must be in [-1, 1], got values in [{low:.3g}, {high:.3g}] (uint8 pixels: x / 127.5 - 1)"
            )

    def _check_codes(self, codes: torch.Tensor) -> None:
        if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
            shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f"codes must be a (B, h, w) tensor, got {shape}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
        if codes.numel() == 0:
            raise ValueError(f"codes must not be empty, got shape {tuple(codes.shape)}")
        low, high = codes.min().item(), codes.max().item()
        if low < 0 or high >= self.config.codebook_size:
            raise ValueError(f"codes must be in [0, {self.config.codebook_size}), got values in [{low}, {high}]")
