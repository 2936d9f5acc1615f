"""Speculative Jacobi decoding keeps the distribution of images: the embedded class generators at their cards'
settings, `IMAGES` images a way (each class alike), sequential decoding beside Jacobi windows, each set read by
the model's judge: class accuracy, FID in the judge's leading axes against held-out real images (its floor: a
second real set of the same size), precision and recall, each with its 95% interval, and a permutation test of
the per-position token histograms against sequential decoding (images reassigned within their class,
`llamagen.analysis.statistics.token_histograms_differ`). Two rows calibrate the reading: sequential decoding
drawn again with another seed (what chance alone moves) and at temperature 0.75 (a small change the measures
must see). Run with `make bench`; it prints the table and writes benchmarks/results/jacobi_quality_cpu_DATE.md
(or _gpu_).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import torch

from llamagen.analysis.statistics import token_histograms_differ
from llamagen.evaluation.generation import condition_labels, score_images
from llamagen.evaluation.judges import load_judge
from llamagen.generation import generate
from llamagen.pipeline import decode_tokens, load_pipeline

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"shapes-c2i": "shapes", "digits-c2i": "digits"}  # generator: its judge
IMAGES = 2000
BATCH = 250
# (label, seed, changes to the card's settings); the first row is the reference of the histogram tests.
WAYS = (
    ("sequential", 0, {}),
    ("sequential, another seed", 1, {}),
    ("Jacobi, window 4", 2, {"jacobi_window": 4}),
    ("Jacobi, window 8", 3, {"jacobi_window": 8}),
    ("sequential at temperature 0.75 (control)", 4, {"temperature": 0.75}),
)


def sampled(pipe, labels: torch.Tensor, seed: int, changes: dict) -> torch.Tensor:
    options = {**pipe.sampling.values(), **changes}
    batches = []
    for start in range(0, len(labels), BATCH):
        generator = torch.Generator(pipe.device).manual_seed(seed * 1_000_000 + start)
        batches.append(generate(pipe.gpt, labels[start : start + BATCH], **options, generator=generator).cpu())
    return torch.cat(batches)


def interval(measure, digits: int = 3) -> str:
    return f"{measure.value:.{digits}f} [{measure.low:.{digits}f}, {measure.high:.{digits}f}]"


def model_rows(name: str, kind: str, device: str) -> list[str]:
    pipe = load_pipeline(name, device=device)
    judge = load_judge(f"{kind}-judge", device=device)
    labels = torch.arange(IMAGES) % pipe.gpt.config.num_classes
    stated = condition_labels(kind, labels)
    rows, reference = [], None
    for label, seed, changes in WAYS:
        tokens = sampled(pipe, labels, seed, changes)
        with torch.no_grad():
            images = torch.cat([decode_tokens(pipe.tokenizer, tokens[i : i + BATCH].to(device)).cpu()
                                for i in range(0, IMAGES, BATCH)])  # fmt: skip
            scores = score_images(judge, kind, images.to(device), stated, labels)
        if reference is None:
            reference, test = tokens, "-"
        else:
            test = f"{token_histograms_differ(reference, tokens, (labels, labels)).p_value:.3f}"
        row = (f"| {name} | {label} | {interval(scores.accuracy['class'])} | {interval(scores.fid, 2)} "
               f"(floor {scores.floor['fid']:.2f}) | {interval(scores.precision)} | {interval(scores.recall)} | "
               f"{test} |")  # fmt: skip
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = [
        f"# Speculative Jacobi decoding keeps the distribution, {device}, {datetime.date.today()}",
        "",
        f"{IMAGES} images a way at the cards' settings, each class alike; 95% intervals in brackets. The last "
        "column: the permutation test's p-value of the per-position token histograms against the first row "
        "(999 reassignments within classes: 0.001 is its floor).",
        "",
        "| model | way | class accuracy | FID, judge's axes | precision | recall | token histograms, p |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines))
    for name, kind in MODELS.items():
        lines += model_rows(name, kind, device)
    out = ROOT / "benchmarks" / "results"
    out = out / f"jacobi_quality_{'gpu' if device == 'cuda' else 'cpu'}_{datetime.date.today()}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
