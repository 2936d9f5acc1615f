"""`load_tokenizer`: a ready VQModel from a published `.pt`, a project `.safetensors` file or an embedded name."""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from llamagen.checkpoints import load_into, read_model_checkpoint
from llamagen.devices import multiplies_bf16, resolve_device
from llamagen.fast.tokenizer import use_cpu_kernels
from llamagen.tokenizer.config import VQConfig
from llamagen.tokenizer.model import VQModel


def infer_vq_config(state_dict: dict[str, torch.Tensor], source: str) -> VQConfig:
    """The architecture of a published tokenizer, read off its weight shapes.

    Everything but `codebook_l2_norm` shows in the shapes; it is taken as True, as in every published
    LlamaGen tokenizer (VQ-16 and VQ-8). Pass `config` explicitly for anything else.
    """

    def shape(key: str) -> torch.Size:
        if key not in state_dict:
            raise ValueError(f"cannot infer the tokenizer config of {source}: it has no {key!r}; pass config=")
        return state_dict[key].shape

    def level_indices(prefix: str) -> list[int]:
        pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
        return sorted({int(m.group(1)) for key in state_dict if (m := pattern.match(key))})

    codebook_size, embed_dim = shape("quantize.embedding.weight")
    ch = shape("encoder.conv_in.weight")[0]
    levels = level_indices("encoder.conv_blocks")
    encoder_mult = [shape(f"encoder.conv_blocks.{i}.res.0.conv1.weight")[0] // ch for i in levels]
    decoder_mult = [shape(f"decoder.conv_blocks.{i}.res.0.conv1.weight")[0] // ch for i in levels][::-1]
    return VQConfig(
        codebook_size=codebook_size,
        codebook_embed_dim=embed_dim,
        encoder_ch_mult=encoder_mult,
        decoder_ch_mult=decoder_mult,
        z_channels=shape("encoder.conv_out.weight")[0],
        ch=ch,
        num_res_blocks=len(level_indices("encoder.conv_blocks.0.res")),
    )


def load_tokenizer(
    source: str | os.PathLike,
    config: VQConfig | dict[str, Any] | str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    prefer_ema: bool = False,
) -> VQModel:
    """A VQModel in eval mode, strictly loaded.

    `source`: a published checkpoint (`vq_ds16_c2i.pt`, `vq_ds8_c2i.pt`, ...), a `.safetensors` file
    written by `llamagen.save`, or an embedded model's name. `config` (a VQConfig, a dict of its fields
    or a preset name) is needed only where the file carries none and its shapes are not enough.
    `device` defaults to CUDA when available, else the CPU; `dtype` ('bf16', torch.float32, ...)
    defaults to float32; "auto" is bf16 where the device multiplies bf16 in hardware (results equal to
    float32's within bf16 rounding), else float32. `prefer_ema` takes the `ema` weights of a training
    checkpoint. On a CPU the convolutions' weights are kept channels-last, the layout oneDNN computes in:
    every activation then stays in it, with no reordering around each convolution; and the GroupNorms, with the
    SiLU after them, run on llamagen's kernel where it is built (`llamagen.fast.tokenizer`).
    """
    path, contents = read_model_checkpoint(source, VQModel.checkpoint_kind, prefer_ema)
    if config is not None:
        vq_config = VQConfig.coerce(config)
    elif contents.config is not None:
        vq_config = VQConfig.from_dict(contents.config)
    else:
        vq_config = infer_vq_config(contents.state_dict, repr(str(path)))
    if dtype == "auto":
        dtype = torch.bfloat16 if multiplies_bf16(resolve_device(device)) else torch.float32
    model = load_into(lambda: VQModel(vq_config), contents, path, device, dtype)
    if model.device.type != "cpu":
        return model
    use_cpu_kernels(model)
    return model.to(memory_format=torch.channels_last)
