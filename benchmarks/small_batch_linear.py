"""How fast the products of a decoding step read their weights: torch's own product against llamagen's CPU kernel.

For each weight shape of GPT-B (and its output layer), 2 and 8 rows (batch 1 and batch 4, doubled by
guidance) times the matrix, in GB/s of weights read, beside the bandwidth a plain reduction reaches. The
matrix is cycled over copies (at least 24, and at least 96 MB: three times this machine's L3 cache), so that its
weights come from memory as a step's do; the copies and the reduction's buffer lie on 2 MB pages, as generation
places the weights (`llamagen.huge_pages`). Run with `make bench`; it prints a table and writes it to
benchmarks/results/small_batch_linear.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from decode_speed import measure_bandwidth_gbs  # this script's folder

from llamagen import huge_pages, kernels

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
ROWS = (2, 8)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "small_batch_linear.md"))
    args = parser.parse_args()
    if not kernels.load():
        raise SystemExit("the kernel is not available on this CPU (or did not build): nothing to compare")
    before = {dtype: measure_bandwidth_gbs(dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    rows_of_table = [
        row(name, shape, dtype, rows) for rows in ROWS for dtype in before for name, shape in SHAPES.items()
    ]
    after = {dtype: measure_bandwidth_gbs(dtype=dtype) for dtype in before}
    lines = [
        f"{' and '.join(map(str, ROWS))} rows x each weight matrix of GPT-B, at least {MIN_COPIES} copies and "
        f"{MIN_BYTES >> 20} MB cycled; GB/s of weights read (best of 7), weights on 2 MB pages; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. A plain reduction read "
        f"{before[torch.float32]:.1f} GB/s (fp32) and {before[torch.bfloat16]:.1f} (bf16) before the products, "
        f"{after[torch.float32]:.1f} and {after[torch.bfloat16]:.1f} after (this machine's bandwidth moves).",
        "",
        "| product | weight | rows | dtype | torch, GB/s | llamagen kernel, GB/s | speed-up |",
        "|---|---|---|---|---|---|---|",
        *rows_of_table,
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
