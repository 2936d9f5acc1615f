"""The sampler, outside the model: classifier-free guidance, temperature, top-k, top-p.

Classifier-free guidance (Sec. 3.2 of the paper) runs the conditional and the unconditional
condition as one doubled batch and mixes their logits at every step:
`uncond + (cond - uncond) * cfg_scale`. Both halves are fed the same sampled token
(`llamagen.generation.generate` runs the loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

TopK = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def check_sampling_options(vocab_size: int, cfg_scale: float, temperature: float, top_k: int, top_p: float) -> None:
    # Written so that NaN fails each comparison and is refused, instead of failing at the first draw.
    if not 0 <= cfg_scale < math.inf:
        raise ValueError(f"cfg_scale must be >= 0 (1 is no guidance, 0 is unconditional), got {cfg_scale}")
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise ValueError(f"top_k must be a whole number of tokens, got {top_k!r}")
    if not 0 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be in [0, {vocab_size}] (0 keeps the whole vocabulary), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sorted_top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, vocab) logits -> the k largest of each row and their token ids, largest first and equal logits by
    ascending id: the first k of a stable descending sort. The draw depends on this order, so it is fixed
    (torch.topk leaves the order of equal values to its algorithm; bf16 logits have many)."""
    values, ids = torch.sort(logits, dim=-1, descending=True, stable=True)
    return values[:, :k], ids[:, :k]


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    top_k_candidates: TopK = sorted_top_k,
) -> torch.Tensor:
    """(B, vocab) float32 logits -> (B, 1) token ids. `top_k=1` or `temperature=0` is greedy. `generator`: one
    for the batch, or one per row (each row's draw then depends on its own generator alone, not on the batch).

    `top_k_candidates(logits, k)`: how the k largest are found, in `sorted_top_k`'s order (`llamagen.fast` has a
    faster way to the same result)."""
    if top_k == 1 or temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    candidate_ids = None
    if 0 < top_k < logits.shape[-1]:
        # Sample among the k best only: a softmax over k values instead of the whole vocabulary.
        logits, candidate_ids = top_k_candidates(logits, top_k)
    if top_p < 1.0:
        logits = _top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    if isinstance(generator, Sequence):
        candidates = torch.cat(
            [torch.multinomial(row[None], 1, generator=g) for row, g in zip(probs, generator, strict=True)]
        )
    else:
        candidates = torch.multinomial(probs, 1, generator=generator)
    return candidates if candidate_ids is None else candidate_ids.gather(-1, candidates)


def sampling_probabilities(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                           top_k_candidates: TopK = sorted_top_k) -> torch.Tensor:  # fmt: skip
    """(B, vocab) float32 logits -> (B, vocab) the probabilities `sample` draws from (zero outside top-k and
    top-p; one-hot at the argmax where sampling is greedy), for methods that test a draw against them."""
    if top_k == 1 or temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        values, ids = top_k_candidates(logits, top_k)
        logits = torch.full_like(logits, float("-inf")).scatter_(-1, ids, values)
    if top_p < 1.0:
        logits = _top_p_filter(logits, top_p)
    return torch.softmax(logits, dim=-1)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least top_p (nucleus); of equal
    logits at the edge, those of lower ids (a stable sort, as for top-k)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1, stable=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    # A token is dropped when the tokens before it already reach top_p; the most likely always stays.
    drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
    drop_sorted[:, 1:] = cumulative[:, :-1] > top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def guided(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """(2B, vocab) logits of [conditional; unconditional] rows -> (B, vocab) guided logits; at scale 1 the
    conditional ones exactly (a schedule's unguided tokens), not their value through the mix's rounding."""
    cond, uncond = logits.chunk(2, dim=0)
    return cond if cfg_scale == 1.0 else uncond + (cond - uncond) * cfg_scale
