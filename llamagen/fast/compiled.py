"""The decoding step compiled by torch.compile, kept per model and called with as few of dynamo's checks as is
safe."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from llamagen.gpt.model import GPT

# How many compiled variants of a decoding step torch.compile may keep. It keeps them per code object, shared by
# every model: each model and number of rows (and the first position, then any) adds its own, and past torch's
# default of 8 the step silently runs eagerly (a demo serving three models at two batch sizes would hit it).
RECOMPILE_LIMIT = 64

# The compile mode on the CPU: the matrix kernels autotuned, without CUDA graphs (asking for them there only
# logs, every compilation, that they were skipped).
CPU_MODE = "max-autotune-no-cudagraphs"

# Per model: the fingerprint of its weights when its decoding step was compiled, and that step.
_compiled_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_decode_step(gpt: GPT) -> CompiledStep:
    """`gpt.decode_step` compiled by torch.compile for inference.

    On the CPU the weights are frozen into the compiled graph (constants, pre-packed for oneDNN) and the matrix
    kernels autotuned: a decoding step multiplies only a few rows by every weight, and the default kernels for so
    few rows stream the weights at well under the memory bandwidth. In fp32 the autotuner chooses only among
    inductor's own C++ matrix kernels, not MKL's: it times each product alone, its weights hot in the cache,
    where MKL can win, while a decoding step streams every weight from memory, where the C++ kernels read faster.
    Not in bf16: there the alternative is oneDNN, whose bf16 dot-product instructions the C++ kernels lack. The
    graph is also called through inductor's C++ wrapper: a step launches a few hundred small kernels, and
    launching them from Python costs about a fifth of a step of GPT-B in bf16. These, and the recompilation
    limit, are settings read whenever a graph compiles, recompilations mid-generation included, so they are
    patched around each call that may compile (`CompiledStep`) rather than set globally.
    Frozen weights would go stale if the model's weights changed: then everything compiled is dropped and the
    step compiles again.
    """
    fingerprint = _weights_fingerprint(gpt)
    known = _compiled_steps.get(gpt)
    if known is not None and known[0] == fingerprint:
        return known[1]
    if known is not None:
        torch._dynamo.reset()  # the frozen constants are the old weights
    on_cpu = gpt.device.type == "cpu"
    # The step's elementwise kernels work on a few thousand values: inductor would still split each between the
    # threads, and starting and joining them costs more than the work (about 0.2 ms a step for GPT-B).
    settings = {"freezing": True, "cpp_wrapper": True, "cpp.min_chunk_size": 1 << 16} if on_cpu else {}
    if on_cpu and gpt.dtype == torch.float32:
        settings["max_autotune_gemm_backends"] = "CPP"
    compiled = torch.compile(gpt.decode_step, mode=CPU_MODE if on_cpu else None)
    step = CompiledStep(compiled, {"recompile_limit": RECOMPILE_LIMIT}, settings)
    _compiled_steps[gpt] = (fingerprint, step)
    return step


def _weights_fingerprint(gpt: GPT) -> tuple:
    """Changes whenever a parameter is replaced or modified in place (its version counter moves)."""
    return tuple((p.data_ptr(), p._version) for p in gpt.parameters())


class CompiledStep:
    """A compiled decoding step, called as `step(tokens, position)`; `steady()` gives the same step for one
    generation, which skips most of dynamo's checks once nothing but the position changes.

    A plain call patches the settings a compilation reads and runs all of dynamo's guards: some four thousand
    checks of the model's modules, tensors and settings, 0.2-0.3 ms for GPT-B on a CPU, about 3% of a bf16 step at
    batch 1 (and 45 us more to patch the settings).
    """

    def __init__(self, compiled: Callable, dynamo_settings: dict, inductor_settings: dict) -> None:
        self._compiled = compiled
        self._dynamo_settings = dynamo_settings
        self._inductor_settings = inductor_settings

    def __call__(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        from torch._dynamo import config as dynamo_config
        from torch._inductor import config as inductor_config  # imported on first use: it is large

        with dynamo_config.patch(self._dynamo_settings), inductor_config.patch(self._inductor_settings):
            return self._compiled(tokens, position)

    def steady(self) -> SteadySteps:
        return SteadySteps(self)


class SteadySteps:
    """A generation's calls of a `CompiledStep`. Once the two calls before had as many rows as this one, they
    ran with the same model, rows and cache and compiled (or chose, by every guard) the graphs for the first
    position and for any other: only the position moves now. Such a call runs only the guards that tell the
    compiled graphs apart (torch's `skip_guard_eval_unsafe`, safe only where nothing would recompile) and patches
    nothing, since nothing compiles."""

    def __init__(self, step: CompiledStep) -> None:
        self._step = step
        self._rows_before: tuple[int | None, int | None] = (None, None)

    def __call__(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        rows = tokens.shape[0]
        steady = self._rows_before == (rows, rows)
        self._rows_before = (self._rows_before[1], rows)
        if not steady:
            return self._step(tokens, position)
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return self._step._compiled(tokens, position)
