"""Tokenizer speed: encode and decode, ours in float32 and in bf16, the original's way, and the compute floor.

Encoding and decoding are convolutions (and a few attention layers at the lowest resolution): compute-bound, so
the floor of a call is its multiply-adds (counted by torch's FlopCounterMode) / the rate of torch's product of
two large matrices in the same dtype, measured in the same run. Rows: the published VQ-16's architecture (random
weights) at 256 and 512 pixels, and each embedded tokenizer at 256 and on a 640x427 photo (scikit-learn's
china.jpg, padded to the downsample factor). Columns:

- (a) the original's way: float32, activations in torch's default layout, attention through an explicit
  (positions x positions) softmax of `bmm` products, as taming-transformers' AttnBlock computes it;
- ours, float32 and bf16, as `load_tokenizer` gives them on a CPU (convolution weights channels-last, so
  oneDNN keeps every activation in its own layout; GroupNorm and the SiLU after it in llamagen's kernel, its
  statistics in float32 (on a GPU, torch's kernel, which sums them in float32); attention by
  scaled_dot_product_attention);
- (b) ours in bf16 with glibc's default of handing large freed blocks back to the system, measured first: every
  other column runs in a process that keeps freed memory, as the llamagen command does;
- (c) the time of bf16's convolutions alone against the floor of their own multiply-adds: how near oneDNN's
  kernels come to the product's rate, which the rest of a call (norms, attention, additions) can only add to;
- agreement of bf16 with float32 on the trained tokenizers: PSNR of the bf16 decode of float32's codes
  against the float32 decode, and the share of an image's codes that bf16's encoder picks as float32's does.

Then `llamagen reconstruct` of the photo end to end (a new process reading a PNG file and writing the original
beside its reconstruction), beside the import of torch alone: what a user waits for at the command line.

Run with `make bench` (a few minutes); it prints a table and writes it to
benchmarks/results/tokenizer_cpu_DATE.md, which docs/performance.md cites. On a GPU:
`python benchmarks/tokenizer_speed.py --device cuda --batch 16` (tokenizer_gpu_DATE.md; one image per call
leaves most of a GPU idle between kernel launches).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from decode_speed import _timed, cpu_model, measure_matmul_gflops
from torch.utils.flop_counter import FlopCounterMode

from llamagen.data.photos import load_photo
from llamagen.fast.freed_memory import keep_freed_memory
from llamagen.images import pil_to_tensor
from llamagen.metrics import psnr
from llamagen.tokenizer import VQModel, vq_preset
from llamagen.tokenizer.autoencoder import AttnBlock
from llamagen.tokenizer.loading import load_tokenizer
from llamagen.tokenizer.reconstruction import pad_to_multiple

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 3
PHOTO = "china"  # 640x427


def original_attention(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """taming-transformers' single-head attention: the whole (positions x positions) matrix, softmax, bmm."""
    b, c, h, w = x.shape
    y = block.norm(x)
    q = block.q(y).reshape(b, c, h * w).transpose(1, 2)  # (b, hw, c)
    k = block.k(y).reshape(b, c, h * w)  # (b, c, hw)
    weights = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)  # (b, hw query, hw key)
    out = torch.bmm(block.v(y).reshape(b, c, h * w), weights.transpose(1, 2)).reshape(b, c, h, w)
    return x + block.proj_out(out)


def the_originals_way(model: VQModel) -> VQModel:
    """A float32 copy in torch's default layout whose attention layers compute as the original's."""
    original = VQModel(model.config).eval().to(model.device)
    original.load_state_dict({name: tensor.float().contiguous() for name, tensor in model.state_dict().items()})
    for module in original.modules():
        if isinstance(module, AttnBlock):
            module.forward = types.MethodType(original_attention, module)
    return original


def best_seconds(function, device: str) -> float:
    function()  # warm-up: oneDNN (cuDNN) picks and caches its kernels
    return min(_timed(function, device) for _ in range(REPEATS))


