"""Building blocks of the Llama decoder: RMSNorm, SwiGLU, 2-D RoPE, grouped-query attention, KV cache.

Module and parameter names reproduce the published state-dict keys (`attention.wqkv`, `attention.wo`,
`feed_forward.w1/w2/w3`, `attention_norm`, `ffn_norm`). Every product is a plain `nn.Linear` without bias and
every attention torch's `scaled_dot_product_attention`; faster ways to run a decoding step live apart, in
`llamagen.fast`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llamagen.gpt.conditioning import LayerCondition
from llamagen.gpt.config import GPTConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32; the scale multiplies after casting back, as the original does.
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.ffn_hidden_dim
        self.w1 = nn.Linear(config.dim, hidden, bias=False)
        self.w3 = nn.Linear(config.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, config.dim, bias=False)
        self.ffn_dropout = nn.Dropout(config.ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def rope_table_2d(config: GPTConfig) -> torch.Tensor:
    """(prefix_length + block_size, head_dim/2, 2) cos/sin table of 2-D rotary embeddings (Sec. 2.2).

    A token at grid cell (row, col) rotates the first half of each head's dimension pairs by row
    angles and the second half by column angles, at frequencies base^(-2i/(head_dim/2)). The
    condition prefix positions hold zeros (cos = sin = 0), exactly as the original's table: their
    queries and keys come out of the rotation as zero vectors, so every query attends to prefix keys
    with a score of 0, and prefix queries attend uniformly over what they can see.
    """
    half = config.head_dim // 2
    freqs = 1.0 / (config.rope_base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(config.grid_size, dtype=torch.float32), freqs)  # (grid, head_dim/4)
    grid = config.grid_size
    angles_2d = torch.cat(
        [angles[:, None, :].expand(grid, grid, -1), angles[None, :, :].expand(grid, grid, -1)], dim=-1
    ).flatten(0, 1)  # (grid*grid, head_dim/2): raster order, row angles then column angles
    table = torch.stack([angles_2d.cos(), angles_2d.sin()], dim=-1)
    return torch.cat([torch.zeros(config.prefix_length, half, 2), table])


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of (B, S, H, head_dim) by the (S, head_dim/2, 2) table, in float32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    rotated = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin], -1)
    return rotated.flatten(3).type_as(x)


class KVCache(nn.Module):
    """Keys and values of the positions decoded so far: (batch, n_kv_head, max_len, head_dim) each.

    Sized by the key/value heads, not the query heads, so grouped-query attention stores (and reads)
    n_head / n_kv_head times less (the original sizes it by n_head, which breaks when they differ).
    Buffers are not persistent: a cache never enters a checkpoint.
    """

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor):
        super().__init__()
        self.register_buffer("k_cache", k_cache, persistent=False)
        self.register_buffer("v_cache", v_cache, persistent=False)

    def update(self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (b, n_kv_head, S, head_dim) keys/values at the S `positions` of the first b rows; return all the
        keys and values of those rows. The shapes never depend on the positions: the caller's mask hides what
        lies beyond them (so a CUDA graph can replay a step at any position)."""
        b = k.shape[0]
        # Unlike slice assignment, index_copy_ converts no dtype (autocast): the conversion is explicit.
        self.k_cache[:b].index_copy_(2, positions, k.to(self.k_cache.dtype))
        self.v_cache[:b].index_copy_(2, positions, v.to(self.v_cache.dtype))
        return self.k_cache[:b], self.v_cache[:b]


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.wqkv = nn.Linear(config.dim, (config.n_head + 2 * config.n_kv_head) * config.head_dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.attn_dropout_p = config.attn_dropout_p
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)
        self.kv_cache: KVCache | None = None

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        mask: torch.Tensor | None,
        cache_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, S, dim); rope (S, head_dim/2, 2); mask: boolean, broadcastable to (B, 1, S, keys), True where
        attention is allowed, or None for plain causal attention. With `cache_positions` (S,), the keys and
        values are written to the cache there and the queries attend over the whole cache, which `mask` must
        then limit to what precedes them."""
        b, s, _ = x.shape
        q, k, v = self.project(x, rope)
        if cache_positions is not None:
            k, v = self.kv_cache.update(cache_positions, k, v)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None,
            dropout_p=self.attn_dropout_p if self.training else 0.0,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(b, s, self.n_head * self.head_dim)))

    def project(self, x: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, S, dim) -> q (B, H, S, D), k and v (B, H_kv, S, D), RoPE applied to q and k."""
        b, s, _ = x.shape
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = apply_rope(q.view(b, s, self.n_head, self.head_dim), rope).transpose(1, 2)
        k = apply_rope(k.view(b, s, self.n_kv_head, self.head_dim), rope).transpose(1, 2)
        return q, k, v.view(b, s, self.n_kv_head, self.head_dim).transpose(1, 2)

    def attention_weights(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The (B, H, S, S) float32 attention probabilities of a whole-sequence forward: what the fused kernel
        computes without showing (for studying how the condition is used, `llamagen.analysis.attention`)."""
        q, k, _ = self.project(x, rope)
        k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(self.head_dim)
        s = x.shape[1]
        allowed = torch.ones(s, s, dtype=torch.bool, device=x.device).tril() if mask is None else mask
        return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch for whole samples during training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class CrossAttention(nn.Module):
    """Image tokens attending to the condition's tokens (no rotary embeddings: the condition has no grid), the
    padding of a caption hidden. Its output projection starts at zero, so a new block starts as the plain one."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.wq = nn.Linear(config.dim, config.dim, bias=False)
        self.wkv = nn.Linear(config.dim, 2 * config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)

    def forward(self, x: torch.Tensor, condition: LayerCondition) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.n_head, self.head_dim).transpose(1, 2)
        k, v = self.wkv(condition.tokens.to(x.dtype)).chunk(2, dim=-1)
        k, v = (t.view(b, -1, self.n_head, self.head_dim).transpose(1, 2) for t in (k, v))
        mask = None if condition.visible is None else condition.visible[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(b, s, -1)))


