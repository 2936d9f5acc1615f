"""Speculative Jacobi decoding (Teng et al., 2024): a window of draft tokens verified in one forward.

Each step feeds the last token every row has accepted and the window's drafts after it (`GPT.decode_window`);
the logits at each window position are the model's distribution of that token given everything before it,
drafts included. Along the window, from a row's first unaccepted position, a draft x drawn from q is accepted
with probability min(1, p(x) / q(x)), p the distribution this step computes for it; at the first unaccepted
position every token before is accepted, so p is the model's own, and a rejected draft is replaced by a draw
from the residual max(0, p - q), normalised: speculative sampling's rule (Leviathan et al., 2023), which
leaves every token distributed as sequential decoding draws it. A position without a draft yet takes a draw
from p. The positions after the first replaced one get new drafts from this step's p, tested at the next step.
With greedy sampling p and q are one-hot: a draft is accepted when it is the argmax, and the tokens are those
of sequential decoding.

Rows accept their own counts; the window starts where the slowest row stands, so a row ahead of it waits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from llamagen.gpt.model import GPT
from llamagen.gpt.sampling import guided, sampling_probabilities


@torch.no_grad()
def jacobi_decode(
    gpt: GPT,
    tokens: torch.Tensor,
    start: int,
    first_logits: torch.Tensor,
    window: int,
    scales: Sequence[float | None],
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Fill tokens[:, start:] (B, block_size) in place after a prefill of the condition and tokens[:, :start],
    whose logits of token `start` are `first_logits` ((2B or B, vocab)); the cache holds 2B rows where guided.
    `scales[i]`: the guidance scale of token i, None where it is not guided. `progress` is called after every
    model call (and once for the first token, drawn from the prefill's logits)."""
    batch, block_size = tokens.shape
    guidance = first_logits.shape[0] == 2 * batch
    generators = list(generator) if isinstance(generator, Sequence) else [generator] * batch
    greedy = top_k == 1 or temperature == 0

    def probabilities(logits: torch.Tensor, position: int) -> torch.Tensor:
        if guidance:
            logits = guided(logits, scales[position] if scales[position] is not None else 1.0)
        return sampling_probabilities(logits, temperature, top_k, top_p)

    def draw(p: torch.Tensor, row: int) -> int:
        if greedy:
            return int(p.argmax())
        return int(torch.multinomial(p, 1, generator=generators[row]))

    first = probabilities(first_logits, start)
    for row in range(batch):
        tokens[row, start] = draw(first[row], row)
    tokens[:, start + 1 :] = 0  # placeholders until a step drafts them
    frontier = [start + 1] * batch  # each row's first unaccepted position
    drafted_from: dict[tuple[int, int], torch.Tensor] = {}  # (row, position) -> the q its draft was drawn from
    if progress is not None:
        progress(start + 1, block_size)
    while min(frontier) < block_size:
        begin = min(frontier)
        end = min(begin + window, block_size)
        inputs = tokens[:, begin - 1 : end - 1]
        logits = gpt.decode_window(torch.cat([inputs, inputs]) if guidance else inputs, gpt.prefix_length + begin - 1)
        step = [probabilities(logits[:, position - begin], position) for position in range(begin, end)]
        for row in range(batch):
            position = frontier[row]
            while position < end:
                p = step[position - begin][row]
                q = drafted_from.pop((row, position), None)
                if q is not None:
                    draft = int(tokens[row, position])
                    ratio = float(p[draft] / q[draft])
                    if ratio >= 1 or (ratio > 0 and float(torch.rand((), generator=generators[row])) < ratio):
                        position += 1
                        continue
                    residual = (p - q).clamp_min(0)
                    p = residual / residual.sum() if residual.sum() > 0 else p
                tokens[row, position] = draw(p, row)
                position += 1
                break
            frontier[row] = position
            for later in range(position, end):
                q = step[later - begin][row]
                tokens[row, later] = draw(q, row)
                drafted_from[(row, later)] = q
        if progress is not None:
            progress(min(frontier), block_size)
