"""Decoding steps replayed from CUDA graphs: the GPU's counterpart of the CPU's whole step in one call.

On a GPU a decoding step of GPT-B at batch 1 is some five hundred small kernels, each launched from Python through
torch's dispatcher, and the launches, not the GPU, set the pace: reading its weights takes an H200 under 0.1 ms.
A CUDA graph records the kernels of one step once and replays them all with one launch. It replays fixed
addresses and shapes: the model's step has fixed shapes (it attends over the whole cache, masked), the position
is a tensor on the device that each replay fills, the tokens are copied into a tensor the graph reads, and the
caption's visible keys are the model's own, which every prefill writes in place.

A model's graphs are recorded at the first step of each number of rows (guidance that ends halves them;
parallel decoding's windows, each window size), with or without a caption mask, and kept for later generations
while every tensor they read (weights, caches, RoPE table) is where it was: recording waits for the device and
empties torch's memory caches first (and collects Python's garbage, in older torch or with
`force_cudagraph_gc`), too much to pay every generation. The first step
of each also runs once outside the graph, so that lazy initialisation (cuBLAS's handles and workspaces) does not
happen while recording.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable

import torch

from llamagen.fast.compiled import RECOMPILE_LIMIT
from llamagen.gpt.model import GPT


def serves(gpt: GPT) -> bool:
    """Whether `gpt`'s decoding steps can be replayed from CUDA graphs: on a GPU, nothing to differentiate, and no
    dropout drawn in a step (`GPT.drops_out_in_a_step`: a graph would replay one draw of it)."""
    return gpt.device.type == "cuda" and not torch.is_grad_enabled() and not gpt.drops_out_in_a_step


def graphed_decode_steps(gpt: GPT, compile: bool = False) -> GraphedDecodeSteps:
    """`gpt`'s recorded steps (with `compile`, of its step compiled by torch.compile), recorded afresh when a tensor
    they read has moved (a new cache, weights replaced, the model moved)."""
    addresses = _addresses(gpt)
    per_model = _recorded.setdefault(gpt, {})
    if compile not in per_model or per_model[compile].addresses != addresses:
        per_model[compile] = GraphedDecodeSteps(gpt, addresses, compile)
    return per_model[compile]


class GraphedDecodeSteps:
    """`gpt.decode_step(tokens, position)`, each number of rows recorded into a CUDA graph at its first step and
    replayed at the others, and `window(tokens, start)`, `gpt.decode_window` (parallel decoding's step), each
    shape of its tokens (rows, window size) recorded alike. Valid while the tensors at `addresses` stay there
    (`graphed_decode_steps` checks).

    With `compile`, what is recorded is the step compiled by torch.compile: a GPU runs each kernel of a graph for
    a few microseconds at least, and eagerly a step of GPT-B is some five hundred, mostly small elementwise ones
    that a compiled step fuses. The first step of each number of rows compiles it (inductor's kernels, whose
    launches a graph records like any other)."""

    def __init__(self, gpt: GPT, addresses: tuple, compile: bool) -> None:
        self.addresses = addresses
        self._gpt = weakref.ref(gpt)  # kept per model (a weak key): no reference back to it
        self._compile = compile
        self._step = torch.compile(GPT.decode_step, fullgraph=True) if compile else GPT.decode_step
        self._window = torch.compile(GPT.decode_window, fullgraph=True) if compile else GPT.decode_window
        self._recorded: dict[tuple, _RecordedStep] = {}  # by the step and the shape of its tokens

    def __call__(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        return self._replayed(self._step, tokens, position)

    def window(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        return self._replayed(self._window, tokens, start)

    def _replayed(self, step: Callable, tokens: torch.Tensor, position: int) -> torch.Tensor:
        key = (step, *tokens.shape)
        if key not in self._recorded:
            with _recompile_limit_raised() if self._compile else contextlib.nullcontext():
                self._recorded[key] = _RecordedStep(self._gpt(), step, tokens, position)
        return self._recorded[key].replay(tokens, position)


class _RecordedStep:
    """One CUDA graph of `step` (`GPT.decode_step` or `GPT.decode_window`, or either compiled) for one shape of
    its tokens, with the tensors it reads and writes."""

    def __init__(self, gpt: GPT, step: Callable, tokens: torch.Tensor, position: int) -> None:
        device = tokens.device
        self._tokens = tokens.clone()
        self._position = torch.tensor([position], device=device)
        # The real step, outside the graph and on a side stream, as recording asks; the replay that follows
        # writes the same keys and values at this position again. Recorded on that same stream: libraries create
        # their handles per stream on first use, which must not happen while recording. Errors only for unsafe
        # calls of this thread: an app's other threads may use the GPU meanwhile.
        side = _side_stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            step(gpt, self._tokens, self._position)
        torch.cuda.current_stream(device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph, stream=side, capture_error_mode="thread_local"):
            self._logits = step(gpt, self._tokens, self._position)

    def replay(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        self._tokens.copy_(tokens)
        self._position.fill_(position)
        self._graph.replay()
        return self._logits.clone()  # the graph writes its next step's logits into the same memory


def _addresses(gpt: GPT) -> tuple:
    read_by_a_step = (gpt.visible_keys, gpt.condition_tokens, gpt.condition_visible)
    tensors = (*gpt.parameters(), *gpt.buffers(), *(t for t in read_by_a_step if t is not None))
    return tuple((t.data_ptr(), t.dtype, t.shape) for t in tensors)


# Per device, one stream to warm up and record on: each stream a step runs on gets cuBLAS workspaces of its own,
# which torch keeps until the process ends.
_side_streams: dict[torch.device, torch.cuda.Stream] = {}

# Per model, its recorded steps, of the step as it is and compiled.
_recorded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _recompile_limit_raised() -> contextlib.AbstractContextManager:
    from torch._dynamo import config as dynamo_config  # imported on first use: it is large

    return dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT)


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    if device not in _side_streams:
        _side_streams[device] = torch.cuda.Stream(device)
    return _side_streams[device]