class TransformerBlock(nn.Module):
    """Pre-norm attention then SwiGLU, each a residual branch; where `config.condition` says so, the condition
    enters too (see `GPTConfig`): added to the input, modulating the norms (adaLN-zero) or cross-attended."""

    def __init__(self, config: GPTConfig, drop_path: float):
        super().__init__()
        self.condition = config.condition
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.drop_path = DropPath(drop_path)
        if self.condition == "adaln_zero":
            # This block's offset to the shared modulation (shift, scale and gate of each branch); zero at the
            # start, as the shared projection, so every block starts as the identity (DiT's initialisation).
            self.modulation_offset = nn.Parameter(torch.zeros(6 * config.dim))
        elif self.condition == "cross_attention":
            self.cross_attention_norm = RMSNorm(config.dim, config.norm_eps)
            self.cross_attention = CrossAttention(config)

    def start_as_the_plain_block(self) -> None:
        """Zero what the condition adds (after the model's initialisation): at the first step the condition's
        branches add nothing, and adaLN-zero's gates close both branches."""
        if self.condition == "adaln_zero":
            nn.init.zeros_(self.modulation_offset)
        elif self.condition == "cross_attention":
            nn.init.zeros_(self.cross_attention.wo.weight)

    def forward(self, x, rope, mask, cache_positions=None, condition: LayerCondition | None = None) -> torch.Tensor:
        if self.condition == "adaln_zero":
            return self.modulated(x, rope, mask, cache_positions, condition)
        if self.condition == "every_layer":
            x = x + condition.mean.to(x.dtype)
        h = x + self.drop_path(self.attention(self.attention_norm(x), rope, mask, cache_positions))
        if self.condition == "cross_attention":
            h = h + self.drop_path(self.cross_attention(self.cross_attention_norm(h), condition))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))

    def modulated(self, x, rope, mask, cache_positions, condition: LayerCondition) -> torch.Tensor:
        modulation = (condition.modulation + self.modulation_offset).to(x.dtype)
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = modulation.chunk(6, dim=-1)
        attended = self.attention(self.attention_norm(x) * (1 + scale_a) + shift_a, rope, mask, cache_positions)
        h = x + self.drop_path(gate_a * attended)
        return h + self.drop_path(gate_f * self.feed_forward(self.ffn_norm(h) * (1 + scale_f) + shift_f))
