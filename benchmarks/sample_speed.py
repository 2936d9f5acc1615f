"""Sampling speed of `llamagen sample`: images per second at each batch size, with one random generator per
image (what makes image i of a set depend on i alone) against one generator for the batch.

Rows: the embedded class-conditional generators at their recommended guidance, each batch size; the time to draw
and decode `IMAGES` images, the best of `REPEATS`. Run with `make bench`; it prints a table and writes it to
benchmarks/results/sample_cpu_DATE.md (or _gpu_).
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import torch

from llamagen.evaluation.sample_set import image_seed
from llamagen.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("digits-c2i", "shapes-c2i")
BATCH_SIZES = (1, 4, 16, 64)
IMAGES = 64
REPEATS = 2


def images_per_second(pipe, batch_size: int, per_image: bool) -> float:
    classes = pipe.gpt.config.num_classes
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for first in range(0, IMAGES, batch_size):
            indices = range(first, min(first + batch_size, IMAGES))
            seed = [image_seed(0, i) for i in indices] if per_image else first
            pipe(class_labels=[i % classes for i in indices], seed=seed)
        best = min(best, time.perf_counter() - start)
    return IMAGES / best


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = [
        f"# Sampling speed, {device} ({torch.get_num_threads()} threads), {datetime.date.today()}",
        "",
        f"Images per second drawing and decoding {IMAGES} images at the model's recommended guidance, the best of "
        f"{REPEATS}: with a generator per image (`llamagen sample`) and with one for the batch.",
        "",
        "| model | batch | a generator per image | one generator | per image / one |",
        "|---|---|---|---|---|",
    ]
    print("\n".join(lines))
    for name in MODELS:
        pipe = load_pipeline(name, device=device)
        pipe(class_labels=[0], seed=0)  # the first call loads the kernels
        for batch_size in BATCH_SIZES:
            own, shared = (images_per_second(pipe, batch_size, per_image) for per_image in (True, False))
            line = f"| {name} | {batch_size} | {own:.1f} | {shared:.1f} | {own / shared:.2f} |"
            lines.append(line)
            print(line, flush=True)
    out = ROOT / "benchmarks" / "results" / f"sample_{'gpu' if device == 'cuda' else 'cpu'}_{datetime.date.today()}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
