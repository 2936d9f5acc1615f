"""What the sub-commands share: reading --config, checking --out, the device options, reports and the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any

from PIL import Image

# Errors a user can fix (a wrong path, a bad image, a config that does not match the weights):
# reported in one line, without a traceback.
# OSError covers files that cannot be read or written (no permission, a full disk).
USER_ERRORS = (ValueError, TypeError, OSError)


def parse_config(text: str | None) -> str | dict[str, Any] | None:
    """--config: a preset name, a JSON file, or inline JSON of config fields (a JSON object)."""
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        return _config_object(text, "--config")
    path = Path(text)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"--config file {text!r} does not exist")
        return _config_object(path.read_text(errors="replace"), f"--config file {text!r}")
    return text  # a preset name; an unknown one is refused by the loader with the list of presets


def _config_object(text: str, where: str) -> dict[str, Any]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply to be a config") from None
    if not isinstance(values, dict):
        raise ValueError(f"{where} holds a JSON {type(values).__name__}, not an object of config fields")
    return values


def check_output_path(path: Path) -> None:
    """Refuse an output the image writer cannot produce, before any work is done."""
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"--out {str(path)!r}: unknown image format {path.suffix!r}; use .png")
    check_writable(path, "--out")


def check_writable(path: Path, option: str) -> None:
    """Refuse, before any work is done, a file this process could not write."""
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{option} {str(path)!r}: folder {str(folder)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder, not a file")
    try:  # a file made and removed again: what permissions, a read-only disk or a special folder allow
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise PermissionError(f"{option} {str(path)!r} cannot be written: {error.strerror}") from None


def format_of(path: Path) -> str:
    """PIL's format name for an image file's suffix (checked by `check_output_path`)."""
    return Image.registered_extensions()[path.suffix.lower()]


def command_line() -> str:
    """The command as typed, for a model card's `reproduce`."""
    return "llamagen " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def add_device_options(parser: argparse.ArgumentParser, default_dtype: str = "float32") -> None:
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present, else the CPU)")
    if default_dtype == "auto":
        choices = (
            "float32, bf16 or auto (default: auto, bf16 where the device multiplies bf16 in hardware, else float32)"
        )
    else:
        choices = "float32 (default) or bf16"
    parser.add_argument("--dtype", help=choices)


def add_settings_flags(parser: argparse.ArgumentParser, settings: type) -> None:
    """A flag for every field of a training settings dataclass (`llamagen.training.common.setting`): --NAME with
    the field's type, default and help, or the flag its metadata names. A boolean is a switch that turns its
    default around (`--fp32` sets bf16 to False, `--hard-negatives` sets hard_negatives)."""
    types = typing.get_type_hints(settings)
    for field in dataclasses.fields(settings):
        flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
        help = field.metadata.get("help", "")
        if types[field.name] is bool:
            parser.add_argument(
                flag, dest=field.name, action="store_false" if field.default else "store_true", help=help
            )
            continue
        kind = next(t for t in typing.get_args(types[field.name]) or (types[field.name],) if t is not type(None))
        shown = "none" if field.default is None else field.default
        metavar = field.metadata.get("metavar")
        parser.add_argument(flag, dest=field.name, type=kind, default=field.default, metavar=metavar,
                            help=f"{help} (default {shown})")  # fmt: skip


def settings_from_flags(settings: type, args: argparse.Namespace):
    """The settings dataclass from the flags `add_settings_flags` added."""
    return settings(**{field.name: getattr(args, field.name) for field in dataclasses.fields(settings)})


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of a training run beside its settings: resuming and the device."""
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="with --resume: let the training setting NAME (lr, batch_size, steps, seed, ...; data for the "
        "training data) differ from the run's, set to VALUE if given (JSON or text); recorded in OUT/history.jsonl. "
        "Without it, a resume with other settings than the run's is refused",
    )
    parser.add_argument("--device", help="cpu, cuda (default: CUDA when present, else the CPU)")


def apply_overrides(training, overrides: list[str], resume: bool):
    """(the training settings with each --override NAME=VALUE applied, the names overridden)."""
    if overrides and not resume:
        raise ValueError("--override changes the settings of a resumed run: it goes with --resume")
    fields = {field.name for field in dataclasses.fields(training)}
    values, names = {}, []
    for override in overrides:
        name, has_value, text = override.partition("=")
        name = name.strip().replace("-", "_")
        if name not in fields and name != "data":
            raise ValueError(f"--override {override!r}: no training setting {name!r}; they are {sorted(fields)}")
        if has_value:
            if name == "data":
                raise ValueError("--override data takes no value: give the data with its usual options")
            try:
                values[name] = json.loads(text)
            except json.JSONDecodeError:
                values[name] = text
        names.append(name)
    return dataclasses.replace(training, **values), names


def report_training(finished: bool, step: int, out: Path, ema: bool = True) -> None:
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun the first process reports
    if finished:
        print(f"finished    {step} steps; {'EMA weights' if ema else 'weights'} in {out / 'final.safetensors'}")
    else:
        print(f"stopped     at step {step}; {out / 'latest.pt'} holds it, --resume continues")
