"""Reading and writing checkpoints, safely and strictly.

Published LlamaGen checkpoints are `torch.save` pickles holding `{'model': state_dict, ...}` (DDP
training), `{'ema': ...}`, or the bare state dict (FSDP). They are read with
`torch.load(weights_only=True)`, so a file that would run code when unpickled is refused before any
of it runs. The project's own checkpoints are safetensors files that carry their config as metadata.

Loading is strict: a wrong config must fail loudly, naming every missing, unexpected and mis-shaped
key, instead of silently leaving weights random (the original loads with `strict=False`).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from llamagen.devices import resolve_device, resolve_dtype
from llamagen.files import write_atomically

FORMAT_NAME = "llamagen"
ASSETS_DIR = Path(__file__).parent / "assets"


def embedded_models() -> dict[str, Path]:
    """The models the project trains and ships: name -> weights, for each `NAME.safetensors` in
    llamagen/assets that has its model card `NAME.json` beside it."""
    return {path.stem: path for path in sorted(ASSETS_DIR.glob("*.safetensors")) if path.with_suffix(".json").is_file()}


def _card_beside(weights: Path) -> dict:
    return json.loads(weights.with_suffix(".json").read_text())


def embedded_card(name: str) -> dict:
    """The model card shipped beside the embedded model `name`."""
    return _card_beside(embedded_models()[name])


def embedded_of_kind(kind: str) -> list[str]:
    """The names of the embedded models whose card says `kind` ("vq", "gpt", "clip", "judge")."""
    return [name for name, weights in embedded_models().items() if _card_beside(weights).get("kind") == kind]


# Entries the original stores that are derived from the config or are running statistics, not weights:
# they may be absent from a file (the model keeps its own) or present without a place (they are dropped).
_DERIVED_KEY_PATTERNS = (
    re.compile(r"(^|\.)freqs_cis$"),  # RoPE table, recomputed from the config
    re.compile(r"(^|\.)causal_mask$"),
    re.compile(r"(^|\.)kv_cache\.(k_cache|v_cache)$"),  # KV cache buffers of the original's GPT
    re.compile(r"^quantize\.codebook_used$"),  # the tokenizer's usage window, a training statistic
)
# Where the original's training scripts put the weights, in the order they are looked for.
_STATE_DICT_KEYS = ("model", "module", "state_dict")
# Prefixes DDP and torch.compile put on every key when the wrapped module is saved.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_NAMED_KEYS = 12


@dataclass
class CheckpointContents:
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None  # None for published files, which carry no config
    kind: str | None  # 'vq', 'gpt' or 'judge' for the project's own files


def resolve_source(source: str | os.PathLike) -> Path:
    """A checkpoint path from a path or the name of an embedded model."""
    path = Path(source)
    if path.is_file():
        return path
    embedded = embedded_models()
    if str(source) in embedded:
        return embedded[str(source)]
    if path.exists():
        raise ValueError(f"checkpoint {str(source)!r} is not a file")
    names = ", ".join(embedded) or "none yet"
    raise FileNotFoundError(f"no checkpoint file or embedded model named {str(source)!r} (embedded models: {names})")


def read_checkpoint(path: str | os.PathLike, prefer_ema: bool = False) -> CheckpointContents:
    """Tensors and config of a `.safetensors` file of the project's or a published `.pt` pickle, told apart by
    their contents, not their names (a safetensors file renamed `.pt` is still read as one)."""
    path = Path(path)
    _refuse_empty(path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return _read_safetensors(path)
    return CheckpointContents(_extract_state_dict(_safe_torch_load(path), path, prefer_ema), None, None)


def read_model_checkpoint(
    source: str | os.PathLike, kind: str, prefer_ema: bool = False
) -> tuple[Path, CheckpointContents]:
    """Resolve `source` and read it, refusing a project file of another kind ('vq', 'gpt', 'judge')."""
    path = resolve_source(source)
    contents = read_checkpoint(path, prefer_ema=prefer_ema)
    if contents.kind not in (None, kind):
        wanted = {"vq": "tokenizer", "gpt": "generator", "judge": "judge", "clip": "CLIP text encoder",
                  "motion-vq": "motion tokenizer", "motion-judge": "motion judge",
                  "motion-clip": "motion CLIP"}[kind]  # fmt: skip
        raise ValueError(f"{str(path)!r} is a {contents.kind!r} checkpoint, not a {wanted}")
    return path, contents


def load_into(build: Callable[[], nn.Module], contents: CheckpointContents, path: Path, device, dtype) -> nn.Module:
    """The model `build()` makes, strictly loaded, on `device` in `dtype` (default float32), in eval mode.

    The weights are checked first against a model built on the meta device, which allocates nothing: a
    config that does not match them (a file claiming thousands of layers) is refused before any memory is
    spent on it. Weights that are NaN or infinite are refused too: they would only make NaN images.
    """
    with torch.device("meta"):
        skeleton = build()
    source = f"{skeleton.checkpoint_kind} checkpoint {str(path)!r}"
    check_state_dict_matches(skeleton, contents.state_dict, source)
    _check_finite(contents.state_dict, source)
    model = build()
    _load_matching(model, contents.state_dict)
    return model.to(device=resolve_device(device), dtype=resolve_dtype(dtype) or torch.float32).eval()


def _refuse_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {str(path)!r} is an empty file")


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file opens with its header's length (8 bytes, little-endian) and the header's `{`."""
    with path.open("rb") as file:
        start = file.read(9)
    return len(start) == 9 and start[8:9] == b"{" and int.from_bytes(start[:8], "little") < path.stat().st_size


