"""A decoding step as one call of the CPU's whole-step kernel (`kernels/decode_step.cpp`).

Op by op, a step of GPT-B is some two hundred calls through torch's dispatcher, and for the few rows a step
multiplies, their overhead and torch's products for so few rows leave much of the time on the table; the kernel
reads the weights and caches in place and runs the whole step in C++.
"""

from __future__ import annotations

import torch

from llamagen.fast import kernels
from llamagen.gpt.model import GPT

# The kernel reads the weights once per 16 rows, torch's products once for all of them. Where the weights stream
# from memory (GPT-B: 200 MB in bf16), more rows than MAX_ROWS are left to torch's products; weights of up to
# CACHED_WEIGHT_BYTES stay in the CPU's caches from one pass to the next, and the kernel serves any number of
# rows (an embedded generator of 2.9M parameters generated 1,000 images with guidance in 13.6 s against 22.7
# through the modules).
MAX_ROWS = 16
CACHED_WEIGHT_BYTES = 16 * 2**20


def serves(gpt: GPT, rows: int) -> bool:
    """Whether the kernel can run `gpt`'s step for `rows` rows exactly as the modules would, and faster: the
    kernels loaded, on the CPU, 1 to MAX_ROWS rows (any number for small weights), nothing to differentiate, no
    dropout drawn in a step (`GPT.drops_out_in_a_step`), the condition only in the prefix (the published
    models'; the kernel has no other), a dtype and widths it handles, and a cache of the weights' dtype."""
    config = gpt.config
    lanes = kernels.LANES.get(gpt.dtype)
    cache = gpt.layers[0].attention.kv_cache
    return (
        kernels.ready is True
        and gpt.device.type == "cpu"
        and (0 < rows <= MAX_ROWS or (rows > 0 and _weight_bytes(gpt) <= CACHED_WEIGHT_BYTES))
        and not torch.is_grad_enabled()
        and not gpt.drops_out_in_a_step
        and config.condition == "prefix"
        and lanes is not None
        and config.dim % lanes == 0
        and config.ffn_hidden_dim % lanes == 0
        and config.head_dim % 2 == 0
        and cache is not None
        and cache.k_cache.dtype == gpt.dtype
    )


def _weight_bytes(gpt: GPT) -> int:
    return sum(p.numel() * p.element_size() for p in gpt.parameters())


class OneCallStep:
    """`gpt.decode_step(tokens, position)` as one call of the kernel, and `gpt.decode_window` as `window`, over
    the weights and caches the model has now (gathered once: a new cache or moved weights need a new
    OneCallStep)."""

    def __init__(self, gpt: GPT) -> None:
        self._gpt = gpt
        self._weights, self._caches = step_tensors(gpt)

    def __call__(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        return self._run(torch.ops.llamagen.decode_step, tokens, position)

    def window(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """`gpt.decode_window(tokens, start)`: (rows, w) tokens -> (rows, w, vocab) logits."""
        return self._run(torch.ops.llamagen.decode_window, tokens, start)

    def _run(self, op: torch._ops.OpOverloadPacket, tokens: torch.Tensor, position: int) -> torch.Tensor:
        gpt = self._gpt
        config = gpt.config
        return op(tokens, self._weights, self._caches, gpt.freqs_cis, gpt.visible_keys, position, config.n_head,
                  config.norm_eps)  # fmt: skip


def step_tensors(gpt: GPT) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The weights (embeddings, each layer's seven, the norm, the output) and caches (each layer's keys and values)
    in the kernel's order. A weight that is not contiguous (tied or transposed by hand) is copied: the kernel reads
    rows in place."""
    weights = [gpt.tok_embeddings.weight]
    caches = []
    for layer in gpt.layers:
        attention, feed_forward = layer.attention, layer.feed_forward
        weights += [layer.attention_norm.weight, attention.wqkv.weight, attention.wo.weight, layer.ffn_norm.weight]
        weights += [feed_forward.w1.weight, feed_forward.w3.weight, feed_forward.w2.weight]
        caches += [attention.kv_cache.k_cache, attention.kv_cache.v_cache]
    weights += [gpt.norm.weight, gpt.output.weight]
    return [w.detach().contiguous() for w in weights], caches
