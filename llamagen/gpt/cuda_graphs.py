"""Decoding steps replayed from CUDA graphs: the GPU's counterpart of the CPU's whole step in one call.

On a GPU a decoding step of GPT-B at batch 1 is some five hundred small kernels, each launched from Python through
torch's dispatcher, and the launches, not the GPU, set the pace: reading its weights takes an H200 under 0.1 ms.
A CUDA graph records the kernels of one step once and replays them all with one launch. It replays fixed
addresses and shapes, so what it records is `GPT.decode_step_at`: the tokens, the position and the caption's
visible keys are copied into tensors the graph reads, and every step attends over the whole cache.

A model's graphs are recorded at the first step of each number of rows (guidance that ends halves them), with or
without a caption mask, and kept for later generations while every tensor they read (weights, caches, RoPE
table) is where it was: recording waits for the device and empties torch's memory caches first (and collects
Python's garbage, in older torch or with `force_cudagraph_gc`), too much to pay every generation. The first step
of each also runs once outside the graph, so that lazy initialisation (cuBLAS's handles and workspaces) does not
happen while recording.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable

import torch

from llamagen.gpt.model import GPT, RECOMPILE_LIMIT


def use_cuda_graphs(gpt: GPT) -> bool:
    """Whether `gpt`'s decoding steps should be replayed from CUDA graphs: on a GPU, nothing to differentiate, no
    dropout that the modules would apply, and not inside a step being compiled."""
    return gpt.device.type == "cuda" and gpt.decode_step_replaceable


def graphed_decode_steps(gpt: GPT, compile: bool = False) -> GraphedDecodeSteps:
    """`gpt`'s recorded steps (with `compile`, of its step compiled by torch.compile), recorded afresh when a tensor
    they read has moved (a new cache, weights replaced, the model moved)."""
    addresses = _addresses(gpt)
    per_model = _recorded.setdefault(gpt, {})
    if compile not in per_model or per_model[compile].addresses != addresses:
        per_model[compile] = GraphedDecodeSteps(gpt, addresses, compile)
    return per_model[compile]


class GraphedDecodeSteps:
    """`gpt.decode_step(tokens, position)`, each number of rows (with or without a caption mask) recorded into a
    CUDA graph at its first step and replayed at the others. Valid while the tensors at `addresses` stay there
    (`graphed_decode_steps` checks).

    With `compile`, what is recorded is the step compiled by torch.compile: a GPU runs each kernel of a graph for
    a few microseconds at least, and eagerly a step of GPT-B is some five hundred, mostly small elementwise ones
    that a compiled step fuses. The first step of each number of rows compiles it (inductor's kernels, whose
    launches a graph records like any other)."""

    def __init__(self, gpt: GPT, addresses: tuple, compile: bool) -> None:
        self.addresses = addresses
        self._gpt = weakref.ref(gpt)  # kept per model (a weak key): no reference back to it
        self._compile = compile
        self._step = torch.compile(GPT.decode_step_at, fullgraph=True) if compile else GPT.decode_step_at
        self._steps: dict[tuple[int, bool], _RecordedStep] = {}

    def __call__(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        gpt = self._gpt()
        kind = (tokens.shape[0], gpt.visible_keys is not None)
        if kind not in self._steps:
            with _recompile_limit_raised() if self._compile else contextlib.nullcontext():
                self._steps[kind] = _RecordedStep(gpt, self._step, tokens, position)
        return self._steps[kind].replay(gpt, tokens, position)


class _RecordedStep:
    """One CUDA graph of `step` (`GPT.decode_step_at`, or it compiled) for a number of rows, with the tensors it
    reads and writes."""

    def __init__(self, gpt: GPT, step: Callable, tokens: torch.Tensor, position: int) -> None:
        device = tokens.device
        self._tokens = tokens.clone()
        self._position = torch.tensor([position], device=device)
        self._keys_of = gpt.visible_keys  # the prefill's whose keys the graph's copy holds
        self._visible_keys = None if self._keys_of is None else self._keys_of[: tokens.shape[0]].clone()
        # The real step, outside the graph and on a side stream, as recording asks; the replay that follows
        # writes the same keys and values at this position again. Recorded on that same stream: libraries create
        # their handles per stream on first use, which must not happen while recording. Errors only for unsafe
        # calls of this thread: an app's other threads may use the GPU meanwhile.
        side = _side_stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            step(gpt, self._tokens, self._position, self._visible_keys)
        torch.cuda.current_stream(device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph, stream=side, capture_error_mode="thread_local"):
            self._logits = step(gpt, self._tokens, self._position, self._visible_keys)

    def replay(self, gpt: GPT, tokens: torch.Tensor, position: int) -> torch.Tensor:
        self._tokens.copy_(tokens)
        self._position.fill_(position)
        if gpt.visible_keys is not self._keys_of:  # a later generation's caption mask
            self._keys_of = gpt.visible_keys
            self._visible_keys.copy_(self._keys_of[: tokens.shape[0]])
        self._graph.replay()
        return self._logits.clone()  # the graph writes its next step's logits into the same memory


def _addresses(gpt: GPT) -> tuple:
    return tuple((t.data_ptr(), t.dtype, t.shape) for t in (*gpt.parameters(), *gpt.buffers()))


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
