"""What the sub-commands share: reading --config, checking --out, the device options, reports and the command line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from PIL import Image

# Errors a user can fix (a wrong path, a bad image, a config that does not match the weights):
# reported in one line, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, TypeError)


def parse_config(text: str | None) -> str | dict[str, Any] | None:
    """--config: a preset name, a JSON file, or inline JSON of config fields."""
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--config is not valid JSON: {error}") from error
    path = Path(text)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"--config file {text!r} does not exist")
        return json.loads(path.read_text())
    return text  # a preset name; an unknown one is refused by the loader with the list of presets


def check_output_path(path: Path) -> None:
    """Refuse an output the image writer cannot produce, before any work is done."""
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"--out {str(path)!r}: unknown image format {path.suffix!r}; use .png")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--out {str(path)!r}: folder {str(path.parent)!r} does not exist")


def format_of(path: Path) -> str:
    """PIL's format name for an image file's suffix (checked by `check_output_path`)."""
    return Image.registered_extensions()[path.suffix.lower()]


def command_line() -> str:
    """The command as typed, for a model card's `reproduce`."""
    return "llamagen " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present, else the CPU)")
    parser.add_argument("--dtype", help="float32 (default) or bf16")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every training loop shares: precision, seed, logging, checkpoints, resuming, device."""
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--device", help="cpu, cuda (default: CUDA when present, else the CPU)")


def report_training(finished: bool, step: int, out: Path) -> None:
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun the first process reports
    if finished:
        print(f"finished    {step} steps; EMA weights in {out / 'final.safetensors'}")
    else:
        print(f"stopped     at step {step}; {out / 'latest.pt'} holds it, --resume continues")
