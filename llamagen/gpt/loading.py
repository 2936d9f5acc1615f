"""`load_gpt`: a ready generator from a published `.pt`, a project `.safetensors` file or an embedded name."""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from llamagen.checkpoints import load_into, read_model_checkpoint
from llamagen.gpt.config import GPT_PRESETS, GPTConfig, find_multiple
from llamagen.gpt.model import GPT

# What the weights cannot show, for published files: the token grid of the 256x256 models (16x16 codes
# of VQ-16). The 384x384 models need block_size=576 (pass config={"block_size": 576}).
_PUBLISHED_BLOCK_SIZE = 256
_MULTIPLE_OF_CANDIDATES = (256, 128, 64, 32, 16, 8, 1)


def infer_gpt_config(
    state_dict: dict[str, torch.Tensor], source: str, overrides: dict[str, Any] | None = None
) -> GPTConfig:
    """The architecture of a published generator, read off its weight shapes, then `overrides` applied.

    The number of heads is taken from the preset of the same depth and width (GPT-B ... GPT-7B);
    `block_size` defaults to 256; pass either in `overrides` for anything else.
    """
    overrides = dict(overrides or {})

    def shape(key: str) -> torch.Size:
        if key not in state_dict:
            raise ValueError(f"cannot infer the generator config of {source}: it has no {key!r}; pass config=")
        return state_dict[key].shape

    vocab_size, dim = shape("tok_embeddings.weight")
    n_layer = _layer_count(state_dict)
    values: dict[str, Any] = {"dim": dim, "n_layer": n_layer, "vocab_size": vocab_size}
    n_head = overrides.get("n_head")
    if n_head is None:
        matching = [p for p in GPT_PRESETS.values() if p.get("n_layer") == n_layer and p.get("dim") == dim]
        if not matching:
            raise ValueError(f"{source}: no preset has {n_layer} layers of width {dim}; pass config={{'n_head': ...}}")
        n_head = matching[0]["n_head"]
    values["n_head"] = n_head
    head_dim = dim // n_head
    values["n_kv_head"] = (shape("layers.0.attention.wqkv.weight")[0] // head_dim - n_head) // 2
    hidden = shape("layers.0.feed_forward.w1.weight")[0]
    values["multiple_of"] = next(
        (m for m in _MULTIPLE_OF_CANDIDATES if find_multiple(int(8 * dim / 3), m) == hidden), None
    )
    if values["multiple_of"] is None:
        raise ValueError(f"{source}: SwiGLU width {hidden} is not 8/3 x {dim} rounded; pass ffn_dim_multiplier")
    if "cls_embedding.cap_proj.fc1.weight" in state_dict:
        values["model_type"] = "t2i"
        values["cls_token_num"], values["caption_dim"] = shape("cls_embedding.uncond_embedding")
    else:
        values["model_type"] = "c2i"
        values["cls_token_num"] = 1
        values["num_classes"] = shape("cls_embedding.embedding_table.weight")[0] - 1  # the last row: null class
    values["block_size"] = _PUBLISHED_BLOCK_SIZE
    return GPTConfig.from_dict({**values, **overrides})


def load_gpt(
    source: str | os.PathLike,
    config: GPTConfig | dict[str, Any] | str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    prefer_ema: bool = False,
) -> GPT:
    """A GPT in eval mode, strictly loaded.

    `source`: a published checkpoint (`c2i_B_256.pt` ... `c2i_3B_384.pt`, `t2i_XL_stage1_256.pt`; DDP
    `{'model': ...}` or FSDP bare state dicts), a `.safetensors` file written by `llamagen.save`, or an
    embedded model's name. `config`: a GPTConfig or a preset name (used as is), or a dict — for a
    published file, the fields that override what is read off its shapes (e.g. `{"block_size": 576}`
    for the 384x384 models); None reads everything off the file.
    """
    path, contents = read_model_checkpoint(source, GPT.checkpoint_kind, prefer_ema)
    if isinstance(config, dict) and contents.config is None:
        gpt_config = infer_gpt_config(contents.state_dict, repr(str(path)), config)
    elif config is not None:
        gpt_config = GPTConfig.coerce(config)
    elif contents.config is not None:
        gpt_config = GPTConfig.from_dict(contents.config)
    else:
        gpt_config = infer_gpt_config(contents.state_dict, repr(str(path)))
    _check_layer_count(gpt_config, contents.state_dict, path)
    return load_into(lambda: GPT(gpt_config), contents, path, device, dtype)


def _layer_count(state_dict: dict[str, torch.Tensor]) -> int:
    return len({int(m.group(1)) for key in state_dict if (m := re.match(r"^layers\.(\d+)\.", key))})


def _check_layer_count(config: GPTConfig, state_dict: dict[str, torch.Tensor], path) -> None:
    """Refuse a config with another number of layers than the file before building even a skeleton: a config
    claiming millions of layers would take minutes to build on the meta device."""
    layers = _layer_count(state_dict)
    if layers != config.n_layer:
        raise ValueError(
            f"gpt checkpoint {str(path)!r} holds {layers} layer(s), but the config asks for {config.n_layer}. "
            "Check the config (or preset) passed with the checkpoint."
        )
