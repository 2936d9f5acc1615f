"""How fast the products of a decoding step read their weights: torch's own product against llamagen's CPU kernel.

For each weight shape of GPT-B (and its output layer), 2, 8 and 16 rows (batch 1, 4 and 8, doubled by
guidance) times the matrix, in GB/s of weights read, beside the bandwidth a plain reduction reaches. The
matrix is cycled over copies (at least 24, and at least 96 MB: three times this machine's L3 cache), so that its
weights come from memory as a step's do; the copies and the reduction's buffer lie on 2 MB pages, as generation
places the weights (`llamagen.fast.huge_pages`). Then all of a step's matrices one after another, as a step reads
them: read alone (torch's sum of each) and multiplied by 2 rows, beside the bound of a plain reduction. Run with
`make bench`; it prints the tables and writes them to benchmarks/results/small_batch_linear_DATE.md.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from decode_speed import measure_bandwidth_gbs  # this script's folder

from llamagen.fast import huge_pages, kernels

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # GPT-B: dim 768, 12 heads, SwiGLU hidden 2048, vocabulary 16384
    "attention wqkv": (2304, 768),
    "attention wo": (768, 768),
    "feed-forward w1, w3": (2048, 768),
    "feed-forward w2": (768, 2048),
    "output": (16384, 768),
}
MIN_COPIES = 24
MIN_BYTES = 96 * 2**20
ROWS = (2, 8, 16)


def best_seconds(function, repeats: int = 7) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def row(name: str, shape: tuple[int, int], dtype: torch.dtype, rows: int) -> str:
    copies = max(MIN_COPIES, -(-MIN_BYTES // (shape[0] * shape[1] * dtype.itemsize)))
    weights = huge_pages.zeros([(shape, dtype)] * copies)
    for weight in weights:
        weight.copy_(torch.randn(shape))
    x = torch.randn(rows, 1, shape[1]).to(dtype)
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    torch_gbs = nbytes / best_seconds(lambda: [F.linear(x, w) for w in weights]) / 1e9
    kernel = torch.ops.llamagen.small_batch_linear
    kernel_gbs = nbytes / best_seconds(lambda: [kernel(x, w) for w in weights]) / 1e9
    dtype_name = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    speed_up = kernel_gbs / torch_gbs
    return (
        f"| {name} | {shape[0]} x {shape[1]} | {rows} | {dtype_name} | {torch_gbs:.1f} | {kernel_gbs:.1f} "
        f"| {speed_up:.1f}x |"
    )


# A step's products in the order it runs them: per layer wqkv, wo, w1, w3, w2, then the output layer.
STEP_ORDER = [
    *(["attention wqkv", "attention wo", "feed-forward w1, w3", "feed-forward w1, w3", "feed-forward w2"] * 12),
    "output",
]
ROUNDS = 20


def matrices_in_turn() -> list[str]:
    """GPT-B's bf16 matrices of one decoding step (the goal against the bound is bf16's), one after another as a
    step reads them (each a few MB, on 2 MB pages): torch's sum of each, which reads them and does little else,
    against the kernel's products of 2 rows, each round beside a plain reduction of one large buffer before and
    after. A lower bound on a step's products that the bandwidth of one large buffer is not: every matrix starts
    new streams of reads and ends on a join of the threads."""
    dtype = torch.bfloat16
    weights = huge_pages.zeros([(SHAPES[name], dtype) for name in STEP_ORDER])
    for weight in weights:
        weight.copy_(torch.randn(weight.shape))
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    x = {k_in: torch.randn(2, 1, k_in).to(dtype) for k_in in {w.shape[1] for w in weights}}
    kernel = torch.ops.llamagen.small_batch_linear
    lines = [
        f"GPT-B's {len(weights)} matrices of a step in bf16 ({nbytes / 1e6:.0f} MB), one after another as a step reads "
        "them, in rounds: the bandwidth of a plain reduction of one large buffer (the higher of a reading before "
        "and one after the round) and the bound it gives (their bytes / that bandwidth), torch's sum of each "
        "matrix in turn (reading them, little else), and the kernel's products of 2 rows (batch 1 with guidance), "
        "in ms (x the bound), best of 3.",
        "",
        "| round | bandwidth, GB/s | bound, ms | sum of each in turn, ms | products of 2 rows in turn, ms |",
        "|---|---|---|---|---|",
    ]
    for round_ in range(1, ROUNDS + 1):
        before = measure_bandwidth_gbs(dtype=dtype)
        read = best_seconds(lambda: [w.sum() for w in weights], repeats=3)
        products = best_seconds(lambda: [kernel(x[w.shape[1]], w) for w in weights], repeats=3)
        bandwidth = max(before, measure_bandwidth_gbs(dtype=dtype))
        bound = nbytes / bandwidth / 1e6
        lines.append(
            f"| {round_} | {bandwidth:.1f} | {bound:.2f} | {read * 1e3:.2f} ({read * 1e3 / bound:.2f}x) "
            f"| {products * 1e3:.2f} ({products * 1e3 / bound:.2f}x) |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    today = datetime.date.today().isoformat()
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"small_batch_linear_{today}.md"))
    args = parser.parse_args()
    if not kernels.load():
        raise SystemExit("the kernel is not available on this CPU (or did not build): nothing to compare")
    before = {dtype: measure_bandwidth_gbs(dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    rows_of_table = [
        row(name, shape, dtype, rows) for rows in ROWS for dtype in before for name, shape in SHAPES.items()
    ]
    after = {dtype: measure_bandwidth_gbs(dtype=dtype) for dtype in before}
    lines = [
        f"{', '.join(map(str, ROWS))} rows x each weight matrix of GPT-B, at least {MIN_COPIES} copies and "
        f"{MIN_BYTES >> 20} MB cycled; GB/s of weights read (best of 7), weights on 2 MB pages; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; bf16 products of 4 rows or more on AMX tiles: "
        f"{'yes' if kernels.cpu_has_tiles() else 'no, this CPU has none'}. A plain reduction read "
        f"{before[torch.float32]:.1f} GB/s (fp32) and {before[torch.bfloat16]:.1f} (bf16) before the products, "
        f"{after[torch.float32]:.1f} and {after[torch.bfloat16]:.1f} after (this machine's bandwidth moves).",
        "",
        "| product | weight | rows | dtype | torch, GB/s | llamagen kernel, GB/s | speed-up |",
        "|---|---|---|---|---|---|---|",
        *rows_of_table,
    ]
    lines += ["", *matrices_in_turn()]
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
