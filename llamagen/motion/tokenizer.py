"""The 1-D motion tokenizer: feature sequences (B, T, 263) <-> codes (B, T / 4), as T2M-GPT's VQ-VAE builds it.

Encoder: a convolution to `width` channels, then per halving of the frame rate a strided convolution and
`depth` residual blocks of dilated convolutions (dilations 1, 3, 9, ... from coarse to fine, so a block sees
a wide window early), then a convolution to the code dimension. The decoder mirrors it with nearest-neighbour
upsampling. Which quantizer sits between them is the study's question (`quantizers.py`); everything else is
equal across the arms. The model keeps the features' mean and deviation and normalises with them itself.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from llamagen.data.motion.features import FEATURES
from llamagen.motion.loading import load_saved_model
from llamagen.motion.quantizers import FSQ_LEVELS, EMAResetQuantizer, FSQuantizer, Quantized, SphereQuantizer

QUANTIZERS = ("llamagen", "ema-reset", "fsq")
# The study's arms, each a quantizer with its own settings: LlamaGen's few l2-normalised dimensions, T2M-GPT's
# 512 dimensions with EMA and resets, FSQ's grid.
ARMS = {
    "llamagen": {"quantizer": "llamagen", "code_dim": 8},
    "t2m": {"quantizer": "ema-reset", "code_dim": 512},
    "fsq": {"quantizer": "fsq"},
}


@dataclass
class MotionVQConfig:
    features: int = FEATURES
    width: int = 256
    depth: int = 3  # residual blocks a resolution
    dilation_growth: int = 3
    downsamples: int = 2  # each halves the frame rate: 2 gives a token every 4 frames
    quantizer: str = "llamagen"
    codebook_size: int = 1024  # for fsq, the product of fsq_levels
    code_dim: int = 8  # for fsq, the number of levels
    fsq_levels: tuple[int, ...] = ()
    l2_norm: bool = True  # llamagen's quantizer only
    commit_beta: float = 0.25  # the commitment weight: LlamaGen's 0.25; T2M-GPT's 0.02

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {self.quantizer!r}; choose one of {', '.join(QUANTIZERS)}")
        self.fsq_levels = tuple(self.fsq_levels)
        if self.quantizer == "fsq":
            if not self.fsq_levels:
                raise ValueError("the fsq quantizer needs fsq_levels")
            self.code_dim, self.codebook_size = len(self.fsq_levels), math.prod(self.fsq_levels)
        for name in ("width", "depth", "codebook_size", "code_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def frames_per_token(self) -> int:
        return 2**self.downsamples

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "fsq_levels": list(self.fsq_levels)}


def arm_config(arm: str, codebook_size: int, **changes) -> MotionVQConfig:
    """The config of one arm of the study at a codebook size (for fsq, the levels FSQ recommends for that
    many codes); `changes` override any field (code_dim for the dimension sweep, width, ...)."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {', '.join(ARMS)}")
    fields = {**ARMS[arm], "codebook_size": codebook_size}
    if arm == "t2m":
        fields["commit_beta"] = 0.02
    if arm == "fsq":
        fixed = sorted({"codebook_size", "code_dim"} & set(changes))
        if fixed:
            raise ValueError(f"an fsq arm's {' and '.join(fixed)} follow from its levels: change fsq_levels instead")
        bits = codebook_size.bit_length() - 1
        if 2**bits != codebook_size or bits not in FSQ_LEVELS:
            raise ValueError(f"FSQ levels are known for 2^n codes, n in {sorted(FSQ_LEVELS)}; got {codebook_size}")
        fields["fsq_levels"] = FSQ_LEVELS[bits]
    return MotionVQConfig(**{**fields, **changes})


class _DilatedBlock(nn.Module):
    """ReLU, a dilated convolution of width 3, ReLU, a 1x1 convolution; added to its input."""

    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation),
                                  nn.ReLU(), nn.Conv1d(width, width, 1))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _dilated_stack(config: MotionVQConfig) -> nn.Sequential:
    dilations = [config.dilation_growth**i for i in range(config.depth)][::-1]
    return nn.Sequential(*(_DilatedBlock(config.width, dilation) for dilation in dilations))


def _encoder(config: MotionVQConfig) -> nn.Sequential:
    layers = [nn.Conv1d(config.features, config.width, 3, padding=1), nn.ReLU()]
    for _ in range(config.downsamples):
        layers += [nn.Conv1d(config.width, config.width, 4, stride=2, padding=1), _dilated_stack(config)]
    return nn.Sequential(*layers, nn.Conv1d(config.width, config.code_dim, 3, padding=1))


def _decoder(config: MotionVQConfig) -> nn.Sequential:
    layers = [nn.Conv1d(config.code_dim, config.width, 3, padding=1), nn.ReLU()]
    for _ in range(config.downsamples):
        layers += [_dilated_stack(config), nn.Upsample(scale_factor=2, mode="nearest"),
                   nn.Conv1d(config.width, config.width, 3, padding=1)]  # fmt: skip
    layers += [nn.Conv1d(config.width, config.width, 3, padding=1), nn.ReLU(),
               nn.Conv1d(config.width, config.features, 3, padding=1)]  # fmt: skip
    return nn.Sequential(*layers)


def _quantizer(config: MotionVQConfig) -> nn.Module:
    if config.quantizer == "llamagen":
        return SphereQuantizer(config.codebook_size, config.code_dim, config.commit_beta, config.l2_norm)
    if config.quantizer == "ema-reset":
        return EMAResetQuantizer(config.codebook_size, config.code_dim, config.commit_beta)
    return FSQuantizer(config.fsq_levels)


class MotionVQ(nn.Module):
    """`tokenize(features (B, T, 263)) -> codes (B, T / 4)` and `detokenize(codes) -> features`, for any T that
    the frames a token divides; `forward` takes normalised features and is what training calls."""

    checkpoint_kind = "motion-vq"

    def __init__(self, config: MotionVQConfig):
        super().__init__()
        self.config = config
        self.encoder, self.decoder, self.quantize = _encoder(config), _decoder(config), _quantizer(config)
        self.register_buffer("feature_mean", torch.zeros(config.features))
        self.register_buffer("feature_std", torch.ones(config.features))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_std

    def denormalise(self, features: torch.Tensor) -> torch.Tensor:
        return features * self.feature_std + self.feature_mean

    def _check_frames(self, features: torch.Tensor) -> None:
        step = self.config.frames_per_token
        if features.ndim != 3 or features.shape[-1] != self.config.features or features.shape[1] % step:
            raise ValueError(f"features must be (B, T, {self.config.features}) with T a multiple of {step}, "
                             f"got {tuple(features.shape)}")  # fmt: skip

    def encode(self, normalised: torch.Tensor) -> Quantized:
        self._check_frames(normalised)
        return self.quantize(self.encoder(normalised.transpose(1, 2)))

    def forward(self, normalised: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        """Normalised features (B, T, 263) -> (their reconstruction, normalised; the quantizer's output)."""
        quantized = self.encode(normalised)
        return self.decoder(quantized.quantized).transpose(1, 2), quantized

    @torch.no_grad()
    def tokenize(self, features: torch.Tensor) -> torch.Tensor:
        return self.encode(self.normalise(features.float())).codes

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.min() < 0 or codes.max() >= self.config.codebook_size:
            raise ValueError(f"codes must lie in 0..{self.config.codebook_size - 1}")
        return self.denormalise(self.decoder(self.quantize.lookup(codes)).transpose(1, 2))


def load_motion_tokenizer(source: str | os.PathLike) -> MotionVQ:
    """A motion tokenizer saved by `llamagen.save`, strictly loaded, in eval mode."""
    return load_saved_model(source, MotionVQ.checkpoint_kind, lambda config: MotionVQ(MotionVQConfig(**config)))
