"""Hyper-parameters of the Llama image generator and its presets.

Field names follow the original LlamaGen `ModelArgs` (autoregressive/models/gpt.py), so a user's
flags and the published checkpoints carry over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llamagen.configs import ModelConfig

MODEL_TYPES = ("c2i", "t2i")
# How the condition enters the decoder. "prefix": as the first tokens of the sequence (the paper's, Sec. 2.2; the
# published models'). "every_layer": as the prefix, and its mean added again to every position at every layer's
# input. "adaln_zero": a learned start token instead of the prefix; the condition's mean scales, shifts and
# gates each block's norms and branches, the gates starting at zero (adaLN-zero, DiT, Peebles & Xie 2023,
# Sec. 3.2), from one projection shared by the blocks plus a learned offset per block (PixArt-alpha's
# adaLN-single, Chen et al. 2023, Sec. 2.3): DiT's projection in every block would add 6 x dim^2 per layer,
# half again a small model's parameters. "cross_attention": a learned start token; each block attends from the
# image tokens to the condition's tokens after its self-attention. A class label gives `cls_token_num`
# condition tokens, a caption one per caption token.
CONDITIONINGS = ("prefix", "every_layer", "adaln_zero", "cross_attention")


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


@dataclass
class GPTConfig(ModelConfig):
    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int | None = None  # None: as many key/value heads as query heads (no grouping)
    multiple_of: int = 256  # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    caption_dim: int = 2048
    class_dropout_prob: float = 0.1
    model_type: str = "c2i"
    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256
    condition: str = "prefix"  # one of CONDITIONINGS

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def prefix_holds_condition(self) -> bool:
        """Whether the sequence starts with the condition's tokens (else with one learned start token)."""
        return self.condition in ("prefix", "every_layer")

    @property
    def prefix_length(self) -> int:
        """Positions before the first image token: the condition's tokens, or one learned start token where the
        condition enters the layers instead."""
        return self.cls_token_num if self.prefix_holds_condition else 1

    @property
    def grid_size(self) -> int:
        """Tokens per side of the square token grid."""
        return math.isqrt(self.block_size)

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU width: 2/3 of 4*dim (same parameter count as a 4*dim MLP), rounded up to `multiple_of`."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)

    def validate(self) -> None:
        self.require_positive_ints(
            "dim", "n_layer", "n_head", "n_kv_head", "multiple_of", "vocab_size", "cls_token_num", "block_size"
        )
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"GPTConfig.model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.condition not in CONDITIONINGS:
            raise ValueError(f"GPTConfig.condition must be one of {CONDITIONINGS}, got {self.condition!r}")
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim {self.head_dim} must be a multiple of 4 for 2-D RoPE (two axes of pairs)")
        if self.grid_size**2 != self.block_size:
            raise ValueError(f"block_size {self.block_size} is not a square number of tokens (a square token grid)")
        if self.model_type == "c2i" and self.num_classes < 1:
            raise ValueError(f"num_classes must be positive for a class-conditional model, got {self.num_classes}")
        if self.model_type == "t2i" and self.caption_dim < 1:
            raise ValueError(f"caption_dim must be positive for a text-conditional model, got {self.caption_dim}")
        self.require_probabilities(
            "token_dropout_p",
            "attn_dropout_p",
            "resid_dropout_p",
            "ffn_dropout_p",
            "drop_path_rate",
            "class_dropout_prob",
        )


# Table 1 of the paper (n_layer, dim, n_head), plus the 1B/3B/7B sizes of the original's code,
# and small models that train on two CPU cores. Presets are data: overrides of the defaults.
GPT_PRESETS: dict[str, dict[str, Any]] = {
    "GPT-B": {"n_layer": 12, "n_head": 12, "dim": 768},  # 111M
    "GPT-L": {"n_layer": 24, "n_head": 16, "dim": 1024},  # 343M
    "GPT-XL": {"n_layer": 36, "n_head": 20, "dim": 1280},  # 775M
    "GPT-XXL": {"n_layer": 48, "n_head": 24, "dim": 1536},  # 1.4B
    "GPT-XXXL": {"n_layer": 48, "n_head": 40, "dim": 2560},  # 3.9B
    "GPT-1B": {"n_layer": 22, "n_head": 32, "dim": 2048},
    "GPT-3B": {"n_layer": 24, "n_head": 32, "dim": 3200},
    "GPT-7B": {"n_layer": 32, "n_head": 32, "dim": 4096},
    # CPU sizes: an 8x8 grid of a downsample-8 tokenizer's codes on 64x64 images.
    "GPT-S": {"n_layer": 8, "n_head": 8, "dim": 256, "block_size": 64, "multiple_of": 64},
    "GPT-XS": {"n_layer": 4, "n_head": 4, "dim": 128, "block_size": 64, "multiple_of": 32},
}


GPTConfig.PRESETS = GPT_PRESETS
GPTConfig.PRESET_KIND = "generator"


def gpt_preset(name: str, **overrides: Any) -> GPTConfig:
    """The config of a named preset ('GPT-B' ... 'GPT-7B', 'GPT-S', 'GPT-XS'), with field overrides."""
    return GPTConfig.preset(name, **overrides)
