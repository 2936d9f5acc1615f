"""Caption encoders: an open_clip text tower (the project's small CLIPs, or a local open_clip checkpoint), and
FLAN-T5 for the published text-to-image checkpoints."""

from __future__ import annotations

import os

import torch

from llamagen.text.clip import ClipConfig, ClipTextEncoder, TextEncoding
from llamagen.text.t5 import T5_PREFIX, T5TextEncoder  # transformers is imported only when one is built

OPEN_CLIP_PREFIX = "open_clip:"

__all__ = ["ClipConfig", "ClipTextEncoder", "T5TextEncoder", "TextEncoding", "load_text_encoder"]


def load_text_encoder(source: str | os.PathLike, device: str | torch.device | None = None):
    """A text encoder in eval mode, strictly loaded.

    `source`: an embedded CLIP's name ('shapes-clip'), a `.safetensors` file written by `llamagen train clip`,
    or `open_clip:ARCHITECTURE:PATH` for a local open_clip checkpoint of a real model (for example
    `open_clip:ViT-B-32:/models/open_clip_pytorch_model.bin`): nothing is downloaded.
    """
    from llamagen.checkpoints import first_line, load_into, read_model_checkpoint
    from llamagen.devices import resolve_device

    text = str(source)
    if text.startswith(T5_PREFIX):
        return T5TextEncoder(text.removeprefix(T5_PREFIX)).to(resolve_device(device)).requires_grad_(False)
    if text.startswith(OPEN_CLIP_PREFIX):
        import open_clip

        architecture, _, path = text.removeprefix(OPEN_CLIP_PREFIX).partition(":")
        if architecture not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {architecture!r} in {text!r}")
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(f"{text!r}: no checkpoint file at {path!r} (give OPEN_CLIP:ARCHITECTURE:PATH)")
        try:
            model = open_clip.create_model(architecture, pretrained=path, device=resolve_device(device))
        except Exception as error:  # open_clip reads the file with torch.load and fails in many ways on a bad one
            reason = first_line(error)
            raise ValueError(f"{text!r}: {path!r} is not a readable {architecture} checkpoint ({reason})") from None
        return ClipTextEncoder(model, None, text).eval().requires_grad_(False)
    path, contents = read_model_checkpoint(source, kind=ClipTextEncoder.checkpoint_kind)
    if contents.config is None:
        raise ValueError(
            f"{str(path)!r} carries no CLIP config: give open_clip checkpoints as {OPEN_CLIP_PREFIX}ARCH:PATH"
        )
    clip_config = ClipConfig.from_dict(contents.config)
    encoder = load_into(lambda: ClipTextEncoder.from_config(clip_config, text), contents, path, device, None)
    return encoder.requires_grad_(False)
