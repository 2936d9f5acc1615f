"""Speculative Jacobi decoding against one token per model call.

Two tables. First, the embedded generators at their recommended sampling settings, batch 1, `IMAGES` images
(seeds 0 ..): model calls per image (after the prefill), tokens accepted per call and milliseconds per token for
each window size, beside sequential decoding (window 0, the fastest step `llamagen.fast` has) in the same run.
Second, GPT-B with random weights at 16x16 tokens in bf16: what a forward of w tokens over the cache costs
against one of a single token (the model's modules and the one-call kernel), the figure that says how many
tokens a call must accept to break even. Run with `make bench`; it prints both and writes them to
benchmarks/results/jacobi_cpu_DATE.md (or _gpu_).
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import torch

from llamagen import fast
from llamagen.fast import one_call
from llamagen.generation import generate
from llamagen.gpt import GPT, gpt_preset
from llamagen.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("shapes-c2i", "digits-c2i")
WINDOWS = (0, 2, 3, 4, 8, 16)
IMAGES = 12
STEP_WINDOWS = (1, 2, 4, 8, 16, 32)
STEP_REPEATS = 20


def decoding_row(pipe, window: int, device: str) -> tuple[float, float]:
    """(model calls per image, milliseconds per token) over `IMAGES` images of batch 1."""
    gpt, options = pipe.gpt, pipe.sampling.values()
    reports = []
    start = time.perf_counter()
    for seed in range(IMAGES):
        cond, cond_mask, _, _ = pipe.encode_conditions(class_labels=[seed % gpt.config.num_classes])
        generator = torch.Generator(device).manual_seed(seed)
        generate(gpt, cond, cond_mask, **options, generator=generator, jacobi_window=window,
                 progress=lambda done, total: reports.append(done))  # fmt: skip
    seconds = time.perf_counter() - start
    # progress is reported after every model call; a Jacobi generation also reports its first token, drawn from
    # the prefill's logits, before any call.
    calls = len(reports) - (IMAGES if window else 0)
    return calls / IMAGES, 1000 * seconds / (IMAGES * gpt.config.block_size)


def step_cost_rows(device: str) -> list[str]:
    """Milliseconds of one cached forward of w tokens for GPT-B at 16x16, bf16, batch 1 with guidance (2 rows,
    as sampling runs it), through the modules and, on a CPU with the kernels, the one-call kernel."""
    torch.manual_seed(0)
    gpt = GPT(gpt_preset("GPT-B", block_size=256)).to(device, torch.bfloat16).eval()
    gpt.setup_cache(2)
    cond = torch.tensor([1, gpt.config.num_classes], device=device)  # a class and the null class

    def timed(call) -> float:
        call()
        best = float("inf")
        for _ in range(STEP_REPEATS):
            start = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - start)
        return 1000 * best

    with torch.no_grad():
        gpt.prefill(cond)
        fastest = fast.decoder(gpt, 2)
        kernel = one_call.OneCallStep(gpt) if one_call.serves(gpt, 2) else None
        position = gpt.prefix_length + 100
        step = timed(lambda: fastest.step(torch.full((2, 1), 5, device=device), position))
        rows = []
        for window in STEP_WINDOWS:
            tokens = torch.full((2, window), 5, device=device)
            modules = timed(lambda tokens=tokens: gpt.decode_window(tokens, position))
            ways = [modules]
            if kernel is not None:
                ways.append(timed(lambda tokens=tokens: kernel.window(tokens, position)))
            best = min(ways)
            cells = " | ".join(f"{ms:.2f}" for ms in ways)
            rows.append(f"| {window} | {cells} | {best / step:.2f} | {best / window:.2f} |")
    kernel_column = "" if kernel is None else " one-call kernel, ms |"
    return [
        f"A step of one token (2 rows) through the fastest step: {step:.2f} ms. Tokens a window must accept per "
        "call to break even: the cost against a step.",
        "",
        f"| window | modules, ms |{kernel_column} cost against a step | ms per token fed |",
        f"|---|---|{'---|' if kernel else ''}---|---|",
        *rows,
    ]


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = [
        f"# Speculative Jacobi decoding, {device} ({torch.get_num_threads()} threads), {datetime.date.today()}",
        "",
        f"Embedded generators at their recommended sampling settings, batch 1, {IMAGES} images each: model calls "
        "per image after the prefill, tokens accepted per call, milliseconds per call (the window's forward and "
        "its acceptance tests) and per token (drawing only, no decoding to pixels). Window 0 is sequential "
        "decoding with the fastest step.",
        "",
        "| model | window | calls per image | tokens per call | ms per call | ms per token | fewer calls | faster |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines))
    for name in MODELS:
        pipe = load_pipeline(name, device=device)
        pipe(class_labels=[0], seed=0)  # the first call loads the kernels
        tokens = pipe.gpt.config.block_size
        base_calls = base_ms = None
        for window in WINDOWS:
            calls, ms = decoding_row(pipe, window, device)
            base_calls, base_ms = (calls, ms) if window == 0 else (base_calls, base_ms)
            line = (f"| {name} | {window} | {calls:.1f} | {tokens / calls:.2f} | {ms * tokens / calls:.2f} | {ms:.2f} "
                    f"| {base_calls / calls:.2f}x | {base_ms / ms:.2f}x |")  # fmt: skip
            lines.append(line)
            print(line, flush=True)
    title = "GPT-B (random weights), 16x16 tokens, bf16, batch 1 with guidance: one cached forward of w tokens a row."
    step = ["", title, "", *step_cost_rows(device)]
    print("\n".join(step))
    lines += step
    out = ROOT / "benchmarks" / "results" / f"jacobi_{'gpu' if device == 'cuda' else 'cpu'}_{datetime.date.today()}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
