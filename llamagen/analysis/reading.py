"""What a generator's predictions on one image read of a condition, with the controls that make it a reading:
the KL of each token's prediction to its prediction under the null condition, the image's loss under the true,
the null and a wrong condition, and the attention each layer pays to the prefix under the three (the same shares
whatever the prefix holds make the prefix an attention sink, not a reading of the condition)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llamagen.analysis.attention import prefix_attention_with_controls
from llamagen.analysis.condition_use import condition_use, loss_gaps
from llamagen.data.shapes import COLOURS, SHAPES
from llamagen.pipeline import Pipeline


@dataclass
class ConditionReading:
    """One image's reading: `kl` (block_size,) nats per token; `loss` nats per token under "true", "null" and
    "wrong"; `attention` (n_layer, block_size) share to the prefix under "true", "null", "wrong" and their
    "true - null"; `wrong` the wrong condition as the pipeline describes it."""

    kl: torch.Tensor
    loss: dict[str, float]
    attention: dict[str, torch.Tensor]
    wrong: str


def wrong_condition(pipe: Pipeline, condition: dict) -> dict:
    """The control: another class (the next one), or the caption with its first shape word (else colour word)
    changed to the next of its kind."""
    if "class_labels" in condition:
        return {"class_labels": [(pipe.class_id(condition["class_labels"][0]) + 1) % pipe.gpt.config.num_classes]}
    words = condition["prompts"][0].split(" ")
    for kind in (SHAPES, tuple(COLOURS)):
        for i, word in enumerate(words):
            if word in kind:
                words[i] = kind[(kind.index(word) + 1) % len(kind)]
                return {"prompts": [" ".join(words)]}
    raise ValueError("the wrong-caption control changes a shape or colour word: name one of "
                     f"{', '.join(SHAPES + tuple(COLOURS))} in the prompt")  # fmt: skip


@torch.no_grad()
def read_condition(pipe: Pipeline, tokens: torch.Tensor, condition: dict) -> ConditionReading:
    """The reading of `condition` (pipeline arguments for one image: `class_labels` or `prompts`) by the
    generator's predictions on `tokens` (1, block_size), teacher-forced."""
    wrong = wrong_condition(pipe, condition)
    cond, cond_mask, _, _ = pipe.encode_conditions(**condition)
    other, other_mask, described, _ = pipe.encode_conditions(**wrong)
    device = pipe.device
    cond, other = cond.to(device), other.to(device)
    cond_mask, other_mask = (None if m is None else m.to(device) for m in (cond_mask, other_mask))
    gpt = pipe.gpt
    shares = prefix_attention_with_controls(gpt, tokens, cond, other, cond_mask, other_mask)
    losses = loss_gaps(gpt, tokens, cond, other, cond_mask, other_mask)
    return ConditionReading(
        kl=condition_use(gpt, tokens, cond, cond_mask).kl[0].cpu(),
        loss={name: float(value[0]) for name, value in losses.items()},
        attention={name: value[:, 0].float().cpu() for name, value in shares.items()},
        wrong=described[0],
    )
