"""Decoding speed of the generator: ours, the original's loop, and the memory-bandwidth bound.

Decoding one token at a time reads every weight of the transformer once per step, so a step cannot
take less than (bytes of weights) / (memory bandwidth). This benchmark measures milliseconds per
generated token for GPT-B with random weights (guidance on: the batch is doubled), and compares:

- ours: `llamagen.generate` with `decoding="plain"` (the model's modules on torch's ops, eager and compiled by
  torch.compile) and with its default, the fastest way `llamagen.fast` knows: on a CPU with llamagen's kernels,
  up to 16 rows, one call of the whole-step kernel; on a GPU, one replay of a CUDA graph of the compiled step;
- (a) the original: a plain re-statement of LlamaGen's decoding loop (torch's own products, a static cache
  indexed by position and attended over its whole length, a boolean causal-mask gather per step, K/V expanded
  with repeat_interleave, top-k by filtering the full vocabulary, softmax over the full vocabulary);
- (b) the bound: bytes of weights read per step / measured memory bandwidth;
- (c) the compute floor: the multiply-adds of a step's products (2 x weights x rows) / the rate of torch's
  product of two large matrices in the same dtype, about what this CPU's vector units can do at all. Batch 1
  is far from it; with guidance, batch 8 multiplies 16 rows by every weight, and it is no longer far.

Run with `make bench`; it prints a table and writes it to benchmarks/results/decode_DEVICE_DATE.md, which
docs/performance.md cites. On a GPU: `python benchmarks/decode_speed.py --device cuda`.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import multiprocessing
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llamagen import generate
from llamagen.fast import huge_pages, kernels
from llamagen.gpt import GPT, gpt_preset
from llamagen.gpt.config import find_multiple
from llamagen.gpt.layers import apply_rope

ROOT = Path(__file__).resolve().parents[1]
CFG_SCALE = 4.0
TOP_K = 2000


# --- (a) the original's decoding loop, restated --------------------------------------------------


@torch.no_grad()
def original_generate(gpt: GPT, labels: torch.Tensor, cfg_scale: float, top_k: int, generator=None) -> torch.Tensor:
    config = gpt.config
    batch, rows = labels.shape[0], 2 * labels.shape[0]
    prefix, steps = config.cls_token_num, config.block_size
    max_len = find_multiple(prefix + steps, 8)
    dtype, device = gpt.dtype, gpt.device
    n_rep = config.n_head // config.n_kv_head
    caches = [
        (
            torch.zeros(rows, config.n_head, max_len, config.head_dim, dtype=dtype, device=device),
            torch.zeros(rows, config.n_head, max_len, config.head_dim, dtype=dtype, device=device),
        )
        for _ in gpt.layers
    ]
    causal_mask = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool, device=device))
    causal_mask = causal_mask.unsqueeze(0).repeat(rows, 1, 1)

    def forward(h: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        mask = causal_mask[:rows, None, input_pos]
        rope = gpt.freqs_cis[input_pos]
        s = h.shape[1]
        for layer, (k_cache, v_cache) in zip(gpt.layers, caches, strict=True):
            attention = layer.attention
            x = layer.attention_norm(h)
            kv = config.n_kv_head * config.head_dim
            q, k, v = F.linear(x, attention.wqkv.weight).split([config.dim, kv, kv], dim=-1)
            q = apply_rope(q.view(rows, s, config.n_head, config.head_dim), rope).transpose(1, 2)
            k = apply_rope(k.view(rows, s, config.n_kv_head, config.head_dim), rope).transpose(1, 2)
            v = v.view(rows, s, config.n_kv_head, config.head_dim).transpose(1, 2)
            k_cache[:, :, input_pos] = k
            v_cache[:, :, input_pos] = v
            keys = k_cache.repeat_interleave(n_rep, dim=1)
            values = v_cache.repeat_interleave(n_rep, dim=1)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            h = h + F.linear(y.transpose(1, 2).contiguous().view(rows, s, config.dim), attention.wo.weight)
            ffn, x = layer.feed_forward, layer.ffn_norm(h)
            h = h + F.linear(F.silu(F.linear(x, ffn.w1.weight)) * F.linear(x, ffn.w3.weight), ffn.w2.weight)
        return F.linear(gpt.norm(h), gpt.output.weight).float()

    def sample(logits: torch.Tensor) -> torch.Tensor:
        cond, uncond = torch.split(logits[:, -1], batch, dim=0)
        logits = uncond + (cond - uncond) * cfg_scale
        if top_k > 0:
            kth = torch.topk(logits, top_k)[0][..., -1, None]
            logits[logits < kth] = -float("Inf")
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)

    null = torch.full_like(labels, config.num_classes)
    prefix_embeddings = gpt.cls_embedding(torch.cat([labels, null]))
    tokens = [sample(forward(prefix_embeddings, torch.arange(prefix, device=device)))]
    input_pos = torch.tensor([prefix], device=device)
    for _ in range(steps - 1):
        x = torch.cat([tokens[-1], tokens[-1]])
        tokens.append(sample(forward(gpt.tok_embeddings(x), input_pos)))
        input_pos += 1
    return torch.cat(tokens, dim=1)


# --- (b) the bound ------------------------------------------------------------------------------


def weight_bytes_per_step(gpt: GPT) -> int:
    """Bytes of weights a decode step reads: everything but the two embedding tables (one row each)."""
    skipped = {"tok_embeddings.weight", "cls_embedding.embedding_table.weight"}
    return sum(p.numel() * p.element_size() for name, p in gpt.named_parameters() if name not in skipped)


def measure_bandwidth_gbs(
    device: str = "cpu", dtype: torch.dtype = torch.float32, megabytes: int = 512, repeats: int = 5
) -> float:
    """Read bandwidth: the best of a few full reductions over a buffer far larger than the caches; on the CPU
    on 2 MB pages like the weights generation reads (`llamagen.fast.huge_pages`), which this machine reads faster."""
    buffer = _bandwidth_buffer(device, dtype, megabytes)
    buffer.sum()
    best = min(_timed(buffer.sum, device) for _ in range(repeats))
    return buffer.nbytes / best / 1e9


@functools.cache  # read around every timed generation: allocated and filled once per process
def _bandwidth_buffer(device: str, dtype: torch.dtype, megabytes: int) -> torch.Tensor:
    count = megabytes * 2**20 // dtype.itemsize
    if device != "cpu":
        return torch.ones(count, dtype=dtype, device=device)
    (buffer,) = huge_pages.zeros([((count,), dtype)])
    return buffer.fill_(1)


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else its architecture."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def measure_matmul_gflops(dtype: torch.dtype, device: str = "cpu", repeats: int = 3) -> float:
    """Multiply-add rate: the best of a few products of two large square matrices (on the CPU MKL in float32,
    oneDNN in bf16), which keep the vector units busy from the caches. A GPU needs larger ones to be busy."""
    size = 2048 if device == "cpu" else 8192
    a, b = torch.randn(2, size, size, device=device).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def compute_floor_ms(gpt: GPT, rows: int, gflops: float) -> float:
    """A step's products at the given rate: every weight multiplies every row (a multiply and an add)."""
    weights = weight_bytes_per_step(gpt) / gpt.dtype.itemsize
    return 2 * weights * rows / (gflops * 1e9) * 1e3


