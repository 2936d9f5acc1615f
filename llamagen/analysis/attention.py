"""How much of the condition the generator uses: the attention its image-token predictions pay to the prefix.

The condition enters only as prefix tokens (Sec. 2.2), so the share of attention that the queries predicting
image tokens give to the prefix positions, layer by layer, shows where and how much the model reads it.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def prefix_attention(gpt, tokens: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None = None):
    """(n_layer, B, block_size): for each layer and each image token j, the share of attention (averaged over
    heads) that the query predicting token j gives to the prefix, in a whole-sequence forward of `tokens`.

    The query predicting token 0 is the last prefix position, which sees nothing else: its share is 1.
    """
    captured: list[torch.Tensor] = []

    def capture(module, args):
        x, rope, mask = args[:3]
        captured.append(module.attention_weights(x, rope, mask))

    hooks = [layer.attention.register_forward_pre_hook(capture) for layer in gpt.layers]
    try:
        gpt(tokens[:, :-1], cond, cond_mask)
    finally:
        for hook in hooks:
            hook.remove()
    prefix = gpt.prefix_length
    return torch.stack([weights[:, :, prefix - 1 :, :prefix].sum(-1).mean(1) for weights in captured])


@torch.no_grad()
def prefix_attention_with_controls(
    gpt,
    tokens: torch.Tensor,
    cond: torch.Tensor,
    wrong: torch.Tensor,
    cond_mask: torch.Tensor | None = None,
    wrong_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """`prefix_attention` under the true condition, the null one and a `wrong` one (`wrong_mask`: a wrong
    caption's own mask), and the true share less the null one's, each (n_layer, B, block_size). A share that
    stays the same whatever the prefix holds is an attention sink (a place to put attention), not a reading of
    the condition: only the difference speaks of the condition, and `condition_use` measures that directly."""
    shares = {
        "true": prefix_attention(gpt, tokens, cond, cond_mask),
        "null": prefix_attention(gpt, tokens, gpt.unconditional(cond), cond_mask),
        "wrong": prefix_attention(gpt, tokens, wrong, cond_mask if wrong_mask is None else wrong_mask),
    }
    return {**shares, "true - null": shares["true"] - shares["null"]}