def convolution_seconds(function) -> float:
    """Seconds the CPU's convolutions take in one call (torch's profiler, their own time), the best of REPEATS:
    the part of a call that oneDNN's kernels, not this project's code, decide."""
    times = []
    for _ in range(REPEATS):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            function()
        events = [event for event in profile.key_averages() if event.key == "aten::mkldnn_convolution"]
        times.append(sum(event.self_cpu_time_total for event in events) / 1e6)
    return min(times)


def flops(function) -> tuple[int, int]:
    """The multiply-adds (2 FLOP each) of one call: all of them, and the convolutions'."""
    with FlopCounterMode(display=False) as counter:
        function()
    by_op = counter.get_flop_counts()["Global"]
    return counter.get_total_flops(), sum(count for op, count in by_op.items() if "convolution" in str(op))


def inputs(downsample: int, batch: int, device: str) -> dict[str, torch.Tensor]:
    """The photo at each size, `batch` copies of it on `device`."""
    photo = pil_to_tensor(load_photo(PHOTO))
    square = torch.nn.functional.interpolate(photo, size=(512, 512), mode="bilinear", antialias=True).clamp(-1, 1)
    images = {
        "256x256": square[..., ::2, ::2],
        "512x512": square,
        f"{PHOTO} {photo.shape[-1]}x{photo.shape[-2]}": photo,
    }
    return {
        size: pad_to_multiple(image.repeat(batch, 1, 1, 1), downsample).to(device) for size, image in images.items()
    }


def to_pixels(images: torch.Tensor):
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).cpu().numpy()


def steps(images: torch.Tensor, codes: torch.Tensor) -> dict:
    return {"encode": lambda model: model.tokenize(images), "decode": lambda model: model.detokenize(codes)}


@torch.no_grad()
def bf16_seconds(bf16: VQModel, images: torch.Tensor) -> dict[str, float]:
    """Encode and decode seconds of the bf16 tokenizer."""
    return {step: best_seconds(lambda run=run: run(bf16), bf16.device.type)
            for step, run in steps(images, bf16.tokenize(images)).items()}  # fmt: skip


@torch.no_grad()
def measure(name: str, fp32: VQModel, bf16: VQModel, size: str, images: torch.Tensor, rates: dict) -> dict:
    original, device = the_originals_way(fp32), fp32.device.type
    codes = fp32.tokenize(images)
    row = {"tokenizer": name, "input": size, "tokens": f"{codes.shape[-1]}x{codes.shape[-2]}"}
    for step, run in steps(images, codes).items():
        work, convolutions = flops(lambda run=run: run(original))  # the same multiply-adds whichever way
        row[f"{step}_gflop"] = work / 1e9
        row[f"{step}_original"] = best_seconds(lambda run=run: run(original), device)
        row[f"{step}_fp32"] = best_seconds(lambda run=run: run(fp32), device)
        row[f"{step}_bf16"] = best_seconds(lambda run=run: run(bf16), device)
        if device == "cpu":
            seconds = convolution_seconds(lambda run=run: run(bf16))
            row[f"{step}_convolutions_to_floor"] = seconds / (convolutions / (rates[torch.bfloat16] * 1e9))
        row[f"{step}_floor_bf16"] = work / (rates[torch.bfloat16] * 1e9)
        row[f"{step}_floor_fp32"] = work / (rates[torch.float32] * 1e9)
    row["same_codes"] = (bf16.tokenize(images) == codes).float().mean().item()
    reference, decoded = to_pixels(fp32.detokenize(codes)), to_pixels(bf16.detokenize(codes))
    row["psnr_bf16_vs_fp32"] = float(psnr(reference, decoded, data_range=255.0).min())
    return row


def rows_to_measure():
    torch.manual_seed(0)
    vq16 = VQModel(vq_preset("VQ-16"))
    yield "VQ-16 (random weights)", vq16, ["256x256", "512x512"]
    for name in ("photo-vq", "shapes-vq", "digits-vq"):
        yield name, name, ["256x256", f"{PHOTO} 640x427"]


