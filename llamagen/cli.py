"""The `llamagen` command. Each sub-command is a `run_*(args)` function; the parser lives only here."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from llamagen.images import DEFAULT_MAX_MEGAPIXELS

# Errors a user can fix (a wrong path, a bad image, a config that does not match the weights):
# reported in one line, without a traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, TypeError)


def parse_config(text: str | None) -> str | dict[str, Any] | None:
    """--config: a preset name, a JSON file, or inline JSON of config fields."""
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--config is not valid JSON: {error}") from error
    path = Path(text)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"--config file {text!r} does not exist")
        return json.loads(path.read_text())
    return text  # a preset name; an unknown one is refused by the loader with the list of presets


def check_output_path(path: Path) -> None:
    """Refuse an output the image writer cannot produce, before any work is done."""
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"--out {str(path)!r}: unknown image format {path.suffix!r}; use .png")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--out {str(path)!r}: folder {str(path.parent)!r} does not exist")


def run_reconstruct(args: argparse.Namespace) -> None:
    # Imported here so that `llamagen --help` answers at once.
    from llamagen.checkpoints import write_atomically
    from llamagen.data.photos import load_photo
    from llamagen.images import load_image
    from llamagen.reconstruction import reconstruct
    from llamagen.tokenizer.loading import load_tokenizer

    out = Path(args.out)
    check_output_path(out)
    image = load_photo(args.sample) if args.sample else load_image(args.image, args.max_megapixels)
    tokenizer = load_tokenizer(
        args.tokenizer,
        config=parse_config(args.config),
        device=args.device,
        dtype=args.dtype,
        prefer_ema=args.ema,
    )
    result = reconstruct(tokenizer, image)
    write_atomically(out, lambda temporary: result.side_by_side().save(temporary, format=_format_of(out)))

    config = tokenizer.config
    h, w = result.codes.shape
    print(
        f"tokenizer   {args.tokenizer}: {config.codebook_size} codes x {config.codebook_embed_dim} dims, "
        f"downsample {config.downsample_factor}, on {tokenizer.device} in {str(tokenizer.dtype).removeprefix('torch.')}"
    )
    print(f"image       {args.sample or args.image}: {image.width}x{image.height} pixels")
    print(
        f"tokens      {w}x{h} = {h * w}; {result.distinct_codes} distinct codes "
        f"({100 * result.distinct_codes / config.codebook_size:.1f}% of the codebook)"
    )
    print(f"PSNR        {result.psnr:.2f} dB")
    print(f"SSIM        {result.ssim:.4f} (data range 255)")
    print(f"bits/pixel  {result.bits_per_pixel:.4f}")
    print(f"wrote       {out} (original | reconstruction)")


def _format_of(path: Path) -> str:
    return Image.registered_extensions()[path.suffix.lower()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamagen", description="LlamaGen: VQ image tokenizer and Llama image generator"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    rec = commands.add_parser(
        "reconstruct",
        help="tokenize an image, decode it back, and measure the loss",
        description="Writes the original beside its reconstruction and prints PSNR, SSIM, bits per pixel "
        "and the number of distinct codes used. Sizes the downsample factor does not divide are padded "
        "and cropped back.",
    )
    source = rec.add_mutually_exclusive_group(required=True)
    source.add_argument("image", nargs="?", help="an image file (any format and mode PIL reads)")
    source.add_argument("--sample", help="a bundled photo instead of a file (astronaut, coffee, camera, ...)")
    rec.add_argument("--tokenizer", required=True, help="a .pt or .safetensors checkpoint, or an embedded model's name")
    rec.add_argument(
        "--config",
        help="for published .pt files: a preset (VQ-16, VQ-8), a JSON file or inline JSON of VQConfig fields; "
        "by default read off the weights' shapes",
    )
    rec.add_argument("--out", required=True, help="where to write original | reconstruction (e.g. out.png)")
    rec.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present, else the CPU)")
    rec.add_argument("--dtype", help="float32 (default) or bf16")
    rec.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    rec.add_argument(
        "--max-megapixels",
        type=float,
        default=DEFAULT_MAX_MEGAPIXELS,
        help=f"refuse larger images (default {DEFAULT_MAX_MEGAPIXELS:g}; memory grows with the pixel count)",
    )
    rec.set_defaults(run=run_reconstruct)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except _USER_ERRORS as error:
        print(f"llamagen {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
