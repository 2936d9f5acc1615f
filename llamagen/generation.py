"""`generate`: sample image tokens from the generator, one at a time over its KV cache (Sec. 3.2 of the paper).

Prefill the condition, then a loop of three small steps per token: the model's logits (`decoder.step`),
classifier-free guidance (`guided`), a draw (`sample`). How each decoding step runs is chosen once, before the
loop, by `llamagen.fast.decoder`: the same logits as the model's modules, faster.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence

import torch

from llamagen import fast
from llamagen.gpt.guidance_schedules import Schedule, guidance_scales
from llamagen.gpt.jacobi import jacobi_decode
from llamagen.gpt.model import GPT
from llamagen.gpt.sampling import check_sampling_options, guided, sample

# Bytes a generation may allocate, as a share of the memory available when it starts.
_MEMORY_SHARE = 0.8


@torch.no_grad()
def generate(
    gpt: GPT,
    cond: torch.Tensor,
    cond_mask: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    cfg_interval: int = -1,
    cfg_schedule: Schedule = "constant",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    progress: Callable[[int, int], None] | None = None,
    compile: bool = False,
    decoding: str = "fastest",
    prefix_tokens: torch.Tensor | None = None,
    jacobi_window: int = 0,
) -> torch.Tensor:
    """Sample `block_size` image tokens per condition -> (B, block_size) int64; with `prefix_tokens`, keep them
    as the image's first tokens and sample the rest (completion).

    Args:
        gpt: the generator, e.g. `llamagen.load_gpt("digits-c2i")`.
        cond: (B,) class ids (c2i), e.g. `torch.tensor([3, 7])`, or (B, cls_token_num, caption_dim) caption
            features (t2i) from a text encoder.
        cond_mask: (B, cls_token_num) for captions: 1 at real caption tokens, 0 at padding; None for classes.
        cfg_scale: classifier-free guidance scale; 1 is none (no doubled batch), 0 is unconditional, above 1
            conditions more strongly (the paper samples ImageNet at 1.75-2.0).
        cfg_interval: -1 guides every token; n >= 0 guides tokens 0 .. n+1 only (the original's count), after
            which the unconditional half is dropped, e.g. 40.
        cfg_schedule: the scale of each token (`llamagen.gpt.guidance_schedules`): "constant" (`cfg_scale` at
            every token, the original's), "linear" (from 1 at the first token to `cfg_scale` at the last, as
            VAR), "reverse" (from `cfg_scale` down to 1), "first-half" (`cfg_scale` on the first half of the
            tokens, then 1), or a callable `(token_index, token_count) -> scale`.
        temperature: divides the logits; 1 samples the model's distribution, 0 is greedy.
        top_k: sample among the k most likely tokens only, e.g. 2000; 0 keeps the whole vocabulary, 1 is greedy.
        top_p: sample among the most likely tokens whose probabilities reach p, e.g. 0.95; 1 keeps them all.
        generator: a `torch.Generator` on the model's device, e.g. `torch.Generator().manual_seed(0)`: the tokens
            then depend only on its seed; or one per image, each image's draws then its own whatever the batch.
        progress: called as `progress(tokens_done, block_size)` after every token, e.g. to drive a progress bar.
        compile: compile the decoding step with torch.compile where the modules run it (the first call of a model
            and batch size compiles for a while, later ones reuse it; `llamagen.fast.compiled`).
        decoding: "fastest" (what `llamagen.fast.decoder` measures fastest for the device, batch and dtype) or
            "plain" (the model's modules and torch's ops only): the same tokens, up to rounding.
        prefix_tokens: (B, n) int64 image tokens, 0 <= n <= block_size, e.g. the first rows of a tokenized image
            (`tokenizer.tokenize(images).flatten(1)[:, :n]`): kept as the first n tokens and prefilled with the
            condition in one forward; tokens n onwards are sampled after them, each at its own place in the
            guidance schedule. The same seed draws the same tokens as without a prefix when n is 0.
        jacobi_window: 0 decodes one token a step; w >= 1 verifies a window of w draft tokens per model call
            (speculative Jacobi decoding, `llamagen.gpt.jacobi`): the same distribution of images in fewer calls,
            and with greedy sampling the same tokens.

    The KV cache stays allocated for the next call with as many rows; `gpt.clear_cache()` frees it. A model has
    one cache, so generations on one model from several threads run one after another (`generation_lock`).
    """
    check_sampling_options(gpt.config.vocab_size, cfg_scale, temperature, top_k, top_p)
    if isinstance(jacobi_window, bool) or not isinstance(jacobi_window, int) or jacobi_window < 0:
        raise ValueError(f"jacobi_window must be a whole number of tokens >= 0 (0 decodes one at a time), "
                         f"got {jacobi_window!r}")  # fmt: skip
    scales = guidance_scales(cfg_schedule, cfg_scale, gpt.config.block_size)
    # Both halves run for every guided token, even where its scale is 1, so that the unconditional half's
    # cache holds every token for the guided ones after it.
    guidance = any(scale != 1.0 for scale in scales)
    cond, cond_mask = _doubled_for_guidance(gpt, cond, cond_mask, guidance)
    batch, rows = cond.shape[0] // (2 if guidance else 1), cond.shape[0]
    kept = _checked_prefix(gpt, prefix_tokens, batch)
    if isinstance(generator, Sequence) and len(generator) != batch:
        raise ValueError(f"{len(generator)} generators for {batch} images: give one, or one per image")
    check_memory(gpt, rows, guidance)
    tokens = torch.empty(batch, gpt.config.block_size, dtype=torch.long, device=gpt.device)
    if kept:
        tokens[:, :kept] = prefix_tokens.to(gpt.device)
    if kept == gpt.config.block_size:
        return tokens
    with generation_lock(gpt):
        gpt.setup_cache(rows)
        decoder = fast.decoder(gpt, rows, compile, decoding, window=max(jacobi_window, 1))  # before the prefill
        logits = gpt.prefill(cond, cond_mask, torch.cat([tokens[:, :kept]] * (rows // batch)))
        if progress is not None and kept:
            progress(kept, gpt.config.block_size)
        if jacobi_window:
            guided_scales = [scale if guidance and (cfg_interval < 0 or i <= cfg_interval + 1) else None
                             for i, scale in enumerate(scales)]  # fmt: skip
            jacobi_decode(decoder.window, gpt.prefix_length, tokens, kept, logits, jacobi_window, guided_scales,
                          temperature, top_k, top_p, generator, progress, decoder.top_k)  # fmt: skip
            return tokens
        for i in range(kept, gpt.config.block_size):
            guide = guidance and (cfg_interval < 0 or i <= cfg_interval + 1)
            if i > kept:
                previous = tokens[:, i - 1 : i]
                logits = decoder.step(torch.cat([previous, previous]) if guide else previous, gpt.prefix_length + i - 1)
            if guide:
                logits = guided(logits, scales[i])
            tokens[:, i : i + 1] = sample(logits, temperature, top_k, top_p, generator, decoder.top_k)
            if progress is not None:
                progress(i + 1, gpt.config.block_size)
    return tokens


def _checked_prefix(gpt: GPT, prefix_tokens: torch.Tensor | None, batch: int) -> int:
    """How many image tokens a generation keeps from `prefix_tokens` (0 without them), refusing what the model
    cannot continue before any work."""
    if prefix_tokens is None:
        return 0
    block_size, vocab_size = gpt.config.block_size, gpt.config.vocab_size
    if prefix_tokens.dim() != 2 or prefix_tokens.shape[0] != batch:
        raise ValueError(f"prefix_tokens must be (batch, n) = ({batch}, n), one row per condition; "
                         f"got shape {tuple(prefix_tokens.shape)}")  # fmt: skip
    if prefix_tokens.shape[1] > block_size:
        raise ValueError(f"prefix_tokens holds {prefix_tokens.shape[1]} tokens, but an image of this model has "
                         f"{block_size}")  # fmt: skip
    if prefix_tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"prefix_tokens must be integer token ids, got {prefix_tokens.dtype}")
    if prefix_tokens.numel() and (int(prefix_tokens.min()) < 0 or int(prefix_tokens.max()) >= vocab_size):
        raise ValueError(f"prefix_tokens holds ids from {int(prefix_tokens.min())} to {int(prefix_tokens.max())}, "
                         f"but this model's codebook has {vocab_size} (0 to {vocab_size - 1}): are they another "
                         "tokenizer's?")  # fmt: skip
    return prefix_tokens.shape[1]


def _doubled_for_guidance(
    gpt: GPT, cond: torch.Tensor, cond_mask: torch.Tensor | None, guidance: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The checked condition on the model's device, with the unconditional rows after the conditional ones when
    there is `guidance`."""
    gpt.check_condition(cond, cond_mask, allow_null=False)
    if cond.shape[0] == 0:
        raise ValueError("cond is empty: nothing to generate")
    if guidance and gpt.config.model_type == "c2i" and not gpt.cls_embedding.has_null_class:
        raise ValueError("this model has no null class (trained with class_dropout_prob=0): use cfg_scale=1")
    cond = cond.to(gpt.device)
    cond_mask = None if cond_mask is None else cond_mask.to(gpt.device)
    if guidance:
        cond = torch.cat([cond, gpt.unconditional(cond)])
        if cond_mask is not None:
            cond_mask = torch.cat([cond_mask, cond_mask])  # the original masks the unconditional half alike
    return cond, cond_mask


def check_memory(gpt: GPT, rows: int, guidance: bool) -> None:
    """Refuse a generation that would not fit, before allocating anything."""
    needed, available = estimate_generation_bytes(gpt, rows), available_memory_bytes(gpt.device)
    if needed > _MEMORY_SHARE * available:
        batch = rows // 2 if guidance else rows
        raise ValueError(
            f"a batch of {batch}{' (doubled for guidance)' if guidance else ''} needs about "
            f"{needed / 2**30:.1f} GiB, but only {available / 2**30:.1f} GiB is available: use a smaller batch"
        )


def fitting_batch_size(gpt: GPT, guidance: bool, largest: int = 256) -> int:
    """The largest power of two up to `largest` whose generation fits in the memory available now (at least 1:
    a batch of one that does not fit is refused by `check_memory` when it runs)."""
    available = _MEMORY_SHARE * available_memory_bytes(gpt.device)
    batch = 1
    while batch * 2 <= largest and estimate_generation_bytes(gpt, batch * 2 * (2 if guidance else 1)) <= available:
        batch *= 2
    return batch


def estimate_generation_bytes(gpt: GPT, rows: int) -> int:
    """Memory a generation of `rows` sequences allocates: the KV cache and a few (rows x vocab) logits."""
    config = gpt.config
    element = torch.tensor([], dtype=gpt.dtype).element_size()
    cache = 2 * config.n_layer * rows * config.n_kv_head * gpt.max_sequence_length * config.head_dim * element
    activations = rows * gpt.prefix_length * (4 * config.dim + config.ffn_hidden_dim * 2) * 4
    return cache + activations + 4 * rows * config.vocab_size * 4


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 2**63 - 1  # no way to tell: do not refuse


# Per model: the lock its generations hold while they use its KV cache.
_generation_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_generation_locks_guard = threading.Lock()


def generation_lock(gpt: GPT) -> threading.Lock:
    """The lock under which a generation on `gpt` uses its one KV cache: a second thread generating on the same
    model waits for the first, instead of both overwriting the cache's keys and values (wrong tokens, silently)."""
    with _generation_locks_guard:
        return _generation_locks.setdefault(gpt, threading.Lock())
