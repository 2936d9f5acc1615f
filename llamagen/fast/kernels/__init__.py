"""CPU kernels for decoding and the tokenizers, written here in C++, built on first use with torch's extension
builder and loaded.

A decoding step multiplies one or two rows (guidance doubles the batch) by every weight of the model and
attends with one query over the cache; torch's kernels for so little work leave much of a step's time on
the table on the CPU. A tokenizer's norms at full resolution move whole maps through memory for a few operations
a value, which torch's ops do more than once. Six ops, on CPUs with AVX-512 (and AVX512-BF16), and
`tiles_ready()`, whether the product uses AMX's tiles:

- `torch.ops.llamagen.small_batch_linear(x, weight)`: x @ weight^T for 1 to 16 rows of x, reading the weights
  2-3 times faster than ATen's product for so few rows (small_batch_linear.cpp); in bf16 from 4 rows on AMX's
  tiles where the CPU has them (tile_linear.cpp): 16 rows cost there twice what 2 do, not five times;
- `torch.ops.llamagen.single_query_attention(q, k, v, mask)`: one query per row and head over the cached keys
  and values, read in place in their own dtype (single_query_attention.cpp);
- `torch.ops.llamagen.top_k(logits, k)`: the sampler's k largest logits of each row, by radix select (top_k.cpp);
- `torch.ops.llamagen.decode_step(tokens, weights, caches, rope, visible, position, heads, eps)`: a whole
  decoding step of the generator in one call, over the two kernels above (decode_step.cpp; `llamagen.fast`
  calls it through `one_call.py`), and `decode_window(...)` the same for a window of tokens a row (parallel
  decoding's step, `GPT.decode_window`);
- `torch.ops.llamagen.group_norm(x, groups, weight, bias, eps, silu)`: a tokenizer's GroupNorm of a channels-last
  map, and the SiLU after it, in two passes over memory where torch's ops take five (group_norm.cpp;
  `llamagen.fast.tokenizer` puts it in a loaded tokenizer's norms).

The build takes about half a minute, once per machine: the library is cached in torch's extension folder
(`TORCH_EXTENSIONS_DIR`, which the Makefile points into `.cache/`; `make setup` builds it). Where the CPU lacks
the instructions, or no C++ compiler works, nothing is built and torch's own ops serve: the same results up to
rounding, only slower.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from llamagen.devices import cpu_flags

logger = logging.getLogger(__name__)

_SOURCES = [
    Path(__file__).with_name(name)
    for name in (
        "small_batch_linear.cpp",
        "tile_linear.cpp",
        "single_query_attention.cpp",
        "top_k.cpp",
        "decode_step.cpp",
        "group_norm.cpp",
    )
]
_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
# The dtypes the kernels handle, and the values of each in one 512-bit register: small_batch_linear needs the
# inner dimension to be a multiple of it.
LANES = {torch.float32: 16, torch.bfloat16: 32}

# None until the first `load`; then whether the kernels can be called.
ready: bool | None = None
_lock = threading.Lock()


def cpu_has_instructions() -> bool:
    """Whether this CPU reports AVX-512 with its byte/word and BF16 extensions."""
    return set(_CPU_FLAGS) <= cpu_flags()


def cpu_has_tiles() -> bool:
    """Whether this CPU reports AMX's tiles and their bf16 products, which the bf16 product uses from
    `kTilesFromRows` rows of x (decoding.h, tile_linear.cpp)."""
    return {"amx_tile", "amx_bf16"} <= cpu_flags()


def load() -> bool:
    """Build (first time on this machine) and load the kernels; True when they are ready. Never raises: a CPU
    without the instructions or a failed build leaves torch's ops in use, with a warning for the latter."""
    global ready
    if ready is not None:
        return ready
    with _lock:
        if ready is None:
            ready = cpu_has_instructions() and _build_and_load()
    return ready


def _build_and_load() -> bool:
    # Importing torch's extension builder warns, on a machine without CUDA, that it found no CUDA runtime: true,
    # and of no concern to a CPU build, so it is kept out of the user's output.
    builder_log = logging.getLogger("torch.utils.cpp_extension")
    level = builder_log.level
    builder_log.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load as build_extension
    finally:
        builder_log.setLevel(level)

    try:
        build_extension(
            name="llamagen_decoding_kernels",
            sources=[str(source) for source in _SOURCES],
            extra_cflags=["-O3", *(f"-m{flag.replace('_', '')}" for flag in _CPU_FLAGS), "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
        )
    except Exception as error:  # a missing or failing compiler: decoding still works, only slower
        logger.warning("llamagen's CPU decoding kernels could not be built (%s); using torch's own ops", error)
        return False
    return True


def use_top_k(logits: torch.Tensor) -> bool:
    """Whether the top-k of (rows, vocab) logits should go to the kernel: float32 on the CPU, kernel loaded."""
    return ready is True and logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2
