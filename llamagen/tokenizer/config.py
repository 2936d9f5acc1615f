"""Hyper-parameters of the VQ image tokenizer and its presets.

Field names follow the original LlamaGen `ModelArgs` (tokenizer/tokenizer_image/vq_model.py),
so the flags a user knows and the published checkpoints carry over unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llamagen.configs import ModelConfig

GROUP_NORM_GROUPS = 32  # the original normalises with GroupNorm(32 groups) everywhere


@dataclass
class VQConfig(ModelConfig):
    codebook_size: int = 16384
    # Sec. 3.1 / Table 2: an 8-dim, l2-normalised codebook keeps a 16384-entry codebook almost
    # fully used (97% usage), where 256-dim entries without normalisation collapse.
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    z_channels: int = 256
    dropout_p: float = 0.0
    ch: int = 128
    num_res_blocks: int = 2

    def __post_init__(self) -> None:
        self.encoder_ch_mult = list(self.encoder_ch_mult)
        self.decoder_ch_mult = list(self.decoder_ch_mult)
        self.validate()

    @property
    def downsample_factor(self) -> int:
        """Pixels per token side: one halving per encoder level but the last."""
        return 2 ** (len(self.encoder_ch_mult) - 1)

    def validate(self) -> None:
        """Refuse configurations that cannot build or cannot work, before any weights exist."""
        self.require_positive_ints("codebook_size", "codebook_embed_dim", "z_channels", "ch", "num_res_blocks")
        if not self.encoder_ch_mult or not self.decoder_ch_mult:
            raise ValueError("VQConfig.encoder_ch_mult and decoder_ch_mult must not be empty")
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ValueError(
                f"encoder_ch_mult {self.encoder_ch_mult} and decoder_ch_mult {self.decoder_ch_mult} "
                "must have the same length (the decoder undoes the encoder's downsampling)"
            )
        for mult in (*self.encoder_ch_mult, *self.decoder_ch_mult):
            channels = self.ch * mult
            if mult < 1 or channels % GROUP_NORM_GROUPS:
                raise ValueError(
                    f"ch={self.ch} x ch_mult {mult} = {channels} channels, which GroupNorm's "
                    f"{GROUP_NORM_GROUPS} groups do not divide"
                )
        self.require_probabilities("dropout_p")


# The published tokenizers (Table 2 of the paper; vq_ds16_c2i.pt / vq_ds16_t2i.pt and vq_ds8_c2i.pt)
# and small ones that train on two CPU cores. Presets are data: a dict of overrides per name.
VQ_PRESETS: dict[str, dict[str, Any]] = {
    "VQ-16": {},
    "VQ-8": {"encoder_ch_mult": [1, 2, 2, 4], "decoder_ch_mult": [1, 2, 2, 4]},
    # Downsample 8 with the published 16384 x 8 codebook, at a width a CPU can train.
    "VQ-8-small": {
        "ch": 64,
        "encoder_ch_mult": [1, 1, 2, 2],
        "decoder_ch_mult": [1, 1, 2, 2],
        "z_channels": 128,
        "num_res_blocks": 1,
    },
    # Downsample 8 at a quarter of VQ-8-small's cost, 512 codes: the embedded tokenizer of 64x64 shapes.
    "VQ-8-tiny": {
        "codebook_size": 512,
        "ch": 32,
        "encoder_ch_mult": [1, 2, 2, 4],
        "decoder_ch_mult": [1, 2, 2, 4],
        "z_channels": 64,
        "num_res_blocks": 1,
    },
    # Downsample 4, 512 codes: the size of the reference test vectors.
    "VQ-4-tiny": {
        "codebook_size": 512,
        "ch": 32,
        "encoder_ch_mult": [1, 2, 2],
        "decoder_ch_mult": [1, 2, 2],
        "z_channels": 64,
        "num_res_blocks": 1,
    },
}


VQConfig.PRESETS = VQ_PRESETS
VQConfig.PRESET_KIND = "tokenizer"


def vq_preset(name: str, **overrides: Any) -> VQConfig:
    """The config of a named preset ('VQ-16', 'VQ-8', 'VQ-8-small', 'VQ-8-tiny', 'VQ-4-tiny'), with field overrides."""
    return VQConfig.preset(name, **overrides)
