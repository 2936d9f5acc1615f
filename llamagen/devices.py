"""Where models run and in what precision: explicit arguments, CUDA when present, the CPU always."""

from __future__ import annotations

import torch

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None means CUDA when it is available, else the CPU. Asking for CUDA without one is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but this machine has no usable CUDA GPU")
    return device


def resolve_dtype(dtype: str | torch.dtype | None = None) -> torch.dtype | None:
    """A torch dtype from a dtype or its usual names ('bf16', 'float32', ...); None keeps the weights' own."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPE_NAMES)}")
    return _DTYPE_NAMES[dtype]
