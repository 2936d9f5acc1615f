"""Faster ways to run the generator's decoding step, computing what `GPT.decode_step` computes.

`llamagen.gpt` is the paper's model, module by module, on torch's ops. A decoding step multiplies a few rows by
every weight and attends with one query, work so small that the step's overheads (a few hundred calls through
torch's dispatcher, their launches on a GPU) and torch's products for so few rows decide its speed. This package
holds what makes it fast, and `llamagen.generate` asks it once per generation, before the loop, for the step to
run (`decoder`):

- on a CPU, one call of a C++ kernel for the whole step (`one_call.py`, `kernels/`), over weights and a KV cache
  on 2 MB pages (`huge_pages.py`), and a top-k without sorting the vocabulary (`top_k.py`);
- on a GPU, each step replayed from a CUDA graph (`cuda_graphs.py`);
- otherwise, and with `compile=True`, the step compiled by torch.compile (`compiled.py`).

It also holds what makes the tokenizers fast on a CPU, where their full-resolution maps move through memory
for a few operations a value: GroupNorm and the SiLU after it in one kernel, which `load_tokenizer` puts in
place (`tokenizer.py`), and freed memory kept for the next maps instead of mapped afresh (`freed_memory.py`,
which the `llamagen` command calls).

Which is fastest for each device, batch and dtype is measured by `make bench` (benchmarks/results/).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llamagen.fast import compiled, cuda_graphs, huge_pages, kernels, one_call
from llamagen.fast.top_k import top_k_candidates
from llamagen.gpt.model import GPT
from llamagen.gpt.sampling import sorted_top_k

# How a generation's decoding steps run: "fastest", or "plain": the model's modules and torch's ops only (what the
# library computes without this package; compiled with compile=True, on a GPU without CUDA graphs).
WAYS = ("fastest", "plain")


@dataclass(frozen=True)
class Decoder:
    """What a generation calls at every token: `step(tokens, position)` -> logits, and the sampler's
    `top_k(logits, k)` -> (values, ids); parallel decoding calls `window(tokens, start)` -> logits of a window
    of tokens (`GPT.decode_window`) instead of `step`."""

    step: Callable[[torch.Tensor, int], torch.Tensor]
    top_k: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
    window: Callable[[torch.Tensor, int], torch.Tensor]


def decoder(gpt: GPT, rows: int, compile: bool = False, way: str = "fastest", window: int = 1) -> Decoder:
    """The decoding step for a generation of `rows` rows on `gpt`, whose KV cache is set up, each step `window`
    tokens a row (parallel decoding: on a CPU the one-call kernel where it serves that many rows, on a GPU a CUDA
    graph per window size, otherwise the modules, uncompiled).

    "fastest": on a CPU with llamagen's kernels (built by `make setup`, AVX-512 BF16), up to
    `one_call.MAX_ROWS` rows (any number for a model of a few MB) run as one call of the whole-step kernel,
    compiled or not (nothing is left for a compiler to fuse); the weights and the cache move to 2 MB pages
    first. On a GPU every step is replayed from a CUDA graph, of the compiled step with `compile`. Otherwise the
    modules run, compiled with `compile`.
    """
    if way not in WAYS:
        raise ValueError(f"decoding must be one of {', '.join(WAYS)}, got {way!r}")
    if way == "plain":
        return Decoder(_modules(gpt, compile), sorted_top_k, gpt.decode_window)
    if gpt.device.type == "cuda" and cuda_graphs.serves(gpt):
        graphed = cuda_graphs.graphed_decode_steps(gpt, compile)
        return Decoder(graphed, sorted_top_k, graphed.window)
    if gpt.device.type == "cpu":
        kernels.load()
        huge_pages.move_to_huge_pages(gpt)  # every step streams the weights and cache: fewer pages to translate
        if one_call.serves(gpt, rows * window):
            step = one_call.OneCallStep(gpt)
            return Decoder(step, top_k_candidates, step.window)
    return Decoder(_modules(gpt, compile), top_k_candidates, gpt.decode_window)


def _modules(gpt: GPT, compile: bool) -> Callable[[torch.Tensor, int], torch.Tensor]:
    return compiled.compiled_decode_step(gpt).steady() if compile else gpt.decode_step