def load(source, dtype: str, device: str = "cpu", channels_last: bool = False) -> VQModel:
    """A benchmarked tokenizer, as `load_tokenizer` gives it (with `channels_last`, in that layout on a GPU too)."""
    if isinstance(source, VQModel):  # random weights: through a file, as users load them
        path = ROOT / "outputs" / "bench_vq16.safetensors"
        if not path.exists():
            from llamagen import save

            path.parent.mkdir(parents=True, exist_ok=True)
            save(source, path)
        source = path
    model = load_tokenizer(source, device=device, dtype=dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def format_row(row: dict) -> str:
    cells = [row["tokenizer"], row["input"], row["tokens"]]
    for step in ("encode", "decode"):
        cells += [
            f"{row[f'{step}_gflop']:.0f}",
            f"{row[f'{step}_original']:.3g}",  # seconds, to three figures on a GPU too
            f"{row[f'{step}_fp32']:.3g}",
            f"{row[f'{step}_bf16_memory_returned']:.3g}" if f"{step}_bf16_memory_returned" in row else "-",
            f"{row[f'{step}_bf16']:.3g}",
            f"{row[f'{step}_floor_bf16']:.3g}",
            f"{row[f'{step}_bf16'] / row[f'{step}_floor_bf16']:.2f}x",
            f"{row[f'{step}_convolutions_to_floor']:.2f}x" if f"{step}_convolutions_to_floor" in row else "-",
            f"{row[f'{step}_original'] / row[f'{step}_bf16']:.1f}x",
        ]
    trained = not row["tokenizer"].startswith("VQ-16")
    cells += [f"{100 * row['same_codes']:.1f}%", f"{row['psnr_bf16_vs_fp32']:.1f}"] if trained else ["-", "-"]
    return "| " + " | ".join(cells) + " |"


STEP_COLUMNS = (
    "| {} GFLOP | (a) original, s | ours fp32, s | (b) ours bf16, memory returned, s | ours bf16, s "
    "| floor bf16, s | bf16 / floor | (c) convolutions / their floor | (a) / bf16 "
)
HEADER = (
    "| tokenizer | input | tokens "
    + STEP_COLUMNS.format("encode")
    + STEP_COLUMNS.format("decode")
    + "| codes as fp32's | PSNR bf16 vs fp32, dB |\n"
    + "|---" * 23
    + "|"
)


def seconds_to_run(command: list[str]) -> float:
    """Wall time of a new process running `command`, the best of REPEATS."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def end_to_end_lines() -> list[str]:
    """`llamagen reconstruct` of the photo in a new process, and torch's import alone."""
    with tempfile.TemporaryDirectory() as folder:
        photo = Path(folder) / f"{PHOTO}.png"
        load_photo(PHOTO).save(photo)
        llamagen = str(Path(sys.executable).with_name("llamagen"))
        reconstruct = [llamagen, "reconstruct", str(photo), "--tokenizer", "photo-vq", "--out", f"{folder}/out.png"]
        rows = [
            (f"`llamagen reconstruct {PHOTO}.png --tokenizer photo-vq` (bf16)", seconds_to_run(reconstruct)),
            ("`python -c 'import torch'`", seconds_to_run([sys.executable, "-c", "import torch"])),
        ]
    return ["| command | s |", "|---|---|"] + [f"| {command} | {seconds:.2f} |" for command, seconds in rows]


def machine(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (cuDNN {torch.backends.cudnn.version()})"
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def rows_of_inputs(options: argparse.Namespace):
    """(name, fp32 tokenizer, bf16 tokenizer, size, images) for each row of the table."""
    for name, source, sizes in rows_to_measure():
        fp32, bf16 = (load(source, dtype, options.device, options.channels_last) for dtype in ("float32", "bf16"))
        images = inputs(fp32.downsample_factor, options.batch, options.device)
        for size in sizes:
            yield name, fp32, bf16, size, images[next(key for key in images if key.startswith(size.split()[0]))]


def main(options: argparse.Namespace) -> None:
    torch.set_grad_enabled(False)
    on_gpu = options.device == "cuda"
    # (b): bf16 with glibc's default of handing large blocks back to the system, measured before this process
    # keeps freed memory, as the llamagen command does, for every other column (irreversibly).
    returned = {} if on_gpu else {(name, size): bf16_seconds(bf16, images)
                                  for name, _, bf16, size, images in rows_of_inputs(options)}  # fmt: skip
    keep_freed_memory()
    rates = {dtype: measure_matmul_gflops(dtype, options.device) for dtype in (torch.float32, torch.bfloat16)}
    lines = []
    print(HEADER, flush=True)
    for name, fp32, bf16, size, images in rows_of_inputs(options):
        row = measure(name, fp32, bf16, size, images, rates)
        for step, seconds in returned.get((name, size), {}).items():
            row[f"{step}_bf16_memory_returned"] = seconds
        line = format_row(row)
        print(line, flush=True)
        lines.append(line)
    after = {dtype: measure_matmul_gflops(dtype, options.device) for dtype in rates}
    layout = "channels-last" if options.channels_last or not on_gpu else "torch's default layout"
    side = 8192 if on_gpu else 2048
    note = (
        f"Tokenizer speed on {machine(options.device)}, torch {torch.__version__}; seconds per call on "
        f"{options.batch} image{'s' * (options.batch > 1)}, the best of {REPEATS} after a warm-up. Product rate "
        f"of two {side}x{side} matrices, before and after the rows: float32 {rates[torch.float32]:.0f} and "
        f"{after[torch.float32]:.0f} GFLOP/s, bf16 {rates[torch.bfloat16]:.0f} and {after[torch.bfloat16]:.0f}; "
        "the floors divide the multiply-adds (2 per multiply-add, counted by FlopCounterMode) by the rate before. "
        "(a): float32, default layout, attention by an explicit softmax of bmm products (the original's). "
        f"Ours: `load_tokenizer(..., dtype=...)` on the {'GPU' if on_gpu else 'CPU'} ({layout} weights, "
        + (
            "GroupNorm summed in float32 by torch's kernel, "
            if on_gpu
            else "GroupNorm and the SiLU after it in llamagen's kernel, "
        )
        + "scaled_dot_product_attention)"
        + (
            "."
            if on_gpu
            else ", in a process that keeps the memory tensors free (`keep_freed_memory`, as the llamagen command "
            "does); (b): the same, measured first, with glibc's default of handing large blocks back; (c): the "
            "time of bf16's convolutions alone (oneDNN's kernels, timed by torch's profiler) against their own "
            "multiply-adds' floor."
        )
        + " "
        + (
            "cuDNN's float32 convolutions take TF32 products by default, so float32 can beat its floor. "
            if on_gpu
            else ""
        )
        + "The last two columns compare bf16 with float32 on the trained tokenizers: the share of codes its "
        "encoder picks as float32's does, and the PSNR of its decode of float32's codes against float32's decode."
    )
    table = f"{note}\n\n{HEADER}\n" + "\n".join(lines) + "\n"
    if not on_gpu:  # what a user waits for at the command line, where the command runs on the CPU
        end_to_end = end_to_end_lines()
        print("\n" + "\n".join(end_to_end), flush=True)
        table += f"\nEnd to end, in a new process, the best of {REPEATS}:\n\n" + "\n".join(end_to_end) + "\n"
    default_name = f"tokenizer_{'gpu' if on_gpu else 'cpu'}_{datetime.date.today().isoformat()}.md"
    out = Path(options.out) if options.out else ROOT / "benchmarks" / "results" / default_name
    out.write_text(table)
    print(f"\nwrote {out}")


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=1, help="images per call (a GPU needs several to be busy)")
    parser.add_argument("--channels-last", action="store_true", help="on a GPU too (the CPU's layout always)")
    parser.add_argument("--out", help="the table's file (default: benchmarks/results/tokenizer_DEVICE_DATE.md)")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_options())
