"""CPU kernels written here in C++, built on first use with torch's extension builder and then loaded.

One so far: `torch.ops.llamagen.small_batch_linear(x, weight)`, x @ weight^T for 1 to 4 rows of x, float32 or
bf16, on CPUs with AVX-512 (and AVX512-BF16). Decoding multiplies that few rows by every weight of the model,
and this kernel reads the weights 2-3 times faster than ATen's for so few rows (see the .cpp file).

The build takes about half a minute, once per machine: the library is cached in torch's extension folder
(`TORCH_EXTENSIONS_DIR`, which the Makefile points into `.cache/`; `make setup` builds it). Where the CPU lacks
the instructions, or no C++ compiler works, nothing is built and `nn.Linear`'s own product serves: the same
results up to rounding, only slower.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("small_batch_linear.cpp")
_CPU_FLAGS = ("avx512f", "avx512bw", "avx512_bf16")
MAX_ROWS = 4  # the kernel's limit: batch 1 or 2 with guidance
# Values in one 512-bit register: the kernel needs the inner dimension to be a multiple of it.
LANES = {torch.float32: 16, torch.bfloat16: 32}

# None until the first `load_small_batch_linear`; then whether the kernel can be called. The layers read this
# flag (not the loader) so that torch.compile sees a plain global.
small_batch_linear_ready: bool | None = None
_lock = threading.Lock()


def cpu_has_instructions() -> bool:
    """Whether this CPU reports AVX-512 with its byte/word and BF16 extensions (Linux's /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return all(flag in flags for flag in _CPU_FLAGS)


def load_small_batch_linear() -> bool:
    """Build (first time on this machine) and load the kernel; True when it is ready. Never raises: a CPU
    without the instructions or a failed build leaves the ordinary product in use, with a warning for the
    latter."""
    global small_batch_linear_ready
    if small_batch_linear_ready is not None:
        return small_batch_linear_ready
    with _lock:
        if small_batch_linear_ready is None:
            small_batch_linear_ready = cpu_has_instructions() and _build_and_load()
    return small_batch_linear_ready


def _build_and_load() -> bool:
    from torch.utils.cpp_extension import load

    try:
        load(
            name="llamagen_small_batch_linear",
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", *(f"-m{flag.replace('_', '')}" for flag in _CPU_FLAGS), "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except Exception as error:  # a missing or failing compiler: decoding still works, only slower
        logger.warning("llamagen's CPU decoding kernel could not be built (%s); using torch's own product", error)
        return False
    # What torch.compile needs to trace a call: the shape and dtype of the result.
    torch.library.register_fake("llamagen::small_batch_linear")(
        lambda x, weight: x.new_empty((*x.shape[:-1], weight.shape[0]))
    )
    return True


def use_small_batch_linear(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether x @ weight^T should go to the kernel: few rows on the CPU, nothing to differentiate, a dtype
    and an inner dimension it handles, and the kernel loaded."""
    return (
        small_batch_linear_ready is True
        and x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in LANES
        and x.shape[-1] % LANES[x.dtype] == 0
        and 0 < x.numel() <= MAX_ROWS * x.shape[-1]
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )
