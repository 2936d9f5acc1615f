"""Token surgery's speed: one edited code decoded again locally (`llamagen.tokenizer.local_decode`) against the
full decode it stands in for.

Rows: photo-vq and the published VQ-16's architecture (random weights), on scikit-learn's 640x427 china.jpg and
on it resized to 1000x1000 (the apps' upload limit, 1 megapixel), in the dtype the apps load (`dtype="auto"`),
in a process that keeps freed memory, as the demo's does (`keep_freed_memory`).
Columns: the plain full decode; the recorded full decode the Reconstruct tab runs once per image (it keeps the
norms' statistics and the attention layers' keys and values); one local edit, the median over cells in the
middle, at a corner and at an edge; and how far the local edit's pixels are from the full decode of the edited
codes (in this dtype, whose own rounding moves a full decode by a level or two when one code changes).

Run with `make bench`; it prints a table and writes it to benchmarks/results/token_surgery_cpu_DATE.md, which
docs/performance.md cites.
"""

from __future__ import annotations

import datetime
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from decode_speed import cpu_model
from tokenizer_speed import PHOTO, best_seconds, load

from llamagen.data.photos import load_photo
from llamagen.fast.freed_memory import keep_freed_memory
from llamagen.images import tensor_to_uint8
from llamagen.tokenizer import VQModel, vq_preset
from llamagen.tokenizer.local_decode import decode_edit, recorded_decode
from llamagen.tokenizer.reconstruction import tokenize_image

ROOT = Path(__file__).resolve().parents[1]


def cells(rows: int, columns: int) -> list[tuple[int, int]]:
    return [(rows // 2, columns // 2), (0, 0), (rows - 1, columns // 3)]


def measure(name: str, tokenizer: VQModel, size: str, image) -> str:
    codes = tokenize_image(tokenizer, image)
    rows, columns = codes.shape
    full = best_seconds(lambda: tokenizer.detokenize(codes[None]), "cpu")
    kept = recorded_decode(tokenizer, codes)
    recorded = best_seconds(lambda: recorded_decode(tokenizer, codes), "cpu")
    local_times, differences = [], []
    for row, column in cells(rows, columns):
        code = (int(codes[row, column]) + 7919) % tokenizer.config.codebook_size
        start = time.perf_counter()
        local = decode_edit(tokenizer, kept, row, column, code)
        local_times.append(time.perf_counter() - start)
        edited = codes.clone()
        edited[row, column] = code
        reference = tensor_to_uint8(tokenizer.detokenize(edited[None]))[0]
        differences.append(int(np.abs(local.astype(int) - reference.astype(int)).max()))
    local = statistics.median(local_times)
    cells_text = f"{columns}x{rows} = {rows * columns}"
    return (
        f"| {name} | {size} | {str(tokenizer.dtype).removeprefix('torch.')} | {cells_text} | {full:.2f} | "
        f"{recorded:.2f} | {kept.window} | {local:.3f} | {full / local:.0f}x | {max(differences)} |"
    )


HEADER = (
    "| tokenizer | image | dtype | tokens | full decode, s | recorded decode, s | window, tokens "
    "| local edit, s (median) | full / local | local vs full decode, max levels |\n" + "|---" * 10 + "|"
)


def main() -> None:
    torch.set_grad_enabled(False)
    keep_freed_memory()
    photo = load_photo(PHOTO)
    images = {f"{PHOTO} {photo.width}x{photo.height}": photo, "1000x1000": photo.resize((1000, 1000))}
    torch.manual_seed(0)
    lines = []
    print(HEADER, flush=True)
    for name, source in (("photo-vq", "photo-vq"), ("VQ-16 (random weights)", VQModel(vq_preset("VQ-16")))):
        tokenizer = load(source, "auto")
        for size, image in images.items():
            lines.append(measure(name, tokenizer, size, image))
            print(lines[-1], flush=True)
    note = (
        f"Token surgery on {cpu_model()} ({torch.get_num_threads()} threads), torch {torch.__version__}: seconds "
        f"for one image, the best of 3 after a warm-up for the full decodes, one call per cell for the local "
        "edits (the window's tokens on each side of the cell decoded again, from the recorded decode; the window is "
        "the tokenizer's measured `edit_reach`, which the recorded decode's time includes the first time only)."
    )
    out = ROOT / "benchmarks" / "results" / f"token_surgery_cpu_{datetime.date.today().isoformat()}.md"
    out.write_text(f"{note}\n\n{HEADER}\n" + "\n".join(lines) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
