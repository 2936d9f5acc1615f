"""The Llama image generator (Sec. 2.2 of the paper): a decoder-only transformer over image tokens.

Three entry points, each with one job:
- `forward(tokens, cond, cond_mask)`: the whole sequence at once (training, and checking);
- `prefill(cond, cond_mask)`: the condition prefix into the KV cache, logits of the first image token;
- `decode_step(tokens, position)`: one token per row into the cache, logits of the next (`decode_step_at`: the
  same in fixed shapes, for a CUDA graph).
"""

from __future__ import annotations

import torch
from torch import nn

from llamagen import huge_pages, kernels
from llamagen.gpt.conditioning import build_condition_embedding
from llamagen.gpt.config import GPTConfig
from llamagen.gpt.layers import KVCache, Linear, RMSNorm, TransformerBlock, rope_table_2d

# How many compiled variants of a decoding step (`GPT.decode_step`, `GPT.decode_step_at`) torch.compile may keep.
# It keeps them per code object, shared by every model: each model, number of rows (and for `decode_step` the
# first position, then any; for `decode_step_at` a caption mask or none) adds its own, and past torch's default of
# 8 the step silently runs eagerly (a demo serving three models at two batch sizes would hit it).
RECOMPILE_LIMIT = 64


def prefix_attention_mask(cond_mask: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T) caption mask -> (B, 1, length, length) boolean attention mask.

    Causal, except that a padded prefix position is hidden from every query but itself (the original's
    masking for left-padded captions: without the diagonal a padded query would see nothing at all).
    """
    batch, prefix = cond_mask.shape
    positions = torch.arange(length, device=cond_mask.device)
    causal = positions[:, None] >= positions[None, :]
    visible_keys = torch.ones(batch, length, dtype=torch.bool, device=cond_mask.device)
    visible_keys[:, :prefix] = cond_mask.bool()
    itself = torch.eye(length, dtype=torch.bool, device=cond_mask.device)
    return (causal & (visible_keys[:, None, :] | itself))[:, None]


class GPT(nn.Module):
    checkpoint_kind = "gpt"  # the `kind` recorded in the project's checkpoint files

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.cls_embedding = build_condition_embedding(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout_p)
        # Stochastic depth grows linearly with depth, from 0 to drop_path_rate at the last layer.
        last = max(1, config.n_layer - 1)
        self.layers = nn.ModuleList(
            TransformerBlock(config, config.drop_path_rate * i / last) for i in range(config.n_layer)
        )
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = Linear(config.dim, config.vocab_size)
        self.register_buffer("freqs_cis", rope_table_2d(config), persistent=False)
        self._cache_key_mask: torch.Tensor | None = None  # (batch, max_len) visible keys, set by prefill
        # The weights and caches of the whole-step CPU kernel, in its order, gathered by setup_cache.
        self.one_call_tensors: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self.apply(self._init_weights)
        nn.init.zeros_(self.output.weight)  # the original starts from uniform predictions

    def _apply(self, fn, recurse=True):
        # `.to(bf16)` must not round the RoPE table: rotations stay in float32 (recomputed on the new device).
        super()._apply(fn, recurse)
        self.freqs_cis = rope_table_2d(self.config).to(self.freqs_cis.device)
        self.one_call_tensors = None  # the cache and weights gathered may be the old ones: setup_cache gathers again
        return self

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.initializer_range)

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    @property
    def decode_step_replaceable(self) -> bool:
        """Whether a decoding step may now run as something other than the modules (one call of the CPU's
        whole-step kernel, a CUDA graph's replay), which records no gradients and drops nothing: nothing to
        differentiate, no dropout that training mode would apply in a step (the token, residual and feed-forward
        dropouts and stochastic depth; attention dropout is for whole sequences only), and not inside a step that
        torch.compile traces (it traces the modules)."""
        config = self.config
        dropout = (config.token_dropout_p, config.resid_dropout_p, config.ffn_dropout_p, config.drop_path_rate)
        return (
            not torch.is_grad_enabled()
            and not (self.training and any(p > 0 for p in dropout))
            and not torch.compiler.is_compiling()
        )

    @property
    def prefix_length(self) -> int:
        return self.config.cls_token_num

    # --- the condition -----------------------------------------------------------------------

    def check_condition(self, cond: torch.Tensor, cond_mask: torch.Tensor | None, allow_null: bool = True) -> None:
        """Refuse a condition of the wrong kind, shape or range before any work is done."""
        config = self.config
        for name, value in (("cond", cond), ("cond_mask", cond_mask)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise ValueError(f"{name} must be a tensor (e.g. torch.tensor([3, 7])), got a {type(value).__name__}")
        if config.model_type == "c2i":
            if cond_mask is not None:
                raise ValueError("cond_mask is for caption prefixes; a class-conditional model takes none")
            if cond.dim() != 1 or cond.is_floating_point():
                raise ValueError(f"class labels must be a (B,) integer tensor, got {cond.dtype} {tuple(cond.shape)}")
            highest = config.num_classes if allow_null else config.num_classes - 1
            if cond.numel() and (cond.min() < 0 or cond.max() > highest):
                raise ValueError(
                    f"class ids must be in [0, {highest}] (the model has {config.num_classes} classes), "
                    f"got values in [{cond.min().item()}, {cond.max().item()}]"
                )
            return
        expected = (config.cls_token_num, config.caption_dim)
        if cond.dim() != 3 or tuple(cond.shape[1:]) != expected or not cond.is_floating_point():
            raise ValueError(
                f"caption features must be a (B, {expected[0]}, {expected[1]}) float tensor "
                f"(cls_token_num, caption_dim), got {cond.dtype} {tuple(cond.shape)}"
            )
        if cond_mask is not None and tuple(cond_mask.shape) != tuple(cond.shape[:2]):
            raise ValueError(f"cond_mask must be (B, {expected[0]}), got {tuple(cond_mask.shape)}")

    def unconditional(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition of the unconditional half of guidance: the null class, or the fixed null caption."""
        return self.cls_embedding.unconditional(cond)

    def _prefix(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, cls_token_num, dim) prefix embeddings; condition dropout applies in training mode."""
        if self.config.model_type == "t2i":
            cond = cond.to(self.dtype)
        return self.cls_embedding(cond)[:, : self.prefix_length]

    # --- whole sequence ----------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, t), t <= block_size -> logits (B, t+1, vocab) in float32.

        `logits[:, j]` is the distribution of image token j given the condition and tokens[:, :j].
        """
        self.check_condition(cond, cond_mask)
        if tokens.dim() != 2 or tokens.shape[0] != cond.shape[0] or tokens.shape[1] > self.config.block_size:
            raise ValueError(
                f"tokens must be (B, t) with B = {cond.shape[0]} and t <= {self.config.block_size}, "
                f"got {tuple(tokens.shape)}"
            )
        h = torch.cat([self._prefix(cond), self.tok_embeddings(tokens)], dim=1)
        length = h.shape[1]
        mask = prefix_attention_mask(cond_mask, length) if cond_mask is not None else None
        h = self.tok_dropout(h)
        rope = self.freqs_cis[:length]
        for layer in self.layers:
            h = layer(h, rope, mask)
        # Only the positions that predict image tokens: the last prefix position and every image token.
        return self.output(self.norm(h[:, self.prefix_length - 1 :])).float()

    # --- cached decoding ---------------------------------------------------------------------

    @property
    def max_sequence_length(self) -> int:
        return self.prefix_length + self.config.block_size

    def setup_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> None:
        """Give every layer a KV cache for `batch_size` rows (guidance doubles the rows).

        A cache of the same size is kept rather than reallocated: a prefill overwrites it from position
        0 and nothing beyond the current position is read, and the compiled decoding step stays valid
        only while its cache tensors are the same objects.
        """
        dtype = dtype or self.dtype
        current = self.layers[0].attention.kv_cache
        self._cache_key_mask = None
        if current is None or current.k_cache.shape[0] != batch_size or current.k_cache.dtype != dtype:
            self._allocate_cache(batch_size, dtype)
        self.one_call_tensors = self._gather_one_call_tensors()

    def _allocate_cache(self, batch_size: int, dtype: torch.dtype) -> None:
        shape = (batch_size, self.config.n_kv_head, self.max_sequence_length, self.config.head_dim)
        count = 2 * len(self.layers)
        if self.device.type == "cpu":
            caches = huge_pages.zeros([(shape, dtype)] * count)  # a step reads the cache from memory too
        else:
            caches = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(count)]
        for layer, k_cache, v_cache in zip(self.layers, caches[0::2], caches[1::2], strict=True):
            layer.attention.kv_cache = KVCache(k_cache, v_cache)

    def _gather_one_call_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """The weights (embeddings, each layer's seven, the norm, the output) and caches (each layer's keys and
        values) in the whole-step kernel's order (`llamagen/kernels/decode_step.cpp`); None where it cannot
        read them: on another device, a cache of another dtype than the weights, or a weight not contiguous (tied
        or transposed by hand)."""
        weights = [self.tok_embeddings.weight]
        caches = []
        for layer in self.layers:
            attention, feed_forward = layer.attention, layer.feed_forward
            weights += [layer.attention_norm.weight, attention.wqkv.weight, attention.wo.weight, layer.ffn_norm.weight]
            weights += [feed_forward.w1.weight, feed_forward.w3.weight, feed_forward.w2.weight]
            caches += [attention.kv_cache.k_cache, attention.kv_cache.v_cache]
        weights += [self.norm.weight, self.output.weight]
        if self.device.type != "cpu" or caches[0].dtype != self.dtype or not all(w.is_contiguous() for w in weights):
            return None
        return weights, caches

    def clear_cache(self) -> None:
        """Free the KV cache (generation keeps it for the next call of the same batch size)."""
        for layer in self.layers:
            layer.attention.kv_cache = None
        self._cache_key_mask = None
        self.one_call_tensors = None

    def prefill(self, cond: torch.Tensor, cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the condition prefix into the cache; return (B, vocab) float32 logits of image token 0."""
        self.check_condition(cond, cond_mask)
        h = self._prefix(cond)
        mask = None
        if cond_mask is not None:
            mask = prefix_attention_mask(cond_mask, self.prefix_length)
            self._cache_key_mask = torch.ones(
                cond.shape[0], self.max_sequence_length, dtype=torch.bool, device=h.device
            )
            self._cache_key_mask[:, : self.prefix_length] = cond_mask.bool()
        rope = self.freqs_cis[: self.prefix_length]
        for layer in self.layers:
            h = layer(h, rope, mask, cache_start=0)
        return self.output(self.norm(h[:, -1:])).float()[:, 0]

    def decode_step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """tokens (b, 1) at sequence `position` (prefix included) -> (b, vocab) logits of the next token.

        b may be smaller than the cache's batch: the first b rows continue (guidance that has ended
        drops the unconditional half). On a CPU with llamagen's kernels the step is one call of the whole-step
        kernel (`llamagen.kernels.use_decode_step` says when), otherwise module by module.
        """
        if kernels.use_decode_step(self, tokens.shape[0]):
            weights, caches = self.one_call_tensors
            return torch.ops.llamagen.decode_step(
                tokens,
                weights,
                caches,
                self.freqs_cis,
                self._cache_key_mask,
                position,
                self.config.n_head,
                self.config.norm_eps,
            )
        mask = None
        if self._cache_key_mask is not None:
            mask = self._cache_key_mask[: tokens.shape[0], None, None, : position + 1]
        return self._decode_through_layers(tokens, self.freqs_cis[position : position + 1], mask, position)

    @property
    def visible_keys(self) -> torch.Tensor | None:
        """(batch, max_len) booleans set by `prefill`: False at a caption's padding, which every later query skips;
        None when nothing is hidden."""
        return self._cache_key_mask

    def decode_step_at(
        self, tokens: torch.Tensor, position: torch.Tensor, visible_keys: torch.Tensor | None
    ) -> torch.Tensor:
        """`decode_step` in fixed shapes, for a CUDA graph to replay (`llamagen.gpt.cuda_graphs`): `position` is a
        one-element int64 tensor on the model's device, read only there, `visible_keys` the model's
        `visible_keys` (or a copy the graph reads), and every step attends over the whole cache, the positions
        after this one hidden. The same logits (hidden positions weigh exactly zero), up to the order of the
        attention's sums over the longer cache."""
        rows = tokens.shape[0]
        visible = torch.arange(self.max_sequence_length, device=position.device) <= position
        if visible_keys is not None:
            visible = visible & visible_keys[:rows]
        mask = visible.expand(rows, -1)[:, None, None]
        return self._decode_through_layers(tokens, self.freqs_cis.index_select(0, position), mask, position)

    def _decode_through_layers(
        self, tokens: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None, position: int | torch.Tensor
    ) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, rope, mask, cache_start=position)
        return self.output(self.norm(h)).float()[:, 0]
