"""Sampling policy, outside the model: guidance, temperature, top-k, top-p over an explicit KV cache.

Classifier-free guidance (Sec. 3.2 of the paper) runs the conditional and the unconditional
condition as one doubled batch and mixes their logits at every step:
`uncond + (cond - uncond) * cfg_scale`. Both halves are fed the same sampled token.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable

import torch

from llamagen import huge_pages, kernels
from llamagen.gpt.cuda_graphs import graphed_decode_steps, use_cuda_graphs
from llamagen.gpt.model import GPT, RECOMPILE_LIMIT

# Bytes a generation may allocate, as a share of the memory available when it starts.
_MEMORY_SHARE = 0.8


def check_sampling_options(vocab_size: int, cfg_scale: float, temperature: float, top_k: int, top_p: float) -> None:
    # Written so that NaN fails each comparison and is refused, instead of failing at the first draw.
    if not 0 <= cfg_scale < math.inf:
        raise ValueError(f"cfg_scale must be >= 0 (1 is no guidance, 0 is unconditional), got {cfg_scale}")
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise ValueError(f"top_k must be a whole number of tokens, got {top_k!r}")
    if not 0 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be in [0, {vocab_size}] (0 keeps the whole vocabulary), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, vocab) float32 logits -> (B, 1) token ids. `top_k=1` or `temperature=0` is greedy."""
    if top_k == 1 or temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    candidate_ids = None
    if 0 < top_k < logits.shape[-1]:
        # Sample among the k best only: a softmax over k values instead of the whole vocabulary.
        logits, candidate_ids = top_k_candidates(logits, top_k)
    if top_p < 1.0:
        logits = _top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    candidates = torch.multinomial(probs, 1, generator=generator)
    return candidates if candidate_ids is None else candidate_ids.gather(-1, candidates)


