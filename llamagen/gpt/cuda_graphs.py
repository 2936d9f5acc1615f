"""Decoding steps replayed from CUDA graphs: the GPU's counterpart of the CPU's whole step in one call.

On a GPU a decoding step of GPT-B at batch 1 is some two hundred small kernels, each launched from Python through
torch's dispatcher, and the launches, not the GPU, set the pace: reading its weights takes an H200 under 0.1 ms.
A CUDA graph records the kernels of one step once and replays them all with one launch. It replays fixed
addresses and shapes, so what it records is `GPT.decode_step_at`: the tokens and the position are copied into
tensors the graph reads, and every step attends over the whole cache.

Recorded per generation, for the cache and caption mask that generation's `setup_cache` and `prefill` made, and
per number of rows (guidance that ends halves them); a generation's first step of each also runs once outside
the graph, so that lazy initialisation (cuBLAS's handles and workspaces) does not happen while recording.
"""

from __future__ import annotations

import torch

from llamagen.gpt.model import GPT


def use_cuda_graphs(gpt: GPT) -> bool:
    """Whether `gpt`'s decoding steps should be replayed from CUDA graphs: on a GPU, nothing to differentiate, no
    dropout that the modules would apply, and not inside a step being compiled."""
    return (
        gpt.device.type == "cuda"
        and not torch.is_grad_enabled()
        and not (gpt.training and gpt.applies_dropout)
        and not torch.compiler.is_compiling()
    )


class GraphedDecodeSteps:
    """`gpt.decode_step(tokens, position)` for one generation, each number of rows recorded into a CUDA graph at
    its first step and replayed at the others. Valid while the cache and caption mask it recorded are the
    model's: one generation (the next `setup_cache` or `prefill` may replace them)."""

    def __init__(self, gpt: GPT) -> None:
        self._gpt = gpt
        self._steps: dict[int, _RecordedStep] = {}

    def __call__(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        rows = tokens.shape[0]
        if rows not in self._steps:
            self._steps[rows] = _RecordedStep(self._gpt, tokens, position)
        return self._steps[rows].replay(tokens, position)


class _RecordedStep:
    """One CUDA graph of `gpt.decode_step_at` for a number of rows, with the tensors it reads and writes."""

    def __init__(self, gpt: GPT, tokens: torch.Tensor, position: int) -> None:
        device = tokens.device
        self._tokens = tokens.clone()
        self._position = torch.tensor([position], device=device)
        # The real step, outside the graph and on a side stream, as recording asks; the replay that follows
        # writes the same keys and values at this position again. Recorded on that same stream: libraries create
        # their handles per stream on first use, which must not happen while recording. Errors only for unsafe
        # calls of this thread: an app's other threads may use the GPU meanwhile.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            gpt.decode_step_at(self._tokens, self._position)
        torch.cuda.current_stream(device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph, stream=side, capture_error_mode="thread_local"):
            self._logits = gpt.decode_step_at(self._tokens, self._position)

    def replay(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        self._tokens.copy_(tokens)
        self._position.fill_(position)
        self._graph.replay()
        return self._logits.clone()  # the graph writes its next step's logits into the same memory
