"""Speculative Jacobi decoding (Teng et al., 2024): a window of draft tokens verified in one forward.

Each step feeds the last token every row has accepted and the window's drafts after it (`GPT.decode_window`);
the logits at each window position are the model's distribution of that token given everything before it,
drafts included. Along the window, from a row's first unaccepted position, a draft x drawn from q is accepted
with probability min(1, p(x) / q(x)), p the distribution this step computes for it; at the first unaccepted
position every token before is accepted, so p is the model's own, and a rejected draft is replaced by a draw
from the residual max(0, p - q), normalised: speculative sampling's rule (Leviathan et al., 2023), which
leaves every token distributed as sequential decoding draws it, whatever q is. The positions after the first
replaced one get new drafts from this step's p, tested at the next step. A position that enters the window
with no draft yet is given a copy of the token before it, a draft drawn from a q that is one-hot at it:
accepted with probability p(x), else redrawn from p without x. Neighbouring tokens repeat (backgrounds,
strokes), so the copy is often right, and it gives the positions after it a likelier context than a fixed
placeholder (on 12 images of each embedded generator at windows 4 to 16, 3-11% fewer model calls than a
placeholder of 0; copying the token above instead was about as good). With greedy sampling p is one-hot too:
a draft is accepted when it is the argmax, and the tokens are those of sequential decoding.

Rows accept their own counts; the window starts where the slowest row stands, so a row ahead of it waits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from llamagen.gpt.sampling import TopK, sampling_probabilities, sorted_top_k

WindowForward = Callable[[torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def jacobi_decode(
    forward: WindowForward,
    prefix_length: int,
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
    top_k_candidates: TopK = sorted_top_k,
) -> None:
    """Fill tokens[:, start:] (B, block_size) in place after a prefill of the condition and tokens[:, :start],
    whose logits of token `start` are `first_logits` ((2B or B, vocab)); the cache holds 2B rows where guided.
    `forward(tokens, sequence_position)`: the model's window forward (`GPT.decode_window`, or the kernel's), the
    image's tokens after `prefix_length` condition tokens. `scales[i]`: the guidance scale of token i, None
    where it is not guided. `progress` is called after every model call (and once for the first token, drawn
    from the prefill's logits)."""
    batch, block_size = tokens.shape
    guidance = first_logits.shape[0] == 2 * batch
    generators = list(generator) if isinstance(generator, Sequence) else [generator] * batch
    greedy = top_k == 1 or temperature == 0

    def probabilities(logits: torch.Tensor, positions: range) -> torch.Tensor:
        """(rows, n, vocab) logits of `positions` -> (B, n, vocab) probabilities that sequential decoding draws
        from, each position guided at its own scale."""
        if guidance:
            cond, uncond = logits.chunk(2)
            scale = torch.tensor([scales[i] if scales[i] is not None else 1.0 for i in positions])[:, None]
            # As `sampling.guided`: at scale 1 the conditional logits exactly.
            logits = torch.where(scale == 1.0, cond, uncond + (cond - uncond) * scale)
        rows, n, vocab = logits.shape
        flat = sampling_probabilities(logits.reshape(rows * n, vocab), temperature, top_k, top_p, top_k_candidates)
        return flat.view(rows, n, vocab)

    def draw(p: torch.Tensor, row: int) -> torch.Tensor:
        """(n, vocab) -> (n,) one token of each distribution."""
        if greedy:
            return p.argmax(-1)
        return torch.multinomial(p, 1, generator=generators[row])[:, 0]

    first = probabilities(first_logits[:, None], range(start, start + 1))[:, 0]
    for row in range(batch):
        tokens[row, start] = draw(first[row : row + 1], row)[0]
    frontier = [start + 1] * batch  # each row's first unaccepted position
    # A row's drafts from its frontier to sampled_to were drawn from the distributions `drafted` of the last step
    # (of positions drafted_from on); every frontier is at most sampled_to, and the window's end at least.
    drafted, drafted_from, sampled_to = None, start + 1, start + 1
    if progress is not None:
        progress(start + 1, block_size)
    while min(frontier) < block_size:
        begin = min(frontier)
        end = min(begin + window, block_size)
        for position in range(sampled_to, end):  # new in the window: a copy of the token before as its draft
            tokens[:, position] = tokens[:, position - 1]
        inputs = tokens[:, begin - 1 : end - 1]
        logits = forward(torch.cat([inputs, inputs]) if guidance else inputs, prefix_length + begin - 1)
        step = probabilities(logits, range(begin, end))
        for row in range(batch):
            position, sampled = frontier[row], range(frontier[row], sampled_to)
            ids = tokens[row, position:end]  # its drafts: sampled, then copies
            p = step[row, position - begin :].gather(-1, ids[:, None])[:, 0]
            q = torch.ones_like(p)  # a copy's q is one-hot at it
            if sampled:
                q_sampled = drafted[row, sampled.start - drafted_from : sampled.stop - drafted_from]
                q[: len(sampled)] = q_sampled.gather(-1, ids[: len(sampled), None])[:, 0]
            ratio = p / q
            accepted = ratio >= 1
            if not greedy:
                accepted |= torch.rand(len(ratio), generator=generators[row]) < ratio
            refused = (~accepted).nonzero()
            position += len(ratio) if len(refused) == 0 else int(refused[0])
            if position < end:  # a refused draft: redrawn from the residual max(0, p - q), normalised
                p = step[row, position - begin]
                if position in sampled:
                    residual = (p - drafted[row, position - drafted_from]).clamp_min(0)
                else:
                    residual = p.clone()
                    residual[tokens[row, position]] = 0
                p = residual / residual.sum() if residual.sum() > 0 else p
                tokens[row, position] = draw(p[None], row)[0]
                position += 1
            frontier[row] = position
            if position < end:
                tokens[row, position:end] = draw(step[row, position - begin :], row)
        drafted, drafted_from, sampled_to = step, begin, end
        if progress is not None:
            progress(min(frontier), block_size)