def top_k_candidates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, vocab) logits -> the k largest of each row and their token ids, largest first and equal logits by
    ascending id: the first k of a stable descending sort. The draw depends on this order, so it is fixed here
    and the same on every path (torch.topk leaves the order of equal values to its algorithm; bf16 logits
    have many). On the CPU the kernel computes it without sorting the vocabulary; without the kernel, torch's
    ops do (`_top_k_by_threshold`); on a GPU, which sorts a vocabulary quickly, a stable sort does."""
    if kernels.use_top_k(logits):
        return torch.ops.llamagen.top_k(logits, k)
    if logits.device.type == "cpu" and not logits.isnan().any():
        return _top_k_by_threshold(logits, k)
    values, ids = torch.sort(logits, dim=-1, descending=True, stable=True)
    return values[:, :k], ids[:, :k]


def _top_k_by_threshold(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_k_candidates` from torch's ops on a CPU: the k-th largest logit by torch.topk, every logit above it
    and as many equal to it as k leaves room for, lowest ids first, then a stable sort of those k. For k = 2000
    of 16,384 about 0.4 ms a row, against 1.2 for a stable sort of the vocabulary and 0.25 for torch.topk alone,
    whose order of equal values is its own. (NaN, which torch.topk ranks above everything but no comparison
    finds, is left to the sort.)"""
    kth = torch.topk(logits, k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    above, equal = logits > kth, logits == kth
    room = k - above.sum(-1, keepdim=True)
    ids = (above | (equal & (equal.cumsum(-1) <= room))).nonzero()[:, 1].view(-1, k)  # ascending ids per row
    values, order = torch.sort(logits.gather(-1, ids), dim=-1, descending=True, stable=True)
    return values, ids.gather(-1, order)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least top_p (nucleus); of equal
    logits at the edge, those of lower ids (a stable sort, as for top-k)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1, stable=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    # A token is dropped when the tokens before it already reach top_p; the most likely always stays.
    drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
    drop_sorted[:, 1:] = cumulative[:, :-1] > top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def guided(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """(2B, vocab) logits of [conditional; unconditional] rows -> (B, vocab) guided logits."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (cond - uncond) * cfg_scale


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


@torch.no_grad()
def generate(
    gpt: GPT,
    cond: torch.Tensor,
    cond_mask: torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    cfg_interval: int = -1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """Sample `block_size` image tokens per condition -> (B, block_size) int64.

    cond: (B,) class ids (c2i) or (B, cls_token_num, caption_dim) caption features (t2i), with
    `cond_mask` (B, cls_token_num) marking real caption tokens (1) and padding (0).
    cfg_scale: guidance scale; 1 is none (no doubled batch), 0 unconditional, > 1 stronger conditioning.
    cfg_interval: -1 guides every token; n >= 0 guides tokens 0 .. n+1 only (the original's count),
    after which the unconditional half is dropped.
    temperature 0 or top_k 1: greedy. top_k 0 and top_p 1: no truncation.
    generator: a torch.Generator on the model's device, for results that depend only on its seed.
    progress: called as progress(tokens_done, block_size) after every token.
    compile: decode with a torch.compile'd step (faster per token; the first call of a model and batch
    size compiles for a while, later ones reuse it). One compiled generation at a time per process: its steady
    steps set torch.compile's stance, which is global, to skip most guards (`CompiledStep`). On a CPU with
    llamagen's kernels, batches of 1 to 8 rows (4 with guidance) decode with one call of the whole-step kernel
    per token, compiled or not (`GPT.decode_step`), which is faster than the compiled step, and compile is
    ignored. On a GPU every step is replayed from a CUDA graph (`llamagen.gpt.cuda_graphs`), with compile of the
    compiled step.
    The KV cache stays allocated for the next call with as many rows; `gpt.clear_cache()` frees it. A model has
    one cache, so generations on one model from several threads run one after another (`generation_lock`).
    On the CPU, the first call moves the model's weights to 2 MB pages (`llamagen.huge_pages`): the same
    parameters and values at new addresses.
    """
    config = gpt.config
    check_sampling_options(config.vocab_size, cfg_scale, temperature, top_k, top_p)
    gpt.check_condition(cond, cond_mask, allow_null=False)
    if cond.shape[0] == 0:
        raise ValueError("cond is empty: nothing to generate")
    cond = cond.to(gpt.device)
    use_guidance = cfg_scale != 1.0
    if use_guidance and config.model_type == "c2i" and not gpt.cls_embedding.has_null_class:
        raise ValueError("this model has no null class (trained with class_dropout_prob=0): use cfg_scale=1")
    batch = cond.shape[0]
    rows = 2 * batch if use_guidance else batch
    needed, available = estimate_generation_bytes(gpt, rows), available_memory_bytes(gpt.device)
    if needed > _MEMORY_SHARE * available:
        raise ValueError(
            f"a batch of {batch}{' (doubled for guidance)' if use_guidance else ''} needs about "
            f"{needed / 2**30:.1f} GiB, but only {available / 2**30:.1f} GiB is available: use a smaller batch"
        )

    if use_guidance:
        cond = torch.cat([cond, gpt.unconditional(cond)])
        if cond_mask is not None:
            cond_mask = torch.cat([cond_mask, cond_mask])  # the original masks the unconditional half alike
    if cond_mask is not None:
        cond_mask = cond_mask.to(gpt.device)

    def guides(i: int) -> bool:
        """Whether token i is sampled with guidance (from the doubled batch)."""
        return use_guidance and (cfg_interval < 0 or i <= cfg_interval + 1)

    def next_token(logits: torch.Tensor, guide: bool) -> torch.Tensor:
        if guide:
            logits = guided(logits, cfg_scale)
        return sample(logits, temperature, top_k, top_p, generator)

    with generation_lock(gpt):
        return _decode(gpt, cond, cond_mask, batch, guides, next_token, progress, compile)


def _decode(gpt: GPT, cond, cond_mask, batch: int, guides, next_token, progress, compile: bool) -> torch.Tensor:
    """`generate`'s loop once its options are checked: prefill `cond` (`batch` rows, doubled when guided), then
    one token a step over the KV cache."""
    config, rows, use_guidance = gpt.config, cond.shape[0], cond.shape[0] != batch
    tokens = torch.empty(batch, config.block_size, dtype=torch.long, device=gpt.device)
    if gpt.device.type == "cpu":
        kernels.load()  # the decoding steps' products and attention, when this CPU can run them
        huge_pages.move_parameters(gpt)  # every step streams the weights: fewer pages to translate
    gpt.setup_cache(rows)
    # On a GPU, graphs of the step (compiled, with compile). On a CPU, one call of the whole-step kernel leaves
    # nothing for a compiler to fuse or to call faster.
    graphed_steps = graphed_decode_steps(gpt, compile) if use_cuda_graphs(gpt) else None
    one_call = kernels.use_decode_step(gpt, rows) or graphed_steps is not None
    compiled_step = compiled_decode_step(gpt) if compile and not one_call else None
    tokens[:, :1] = next_token(gpt.prefill(cond, cond_mask), use_guidance)
    _report(progress, 1, config.block_size)
    for i in range(1, config.block_size):
        guide = guides(i)
        previous = tokens[:, i - 1 : i]
        step_tokens, position = (torch.cat([previous, previous]) if guide else previous), gpt.prefix_length + i - 1
        if graphed_steps is not None:
            logits = graphed_steps(step_tokens, position)
        elif compiled_step is None:
            logits = gpt.decode_step(step_tokens, position)
        elif i >= 3 and guides(i - 2) == guides(i - 1) == guide:
            # The two steps before ran with these rows, the first position and the first of any other compiled
            # and chosen by full guards: nothing about the call changes now but the position.
            logits = compiled_step.repeat(step_tokens, position)
        else:
            logits = compiled_step(step_tokens, position)
        tokens[:, i : i + 1] = next_token(logits, guide)
        _report(progress, i + 1, config.block_size)
    return tokens


# Per model: the lock its generations hold while they use its KV cache.
_generation_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_generation_locks_guard = threading.Lock()


def generation_lock(gpt: GPT) -> threading.Lock:
    """The lock under which a generation on `gpt` uses its one KV cache: a second thread generating on the same
    model waits for the first, instead of both overwriting the cache's keys and values (wrong tokens, silently)."""
    with _generation_locks_guard:
        return _generation_locks.setdefault(gpt, threading.Lock())


# Per model: the fingerprint of its weights when its decoding step was compiled, and that step.
_compiled_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights_fingerprint(gpt: GPT) -> tuple:
    """Changes whenever a parameter is replaced or modified in place (its version counter moves)."""
    return tuple((p.data_ptr(), p._version) for p in gpt.parameters())


def compiled_decode_step(gpt: GPT) -> CompiledStep:
    """`gpt.decode_step` compiled by torch.compile for inference.

    On the CPU the weights are frozen into the compiled graph (constants, pre-packed for oneDNN) and
    the matrix kernels autotuned: a decoding step multiplies only a few rows by every weight, and the
    default kernels for so few rows stream the weights at well under the memory bandwidth
    (benchmarks/decode_speed.py). In fp32 the autotuner chooses only among inductor's own C++ matrix
    kernels, not MKL's: it times each product alone, its weights hot in the cache, where MKL can win, while
    a decoding step streams every weight from memory, where the C++ kernels read faster (a step of GPT-B,
    16x16, batch 8, took 56 ms with them and 74 with MKL allowed). Not in bf16: there the
    alternative is oneDNN, whose bf16 dot-product instructions the C++ kernels lack, and at batch 8 they
    made a step 2.6-2.9x slower. Where llamagen's CPU kernels are loaded (`llamagen.kernels`), products of at
    most 8 rows (batch 1 to 4 with guidance) go to them instead, so these choices matter for larger batches. The
    graph is also called through inductor's C++ wrapper: a step launches
    a few hundred small kernels, and launching them from Python cost about a fifth of a step
    for GPT-B in bf16. These, and the recompilation limit, are settings read whenever a graph compiles,
    recompilations mid-generation included, so they are patched around each call that may compile
    (`CompiledStep`) rather than set globally.
    Frozen weights would go stale if the model's weights changed: then everything compiled is dropped
    and the step compiles again.
    """
    fingerprint = _weights_fingerprint(gpt)
    known = _compiled_steps.get(gpt)
    if known is not None and known[0] == fingerprint:
        return known[1]
    if known is not None:
        torch._dynamo.reset()  # the frozen constants are the old weights
    on_cpu = gpt.device.type == "cpu"
    # The step's elementwise kernels work on a few thousand values: inductor would still split each between the
    # threads, and starting and joining them costs more than the work (about 0.2 ms a step for GPT-B).
    settings = {"freezing": True, "cpp_wrapper": True, "cpp.min_chunk_size": 1 << 16} if on_cpu else {}
    if on_cpu and gpt.dtype == torch.float32:
        settings["max_autotune_gemm_backends"] = "CPP"
    # Without CUDA graphs on the CPU: asking for them there only logs, every compilation, that they were skipped.
    compiled = torch.compile(gpt.decode_step, mode="max-autotune-no-cudagraphs" if on_cpu else None)
    step = CompiledStep(compiled, {"recompile_limit": RECOMPILE_LIMIT}, settings)
    _compiled_steps[gpt] = (fingerprint, step)
    return step


class CompiledStep:
    """A compiled decoding step, called as `step(tokens, position)`, or as `step.repeat(tokens, position)` for a
    call like the two before it.

    A plain call patches the settings a compilation reads and runs all of dynamo's guards: some four thousand
    checks of the model's modules, tensors and settings, 0.2-0.3 ms for GPT-B on this CPU, about 3% of a bf16
    step at batch 1 (and 45 us more to patch the settings). `repeat` is for a generation's steady state: the
    same model, rows and cache as the steps before, only the position moving (dynamic since the second step).
    It runs only the guards that tell the compiled graphs apart (torch's `skip_guard_eval_unsafe`, safe only
    where nothing would recompile) and patches nothing, since nothing compiles.
    """

    def __init__(self, compiled: Callable, dynamo_settings: dict, inductor_settings: dict) -> None:
        self._compiled = compiled
        self._dynamo_settings = dynamo_settings
        self._inductor_settings = inductor_settings

    def __call__(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        from torch._dynamo import config as dynamo_config
        from torch._inductor import config as inductor_config  # imported on first use: it is large

        with dynamo_config.patch(self._dynamo_settings), inductor_config.patch(self._inductor_settings):
            return self._compiled(tokens, position)

    def repeat(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return self._compiled(tokens, position)


def _report(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
