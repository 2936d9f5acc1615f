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
from llamagen.generation import generate
from llamagen.gpt import GPT, gpt_preset
from llamagen.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("shapes-c2i", "digits-c2i")
WINDOWS = (0, 4, 8, 16, 32)
IMAGES = 12
STEP_WINDOWS = (1, 2, 4, 8, 16, 32)
STEP_REPEATS = 20


def decoding_row(pipe, window: int, device: str) -> tuple[float, float]:
    """(model calls per image, milliseconds per token) over `IMAGES` images of batch 1."""
    gpt, options = pipe.gpt, pipe.sampling.filled()
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
    """Milliseconds of one cached forward of w tokens for GPT-B at 16x16, bf16, batch 1."""
    torch.manual_seed(0)
    gpt = GPT(gpt_preset("GPT-B", block_size=256)).to(device, torch.bfloat16).eval()
    gpt.setup_cache(1)
    cond = torch.tensor([1], device=device)

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
        one = torch.tensor([[5]], device=device)
        fastest = fast.decoder(gpt, 1).step
        one_call = timed(lambda: fastest(one, gpt.prefix_length + 100))
        single = timed(lambda: gpt.decode_step(one, gpt.prefix_length + 100))
        rows = []
        for window in STEP_WINDOWS:
            tokens = torch.full((1, window), 5, device=device)
            ms = timed(lambda tokens=tokens: gpt.decode_window(tokens, gpt.prefix_length + 100))
            rows.append(f"| {window} | {ms:.2f} | {ms / single:.2f} | {ms / one_call:.2f} | {ms / window:.2f} |")
    return [
        f"A step of one token: {single:.2f} ms through the modules, {one_call:.2f} ms through the fastest step.",
        "",
        "| window | ms per forward | against one token (modules) | against the fastest step | ms per token fed |",
        "|---|---|---|---|---|",
        *rows,
    ]


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = [
        f"# Speculative Jacobi decoding, {device} ({torch.get_num_threads()} threads), {datetime.date.today()}",
        "",
        f"Embedded generators at their recommended sampling settings, batch 1, {IMAGES} images each: model calls "
        "per image after the prefill, tokens accepted per call, milliseconds per token (drawing only, no "
        "decoding to pixels). Window 0 is sequential decoding with the fastest step.",
        "",
        "| model | window | calls per image | tokens per call | ms per token | fewer calls | faster |",
        "|---|---|---|---|---|---|---|",
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
            line = (f"| {name} | {window} | {calls:.1f} | {tokens / calls:.2f} | {ms:.2f} | {base_calls / calls:.2f}x "
                    f"| {base_ms / ms:.2f}x |")  # fmt: skip
            lines.append(line)
            print(line, flush=True)
    step = ["", "GPT-B (random weights), 16x16 tokens, bf16, batch 1: one cached forward of w tokens.", "",
            *step_cost_rows(device)]  # fmt: skip
    print("\n".join(step))
    lines += step
    out = ROOT / "benchmarks" / "results" / f"jacobi_{'gpu' if device == 'cuda' else 'cpu'}_{datetime.date.today()}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