def _timed(function, device: str) -> float:
    """Seconds of one call; on a GPU, until its queued work has finished."""
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    synchronize()
    start = time.perf_counter()
    function()
    synchronize()
    return time.perf_counter() - start


# --- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """How every row is measured (picklable: each row runs in a process of its own)."""

    repeats: int
    skip_original: bool
    device: str


def ms_per_token_in_turns(functions: dict, tokens: int, options: Options) -> dict[str, tuple[float, float]]:
    """Per function, milliseconds per token of the fastest of its repeated calls, after a warm-up (allocator,
    kernels, lazy initialisation, compilation), and the read bandwidth around that call: the higher of a reading
    just before it and one just after. This machine's bandwidth moves between two regimes, about 35 and 60 GB/s,
    from one reading to the next a few seconds later, so the functions are timed in turns, each repeat once
    each: timed one after the other, the regime could flip between two of ours and rank them the wrong way round
    (in one table the one-call step came out 10.8 ms a token against 9.1 compiled; alternating, it was faster in
    each of five pairs, 8.2 against 9.6 on average)."""
    for function in functions.values():
        function()
    timings = {name: [] for name in functions}
    for _ in range(options.repeats):
        for name, function in functions.items():
            before = measure_bandwidth_gbs(options.device)
            seconds = _timed(function, options.device)
            timings[name].append((seconds / tokens * 1e3, max(before, measure_bandwidth_gbs(options.device))))
    return {name: min(measured) for name, measured in timings.items()}


def check_same_tokens(gpt: GPT) -> None:
    """The restated original loop and ours must agree (greedy) before their speeds mean anything."""
    labels = torch.tensor([3, 7])
    ours = generate(gpt, labels, cfg_scale=CFG_SCALE, top_k=1)
    theirs = original_generate(gpt, labels, CFG_SCALE, top_k=1)
    if not torch.equal(ours, theirs):
        raise AssertionError("the restated original loop and ours generate different tokens")


# Our ways of decoding, as the table's columns name them: the plain model, eager and compiled, and generate's
# default.
OURS = ("plain", "compiled", "fastest")


def measure(gpt: GPT, batch: int, options: Options) -> dict:
    """Milliseconds per token of our decoding, plain (eager and compiled) and the fastest way, of the original's
    loop, and the read bandwidth around the fastest of ours."""
    labels = torch.arange(batch, device=gpt.device) % gpt.config.num_classes
    generator = torch.Generator(gpt.device).manual_seed(0)

    def ours(compile: bool, decoding: str):
        def run():
            generate(
                gpt, labels, cfg_scale=CFG_SCALE, top_k=TOP_K, generator=generator, compile=compile, decoding=decoding
            )

        return run

    functions = {
        "plain": ours(compile=False, decoding="plain"),
        "compiled": ours(compile=True, decoding="plain"),
        # On a GPU the fastest is the graphs of the compiled step; on a CPU compile changes nothing where the
        # whole-step kernel serves, and is left out so that the column shows what a generation gets by default.
        "fastest": ours(compile=options.device == "cuda", decoding="fastest"),
    }
    if not options.skip_original:
        functions["original"] = lambda: original_generate(gpt, labels, CFG_SCALE, TOP_K, generator)
    measured = ms_per_token_in_turns(functions, gpt.config.block_size, options)
    fastest_of_ours = min(measured[name] for name in OURS)
    ms = {name: measured[name][0] if name in measured else None for name in (*OURS, "original")}
    return {**ms, "bandwidth": fastest_of_ours[1]}


def random_gpt_b(grid: int) -> GPT:
    """GPT-B with seeded random weights, in float32."""
    torch.manual_seed(0)
    gpt = GPT(gpt_preset("GPT-B", block_size=grid * grid)).eval()
    with torch.no_grad():
        gpt.output.weight.normal_(std=0.02)  # the original's zero init would make every logit equal
    return gpt


def measure_row(grid: int, batch: int, dtype_name: str, options: Options) -> dict:
    """One row of the table, in a process of its own (see `run`). The bandwidth is read around each timed
    generation (`ms_per_token_in_turns`); the multiply-add rate before and after the timings, the higher kept for
    the floor and the lower telling whether the machine was busy with something else during the row."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gpt = random_gpt_b(grid).to(device=options.device, dtype=dtype)
    rates = [measure_matmul_gflops(dtype, options.device)]
    timings = measure(gpt, batch, options)
    rates.append(measure_matmul_gflops(dtype, options.device))
    gflops = max(rates)
    return {
        "grid": grid,
        "batch": batch,
        "dtype": dtype_name,
        "bound": weight_bytes_per_step(gpt) / (timings["bandwidth"] * 1e9) * 1e3,
        "gflops": gflops,
        "slowest_gflops": min(rates),
        "floor": compute_floor_ms(gpt, 2 * batch, gflops),
        **timings,
    }


def run(grids: list[int], batches: list[int], dtypes: list[str], options: Options) -> list[dict]:
    """Every row is measured in a fresh process, as a user's first generation in a new process would run: in one
    process, rows measured after other models had been compiled came out 10-20% slower (not from dynamo's
    guards over the extra graphs: a dozen more graphs on the shared decode step add under 0.01 ms a token)."""
    rows = []
    for grid in grids:
        # The restated loop's logic, checked on the CPU, eagerly, in float32 whatever the device: random logits are
        # full of near ties (bf16 more so), which a GPU's products, summing in another order, could flip.
        check_same_tokens(random_gpt_b(grid))
        for dtype_name in dtypes:
            for batch in batches:
                rows.append(measure_row_apart(grid, batch, dtype_name, options))
                print(format_row(rows[-1]), flush=True)
    return measure_busy_rows_again(rows, options)


def measure_row_apart(grid: int, batch: int, dtype_name: str, options: Options) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure_row, grid, batch, dtype_name, options).result()


# A row whose slower multiply-add reading fell below this share of the best reading of its dtype in the run ran
# while something else had the cores: in one run two rows read 83 and 207 GFLOP/s where the others read 156-188
# (fp32) and 406-426 (bf16), and their steps were 20-30% slower than in the runs before and after.
BUSY_SHARE = 0.75


def measure_busy_rows_again(rows: list[dict], options: Options) -> list[dict]:
    """Each row measured while the machine was busy is measured once more; the less busy of the two is kept."""
    best = {}
    for row in rows:
        best[row["dtype"]] = max(best.get(row["dtype"], 0.0), row["gflops"])
    kept = []
    for row in rows:
        if row["slowest_gflops"] < BUSY_SHARE * best[row["dtype"]]:
            print(f"again, busy at {row['slowest_gflops']:.0f} GFLOP/s: {format_row(row)}", flush=True)
            again = measure_row_apart(row["grid"], row["batch"], row["dtype"], options)
            row = max(row, again, key=lambda candidate: candidate["slowest_gflops"])
            print(format_row(row), flush=True)
        kept.append(row)
    return kept


HEADER = (
    "| grid | batch (x2 guidance) | dtype | ours, plain | ours, plain compiled | ours, fastest | (a) original "
    "| bandwidth, GB/s | (b) bound | matmul, GFLOP/s | (c) compute floor | (a) / ours | ours / (b) "
    "| ours / max(b, c) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def format_row(row: dict) -> str:
    best = min(row[name] for name in OURS)
    original = f"{row['original']:.1f}" if row["original"] else "-"
    speedup = f"{row['original'] / best:.1f}x" if row["original"] else "-"
    return (
        f"| {row['grid']}x{row['grid']} | {row['batch']} | {row['dtype']} | {row['plain']:.1f} "
        f"| {row['compiled']:.1f} | {row['fastest']:.1f} | {original} "
        f"| {row['bandwidth']:.1f} | {row['bound']:.1f} | {row['gflops']:.0f} | {row['floor']:.1f} | {speedup} "
        f"| {best / row['bound']:.2f}x | {best / max(row['bound'], row['floor']):.2f}x |"
    )


# What the table's "fastest" is, on each device.
FASTEST = {
    "cpu": "with llamagen's kernels, one call of the whole-step CPU kernel for up to 16 rows (batch 8 with guidance)",
    "cuda": "one replay of a CUDA graph of the compiled step",
}


def render(rows: list[dict], options: Options, device: str) -> str:
    lines = [
        f"GPT-B (random weights), guidance {CFG_SCALE}, top-k {TOP_K}; device: {device}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. Milliseconds per generated token (a "
        "whole generation / its tokens, best of the repeats after a warm-up that also compiles, the ways of a row "
        "timed in turns); each row runs in "
        "a fresh process, which also measures the read bandwidth its bound divides by (the higher of a reading "
        "just before and one just after the fastest of ours, this machine's bandwidth moving within seconds) and "
        "the multiply-add rate its compute floor divides by; a row during which that rate fell below "
        f"{BUSY_SHARE:.0%} of its dtype's best in the run (the machine busy with something else) was measured once "
        "more and the less busy kept. Ours plain: each step through the model's modules on torch's ops, eager or "
        f"compiled; fastest: what generate does by default, {FASTEST[options.device]}. The ratios use the fastest "
        "of ours.",
        "",
        HEADER,
        *(format_row(row) for row in rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-original", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", help="the table's file (default: benchmarks/results/decode_DEVICE_DATE.md)")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: this machine has no usable CUDA GPU")
        description = f"GPU ({torch.cuda.get_device_name()})"
    else:
        tiles = ", AMX tiles for bf16 products of 4 rows or more" if kernels.cpu_has_tiles() else ""
        description = f"CPU ({cpu_model()}, {torch.get_num_threads()} threads{tiles})"
    today = datetime.date.today().isoformat()
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"decode_{args.device}_{today}.md")
    print(HEADER, flush=True)
    options = Options(args.repeats, args.skip_original, args.device)
    table = render(run(args.grids, args.batches, args.dtypes, options), options, description)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
