"""The arms of the conditioning study: generators that differ only in how the condition enters them.

Each arm is a `GPTConfig.condition` (and, for class labels, a number of prefix tokens per class) on one base
config. Mechanisms add parameters (adaLN-zero's shared projection, cross-attention's four matrices per layer),
so each arm's feed-forward width is chosen to bring its parameter count to the base's, within
`PARAMETER_TOLERANCE`: a difference between arms is then not one of size.
"""

from __future__ import annotations

import dataclasses

import torch

from llamagen.gpt import GPT, GPTConfig

PARAMETER_TOLERANCE = 0.05

# Name -> what the arm changes in the base config. "prefix-4": four learned prefix tokens per class (a caption
# already enters as one prefix token per caption token, so that arm is for class labels only).
ARMS: dict[str, dict] = {
    "prefix": {},
    "prefix-4": {"cls_token_num": 4},
    "every-layer": {"condition": "every_layer"},
    "adaln-zero": {"condition": "adaln_zero"},
    "cross-attention": {"condition": "cross_attention"},
}
CLASS_ONLY_ARMS = ("prefix-4",)


def parameter_count(config: GPTConfig) -> int:
    """The parameters of a generator of `config`, counted without allocating its weights."""
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(config).parameters())


def arm_config(base: GPTConfig, arm: str) -> GPTConfig:
    """`base` with `arm`'s conditioning, its feed-forward width (a multiple of `multiple_of`) chosen so that its
    parameters match `base`'s, checked to be within PARAMETER_TOLERANCE."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {', '.join(ARMS)}")
    if arm in CLASS_ONLY_ARMS and base.model_type != "c2i":
        raise ValueError(f"the {arm!r} arm is for class labels: a caption already enters as one token per word")
    target = parameter_count(base)
    config = dataclasses.replace(base, **ARMS[arm])
    extra = parameter_count(config) - target
    # Each unit of SwiGLU width is three weights of `dim` in every layer.
    per_unit = 3 * base.dim * base.n_layer
    width = round((base.ffn_hidden_dim - extra / per_unit) / base.multiple_of) * base.multiple_of
    if width < base.multiple_of:
        raise ValueError(f"the {arm!r} arm adds more parameters than the feed-forward layers of {base} hold")
    # ffn_hidden_dim rounds the multiplier's width up to multiple_of: a width a little below it lands there.
    matched = dataclasses.replace(config, ffn_dim_multiplier=(width - 0.5) / int(8 * base.dim / 3))
    if abs(parameter_count(matched) - target) > PARAMETER_TOLERANCE * target:
        raise ValueError(f"the {arm!r} arm cannot be brought within 5% of the base's {target:,} parameters")
    return matched
