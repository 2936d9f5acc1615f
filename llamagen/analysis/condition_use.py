"""How much of the condition a generator uses, read from its predictions (teacher forcing).

The condition enters only as prefix tokens (Sec. 2.2). What the model does with it shows in how its next-token
distributions move when the condition is replaced by the null one that guidance uses (Sec. 3.2): at image
position j, KL(p(.|c, x<j) || p(.|null, x<j)) is the information about the condition that the prediction
carries there, and log p(x_j|c, x<j) - log p(x_j|null, x<j) how much the condition explains the token actually
there. Both are zero for a model that ignores its condition, whatever it attends to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ConditionUse:
    """Per image and image position, in nats: `kl` (B, T) and `log_ratio` (B, T)."""

    kl: torch.Tensor
    log_ratio: torch.Tensor


@torch.no_grad()
def token_log_probs(gpt, tokens: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None = None):
    """(B, T, vocab) float32 log-probabilities of every image position given the condition and the tokens before,
    in one whole-sequence forward."""
    return torch.log_softmax(gpt(tokens[:, :-1], cond, cond_mask), dim=-1)


@torch.no_grad()
def condition_use(gpt, tokens: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None = None):
    """`ConditionUse` of images `tokens` (B, T) under `cond` against the null condition (masked alike for
    captions, as guidance masks its unconditional half), one batched forward for each."""
    conditional = token_log_probs(gpt, tokens, cond, cond_mask)
    unconditional = token_log_probs(gpt, tokens, gpt.unconditional(cond), cond_mask)
    kl = (conditional.exp() * (conditional - unconditional)).sum(-1)
    observed = tokens[..., None]
    log_ratio = (conditional.gather(-1, observed) - unconditional.gather(-1, observed))[..., 0]
    return ConditionUse(kl=kl.clamp_min(0), log_ratio=log_ratio)


@torch.no_grad()
def loss_per_image(gpt, tokens: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None = None):
    """(B,) mean next-token cross-entropy of each image under `cond`, in nats per token."""
    log_probs = token_log_probs(gpt, tokens, cond, cond_mask)
    return -log_probs.gather(-1, tokens[..., None])[..., 0].mean(-1)


@torch.no_grad()
def loss_gaps(
    gpt,
    tokens: torch.Tensor,
    cond: torch.Tensor,
    wrong: torch.Tensor,
    cond_mask: torch.Tensor | None = None,
    wrong_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """(B,) nats per token of each image under its condition ("true"), the null one ("null") and a `wrong` one
    (`wrong_mask`: a wrong caption's own mask):
    a generator that reads its condition finds the image likelier under the true one than under the null one,
    and less likely under a wrong one; one that ignores it gives the three the same loss."""
    return {
        "true": loss_per_image(gpt, tokens, cond, cond_mask),
        "null": loss_per_image(gpt, tokens, gpt.unconditional(cond), cond_mask),
        "wrong": loss_per_image(gpt, tokens, wrong, cond_mask if wrong_mask is None else wrong_mask),
    }


@torch.no_grad()
def class_log_likelihoods(gpt, tokens: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(B, num_classes) log p(x | c) of each image under every class, in nats: the generator read as a
    classifier (its argmax over classes is its guess of the image's class, without any classifier trained)."""
    classes = gpt.config.num_classes
    columns = []
    for c in range(classes):
        labels = torch.full((tokens.shape[0],), c, dtype=torch.long, device=tokens.device)
        parts = [
            -loss_per_image(gpt, tokens[i : i + batch], labels[i : i + batch]) * tokens.shape[1]
            for i in range(0, tokens.shape[0], batch)
        ]
        columns.append(torch.cat(parts))
    return torch.stack(columns, dim=1)