def _check_finite(state_dict: dict[str, torch.Tensor], source: str) -> None:
    bad = [key for key, tensor in state_dict.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if bad:
        raise ValueError(f"{source} holds NaN or infinite weights: {_describe('tensor', bad)}")


def _read_safetensors(path: Path) -> CheckpointContents:
    def read(file) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
        tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (safe_open is no dict)
        return file.metadata() or {}, tensors

    metadata, tensors = _open_safetensors(path, read)
    config = None
    if "config" in metadata:
        try:
            config = json.loads(metadata["config"])
        except json.JSONDecodeError as error:
            raise ValueError(f"checkpoint {str(path)!r}: its metadata's config is not valid JSON ({error})") from None
        if not isinstance(config, dict):
            raise ValueError(f"checkpoint {str(path)!r}: the config in its metadata is a {type(config).__name__}, "
                             "not an object of config fields")  # fmt: skip
    return CheckpointContents(tensors, config, metadata.get("kind"))


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file (its header's strings), without reading its tensors."""
    return _open_safetensors(path, lambda file: file.metadata() or {})


def _open_safetensors(path: Path, read: Callable) -> Any:
    """`read(file)` of the opened safetensors file, with a truncated or garbage file refused in one line."""
    _refuse_empty(path)
    try:
        with safe_open(path, framework="pt") as file:
            return read(file)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"checkpoint {str(path)!r} is not a readable safetensors file: {error}") from None


def _safe_torch_load(path: Path) -> Any:
    # argparse.Namespace is allowed: the original's training scripts save their `args` beside the weights.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"refused to load {str(path)!r}: it holds Python objects beyond tensors and plain data, which would "
            f"run code when unpickled. Published LlamaGen checkpoints hold only weights. ({_unpickler_reason(error)})"
        ) from None
    except Exception as error:  # the unpickler fails on garbage with any of several exception types
        raise ValueError(f"checkpoint {str(path)!r} is not a readable PyTorch file: {first_line(error)}") from error


def _unpickler_reason(error: Exception) -> str:
    """What torch's weights-only unpickler found, without its advice to load the file unsafely."""
    for line in str(error).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip()
    return "objects the weights-only unpickler does not allow"


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _extract_state_dict(obj: Any, path: Path, prefer_ema: bool) -> dict[str, torch.Tensor]:
    """The state dict from any layout the original wrote: bare (FSDP), {'model'}, {'ema'}, {'module'}, ..."""
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    if prefer_ema and "ema" not in obj:
        raise ValueError(f"EMA weights were asked for, but {str(path)!r} has no 'ema' entry (keys: {sorted(obj)})")
    if not _is_state_dict(obj):
        candidates = ("ema", *_STATE_DICT_KEYS) if prefer_ema else (*_STATE_DICT_KEYS, "ema")
        found = next((key for key in candidates if key in obj and _is_state_dict(obj[key])), None)
        if found is None:
            raise ValueError(
                f"checkpoint {str(path)!r} has no state dict under {list(candidates)}; its entries: {sorted(obj)[:20]}"
            )
        obj = obj[found]
    for prefix in _WRAPPER_PREFIXES:
        if obj and all(key.startswith(prefix) for key in obj):
            obj = {key[len(prefix) :]: value for key, value in obj.items()}
    return obj


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _is_derived(key: str) -> bool:
    return any(pattern.search(key) for pattern in _DERIVED_KEY_PATTERNS)


_CONFIG_HINT = "Check the config (or preset) passed with the checkpoint."


def check_state_dict_matches(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                             hint: str = _CONFIG_HINT) -> None:  # fmt: skip
    """Raise naming each key of `state_dict` that is missing, unexpected or mis-shaped for `model` (which may
    live on the meta device: only names and shapes are compared)."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state_dict and not _is_derived(k))
    unexpected = sorted(k for k in state_dict if k not in expected and not _is_derived(k))
    misshaped = sorted(
        f"{k}: file {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or misshaped:
        problems = [
            _describe(label, keys)
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if keys
        ]
        raise ValueError(f"{source} does not match the model's configuration: " + "; ".join(problems) + f". {hint}")


def load_state_dict_strictly(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, hint: str = _CONFIG_HINT
) -> None:
    """Load `state_dict` into `model`, or raise naming each missing, unexpected and mis-shaped key."""
    check_state_dict_matches(model, state_dict, source, hint)
    _load_matching(model, state_dict)


def _load_matching(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a state dict already checked against the model's keys and shapes."""
    # Derived entries the file lacks keep the model's own values; those it has without a place are dropped.
    complete = {k: state_dict.get(k, v) for k, v in model.state_dict().items()}
    model.load_state_dict(complete, strict=True)


def _describe(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED_KEYS])
    more = f" and {len(keys) - _MAX_NAMED_KEYS} more" if len(keys) > _MAX_NAMED_KEYS else ""
    return f"{len(keys)} {label} key(s): {shown}{more}"


def save(
    model: nn.Module,
    path: str | os.PathLike,
    weights_dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a model's weights and config to a safetensors file, atomically (temporary file, then rename).

    The model is one of the project's (it has `checkpoint_kind` and a `config` with `to_dict()`), so the file
    alone rebuilds it: `load_tokenizer(path)` / `load_gpt(path)` need no config.

    `weights_dtype` (e.g. torch.bfloat16 for shipped assets) converts floating-point parameters only;
    buffers keep their dtype.
    """
    parameters = {name for name, _ in model.named_parameters()}
    tensors = {}
    for name, tensor in model.state_dict().items():
        if weights_dtype is not None and name in parameters and tensor.is_floating_point():
            tensor = tensor.to(weights_dtype)
        tensors[name] = tensor.detach().cpu().contiguous()
    header = {
        "format": FORMAT_NAME,
        "kind": model.checkpoint_kind,
        "config": json.dumps(model.config.to_dict()),
        **(metadata or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=header))
    return path
