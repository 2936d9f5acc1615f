"""The Llama image generator (Sec. 2.2 of the paper): a decoder-only transformer over image tokens.

The condition enters as prefix tokens, as the paper's, or also (or instead) through the layers, as
`GPTConfig.condition` chooses (`llamagen.gpt.conditioning`). One stack of layers, run three ways:
- `forward(tokens, cond, cond_mask)`: the whole sequence at once (training, and checking);
- `prefill(cond, cond_mask)`: the condition prefix into the KV cache, logits of the first image token;
- `decode_step(tokens, position)`: one token per row into the cache at `position`, logits of the next
  (`decode_window`: several consecutive tokens per row at once, for parallel decoding).
The cached ones write the cache at given positions and attend over all of it, masked to what precedes each query
(as gpt-fast's model does): the shapes of a step never change, so a step can be compiled or replayed whole.
Faster ways to run the same step are in `llamagen.fast`.
"""

from __future__ import annotations

import torch
from torch import nn

from llamagen.gpt.conditioning import LayerCondition, build_condition_embedding
from llamagen.gpt.config import GPTConfig
from llamagen.gpt.layers import KVCache, RMSNorm, TransformerBlock, rope_table_2d


def attention_mask(visible_keys: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor:
    """(B, L) visible keys and (S,) query positions -> (B, 1, S, L) boolean attention mask.

    Causal, except that a hidden key (a caption's padding) is hidden from every query but itself (the original's
    masking for left-padded captions: without the diagonal a padded query would see nothing at all).
    """
    keys = torch.arange(visible_keys.shape[1], device=visible_keys.device)
    before = keys[None, :] <= query_positions[:, None]
    itself = keys[None, :] == query_positions[:, None]
    return (before & (visible_keys[:, None, :] | itself))[:, None]


class GPT(nn.Module):
    checkpoint_kind = "gpt"  # the `kind` recorded in the project's checkpoint files

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.cls_embedding = build_condition_embedding(config)
        if not self.prefix_holds_condition:  # the sequence starts from a learned token; the layers read the condition
            self.start_token = nn.Parameter(torch.empty(1, 1, config.dim))
        # adaLN-zero's projection of the condition to every block's shifts, scales and gates (see GPTConfig).
        self.modulation = nn.Linear(config.dim, 6 * config.dim) if config.condition == "adaln_zero" else None
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout_p)
        # Stochastic depth grows linearly with depth, from 0 to drop_path_rate at the last layer.
        last = max(1, config.n_layer - 1)
        self.layers = nn.ModuleList(
            TransformerBlock(config, config.drop_path_rate * i / last) for i in range(config.n_layer)
        )
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.register_buffer("freqs_cis", rope_table_2d(config), persistent=False)
        # (batch, max_len) booleans, allocated with the cache: False at a caption's padding, which every later
        # query skips. Written in place by `prefill`, so a recorded step reads the current caption's. Not a
        # buffer: torch.compile's freezing would fold a buffer that the step does not write into a constant.
        self.visible_keys: torch.Tensor | None = None
        # Where the layers read the condition: its embedded tokens (batch, cls_token_num, dim) and which are real
        # (batch, cls_token_num), allocated with the cache and written in place by `prefill`, as `visible_keys`.
        self.condition_tokens: torch.Tensor | None = None
        self.condition_visible: torch.Tensor | None = None
        self.apply(self._init_weights)
        nn.init.zeros_(self.output.weight)  # the original starts from uniform predictions
        if not self.prefix_holds_condition:
            nn.init.normal_(self.start_token, std=config.initializer_range)
        if self.modulation is not None:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)
        for layer in self.layers:
            layer.start_as_the_plain_block()

    def _apply(self, fn, recurse=True):
        # `.to(bf16)` must not round the RoPE table: rotations stay in float32 (recomputed on the new device).
        super()._apply(fn, recurse)
        self.freqs_cis = rope_table_2d(self.config).to(self.freqs_cis.device)
        if self.visible_keys is not None:  # booleans, not a buffer (see __init__): moved, never converted
            self.visible_keys = self.visible_keys.to(self.freqs_cis.device)
        if self.condition_tokens is not None:  # the layers' condition, converted as the cache is
            self.condition_tokens = fn(self.condition_tokens)
            self.condition_visible = self.condition_visible.to(self.freqs_cis.device)
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
    def drops_out_in_a_step(self) -> bool:
        """Whether a decoding step through the modules would draw dropout masks: in training mode, with token,
        residual or feed-forward dropout or stochastic depth configured (attention dropout is for whole sequences
        only). A step run any other way (one kernel call, a replayed graph) must not serve such a model."""
        config = self.config
        dropout = (config.token_dropout_p, config.resid_dropout_p, config.ffn_dropout_p, config.drop_path_rate)
        return self.training and any(p > 0 for p in dropout)

    @property
    def prefix_length(self) -> int:
        return self.config.prefix_length

    @property
    def prefix_holds_condition(self) -> bool:
        return self.config.prefix_holds_condition

    @property
    def condition_enters_layers(self) -> bool:
        return self.config.condition != "prefix"

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

    def _embed_condition(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The condition's (B, cls_token_num, dim) embeddings, and the (B, prefix_length, dim) prefix: those, or
        the start token. Condition dropout applies in training mode."""
        if self.config.model_type == "t2i":
            cond = cond.to(self.dtype)
        embedded = self.cls_embedding(cond)
        if self.prefix_holds_condition:
            return embedded, embedded
        return embedded, self.start_token.expand(cond.shape[0], -1, -1)

    # --- the layers ----------------------------------------------------------------------------

    def transformer(
        self,
        h: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        cached: bool,
        condition: LayerCondition | None = None,
    ) -> torch.Tensor:
        """(B, S, dim) embeddings at sequence `positions` (S,) through every layer and the final norm. `cached`:
        keys and values go into the KV cache at those positions, and `mask` spans the whole cache. `condition`:
        what the layers read of it, where it enters them."""
        rope = self.freqs_cis.index_select(0, positions)
        for layer in self.layers:
            h = layer(h, rope, mask, positions if cached else None, condition)
        return self.norm(h)

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
        embedded, prefix = self._embed_condition(cond)
        h = self.tok_dropout(torch.cat([prefix, self.tok_embeddings(tokens)], dim=1))
        positions = torch.arange(h.shape[1], device=h.device)
        visible = None if cond_mask is None else cond_mask.to(h.device).bool()
        mask = None  # plain causal attention
        if visible is not None and self.prefix_holds_condition:
            image = torch.ones(tokens.shape[0], tokens.shape[1], dtype=torch.bool, device=h.device)
            mask = attention_mask(torch.cat([visible, image], dim=1), positions)
        condition = LayerCondition.of(embedded, visible, self.modulation) if self.condition_enters_layers else None
        h = self.transformer(h, positions, mask, cached=False, condition=condition)
        # Only the positions that predict image tokens: the last prefix position and every image token.
        return self.output(h[:, self.prefix_length - 1 :]).float()

    # --- cached decoding ---------------------------------------------------------------------

    @property
    def max_sequence_length(self) -> int:
        return self.prefix_length + self.config.block_size

    def setup_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> None:
        """Give every layer a KV cache for `batch_size` rows (guidance doubles the rows).

        A cache of the same size is kept rather than reallocated: a prefill overwrites it from position
        0 and nothing beyond the current position is read, and a compiled or recorded decoding step stays
        valid only while its cache tensors are the same objects.
        """
        dtype = dtype or self.dtype
        current = self.layers[0].attention.kv_cache
        if current is None or current.k_cache.shape[0] != batch_size or current.k_cache.dtype != dtype:
            shape = (batch_size, self.config.n_kv_head, self.max_sequence_length, self.config.head_dim)
            for layer in self.layers:
                zeros = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(2)]
                layer.attention.kv_cache = KVCache(*zeros)
        # Its own check: a model that shares its layers with another (`analysis.interpolation`) shares their caches.
        if self.visible_keys is None or self.visible_keys.shape[0] != batch_size:
            self.visible_keys = torch.ones(batch_size, self.max_sequence_length, dtype=torch.bool, device=self.device)
        if self.condition_enters_layers and (
            self.condition_tokens is None or self.condition_tokens.shape[0] != batch_size
        ):
            shape = (batch_size, self.config.cls_token_num)
            self.condition_tokens = torch.zeros(*shape, self.config.dim, dtype=self.dtype, device=self.device)
            self.condition_visible = torch.ones(shape, dtype=torch.bool, device=self.device)

    def clear_cache(self) -> None:
        """Free the KV cache (generation keeps it for the next call of the same batch size)."""
        for layer in self.layers:
            layer.attention.kv_cache = None
        self.visible_keys = None
        self.condition_tokens = self.condition_visible = None

    def prefill(
        self, cond: torch.Tensor, cond_mask: torch.Tensor | None = None, image_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the condition prefix, and the (B, n) first `image_tokens` when given, into the cache in one
        forward; return (B, vocab) float32 logits of image token n (0 without them)."""
        self.check_condition(cond, cond_mask)
        rows, prefix_length = cond.shape[0], self.prefix_length
        embedded, prefix = self._embed_condition(cond)
        if image_tokens is not None and image_tokens.shape[1] > 0:
            prefix = torch.cat([prefix, self.tok_embeddings(image_tokens.to(self.device))], dim=1)
        self.visible_keys.fill_(True)
        if cond_mask is not None and self.prefix_holds_condition:
            self.visible_keys[:rows, :prefix_length] = cond_mask.to(self.device).bool()
        if self.condition_enters_layers:
            self.condition_tokens[:rows] = embedded
            self.condition_visible.fill_(True)
            if cond_mask is not None:
                self.condition_visible[:rows] = cond_mask.to(self.device).bool()
        condition = self._layer_condition(rows)
        positions = torch.arange(prefix.shape[1], device=self.device)
        mask = attention_mask(self.visible_keys[:rows], positions)
        h = self.transformer(prefix, positions, mask, cached=True, condition=condition)
        return self.output(h[:, -1]).float()

    def _layer_condition(self, rows: int) -> LayerCondition | None:
        """The condition the layers read in cached decoding, for the first `rows` rows, as the last prefill wrote."""
        if not self.condition_enters_layers:
            return None
        return LayerCondition.of(self.condition_tokens[:rows], self.condition_visible[:rows], self.modulation)

    def decode_window(self, tokens: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """tokens (b, S) at sequence positions start .. start + S - 1 (prefix included; `start` an int, or a
        one-element int64 tensor on the model's device, as a CUDA graph replays it) -> (b, S, vocab) float32
        logits, each of the token after its position, in one forward; their keys and values go into the cache
        at those positions. Parallel (Jacobi) decoding verifies a window of draft tokens this way; what it writes
        past the tokens it accepts is overwritten before a later step reads it."""
        offsets = torch.arange(tokens.shape[1], device=self.device)
        positions = start.view(1) + offsets if isinstance(start, torch.Tensor) else start + offsets
        rows = tokens.shape[0]
        mask = attention_mask(self.visible_keys[:rows], positions)
        h = self.transformer(
            self.tok_embeddings(tokens), positions, mask, cached=True, condition=self._layer_condition(rows)
        )
        return self.output(h).float()

    def decode_step(self, tokens: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """tokens (b, 1) at sequence `position` (prefix included; an int, or a one-element int64 tensor on the
        model's device) -> (b, vocab) float32 logits of the next token.

        b may be smaller than the cache's batch: the first b rows continue (guidance that has ended
        drops the unconditional half).
        """
        if isinstance(position, torch.Tensor):
            positions = position.view(1)
        else:
            positions = torch.tensor([position], device=self.device)
        rows = tokens.shape[0]
        mask = attention_mask(self.visible_keys[:rows], positions)
        h = self.transformer(
            self.tok_embeddings(tokens), positions, mask, cached=True, condition=self._layer_condition(rows)
        )
        return self.output(h).float()[:, 0]
