"""`llamagen reconstruct`, `llamagen generate` and `llamagen demo`: images from a tokenizer or a generator."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
from pathlib import Path

from llamagen.cli.common import add_device_options, check_output_path, check_writable, format_of, parse_config
from llamagen.gpt.guidance_schedules import SCHEDULES
from llamagen.images import DEFAULT_MAX_MEGAPIXELS

SHOWN_IMAGE_SIZE = 128


def run_reconstruct(args: argparse.Namespace) -> None:
    if args.folder:
        _reconstruct_folder(args)
        return
    # Imported here so that `llamagen --help` answers at once.
    from llamagen.data.photos import load_photo
    from llamagen.files import write_atomically
    from llamagen.images import load_image
    from llamagen.tokenizer.loading import load_tokenizer
    from llamagen.tokenizer.reconstruction import reconstruct

    out = Path(args.out)
    check_output_path(out)
    image = load_photo(args.sample) if args.sample else load_image(args.image, args.max_megapixels)
    tokenizer = load_tokenizer(
        args.tokenizer,
        config=parse_config(args.config),
        device=args.device,
        dtype=args.dtype or "auto",
        prefer_ema=args.ema,
    )
    result = reconstruct(tokenizer, image)
    write_atomically(out, lambda temporary: result.side_by_side().save(temporary, format=format_of(out)))

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
    print(f"SSIM        {result.ssim_text} (data range 255)")
    print(f"bits/pixel  {result.bits_per_pixel:.4f}")
    print(f"wrote       {out} (original | reconstruction)")


def _reconstruct_folder(args: argparse.Namespace) -> None:
    """A folder of images through the tokenizer, alone or under torchrun (`llamagen.evaluation.reconstruction_set`)."""
    from llamagen.data.folders import image_files
    from llamagen.evaluation import reconstruction_set
    from llamagen.evaluation.shards import check_shards, make_in_processes
    from llamagen.tokenizer.loading import load_tokenizer
    from llamagen.training.distributed import start_processes

    out, folder = Path(args.out), Path(args.folder)
    if out.suffix != ".npz":
        raise ValueError(f"--out {str(out)!r}: a folder's reconstructions go to an .npz (the ADM evaluator's format)")
    check_writable(out, "--out")
    if args.size < 8 or args.batch_size < 1:
        raise ValueError(f"--size must be at least 8 and --batch-size at least 1, got {args.size}, {args.batch_size}")
    files = image_files(folder)
    shards = reconstruction_set.plan(files, folder, args.tokenizer, args.size, args.shard_size)
    check_shards(shards, out)  # before the tokenizer loads
    processes = start_processes(args.device)
    tokenizer = load_tokenizer(args.tokenizer, config=parse_config(args.config), device=processes.device,
                               dtype=args.dtype or "auto", prefer_ema=args.ema)  # fmt: skip
    write_mine = functools.partial(reconstruction_set.write_reconstructions, tokenizer, files, shards, out, args.size,
                                   batch_size=args.batch_size)  # fmt: skip
    if make_in_processes(shards, out, processes, write_mine):
        arrays = reconstruction_set.gather_reconstructions(shards, out)
        print(f"images      {len(files)} under {folder}, {args.size}x{args.size}")
        print(f"PSNR        {arrays['psnr'].mean():.2f} dB (mean)")
        print(f"SSIM        {arrays['ssim'].mean():.4f} (mean, data range 255)")
        print(f"wrote       {out} (reconstructions, arr_0) and {reconstruction_set.originals_path(out)} (originals)")
    processes.close()


def run_generate(args: argparse.Namespace) -> None:
    _write_generations(args)


def run_complete(args: argparse.Namespace) -> None:
    from llamagen.images import load_image

    image = load_image(args.image, args.max_megapixels)
    _write_generations(args, images=image, keep_rows=args.keep_rows)


def _write_generations(args: argparse.Namespace, **completion) -> None:
    """Generate (or, with `completion`'s images and keep_rows, complete) as the options say; write the grid."""
    import torch
    from PIL import Image

    from llamagen.files import write_atomically
    from llamagen.pipeline import image_grid

    out = Path(args.out)
    check_output_path(out)
    if not (args.class_ids or args.prompts):
        raise ValueError("name at least one class with --class (or, for a text-to-image model, --prompt)")
    pipe = load_models(args)
    output = pipe(
        class_labels=args.class_ids,
        prompts=args.prompts,
        **sampling_arguments(args),
        seed=args.seed,
        num_images_per_condition=args.images_per_class,
        compile=args.compile,
        jacobi_window=args.jacobi_window,
        **completion,
    )
    given = {name: getattr(args, name) for name in pipe.sampling.values() if getattr(args, name) is not None}
    flags = ", ".join("--" + name.replace("_", "-") for name in given)
    source = f"{flags} as given; the rest from {pipe.sampling.source}" if given else f"from {pipe.sampling.source}"
    print(f"sampling    {dataclasses.replace(pipe.sampling, **given, source=source).describe()}")
    per_condition = args.images_per_class
    conditions = len(output.conditions) // per_condition
    pixels, columns = output.pixels, per_condition if conditions > 1 else None
    if output.originals is not None:  # each row: the original, then its completions
        pixels = torch.cat([torch.cat([output.originals[start : start + 1], pixels[start : start + per_condition]])
                            for start in range(0, len(pixels), per_condition)])  # fmt: skip
        columns = per_condition + 1
    grid = image_grid(pixels, columns)
    # Each image at least SHOWN_IMAGE_SIZE pixels wide: a sheet of 32-pixel digits is otherwise a thumbnail.
    scale = args.pixel_scale or max(1, -(-SHOWN_IMAGE_SIZE // pipe.image_size))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    write_atomically(out, lambda temporary: grid.save(temporary, format=format_of(out)))
    for note in output.notes:
        print(f"note        {note}")
    shown = ", ".join(dict.fromkeys(output.conditions))
    count = len(output.images)
    what = (
        f"{count} completion{'s' * (count > 1)} of {args.keep_rows} kept rows"
        if completion
        else f"{count} image{'s' * (count > 1)}"
    )
    first = ", the original first in each row" if completion else ""
    print(f"wrote       {out}: {what} of {shown} ({grid.width}x{grid.height} grid{first}, "
          f"each pixel drawn {scale}x{scale})")  # fmt: skip


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The top-level `reconstruct`, `generate`, `complete` and `demo`."""
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
    source.add_argument("--folder", help="every image under this folder, for rFID (with --out FILE.npz; alone or "
                        "under torchrun, resumed after a stop)")  # fmt: skip
    rec.add_argument("--tokenizer", required=True, help="a .pt or .safetensors checkpoint, or an embedded model's name")
    rec.add_argument(
        "--config",
        help="for published .pt files: a preset (VQ-16, VQ-8), a JSON file or inline JSON of VQConfig fields; "
        "by default read off the weights' shapes",
    )
    rec.add_argument("--out", required=True, help="where to write original | reconstruction (e.g. out.png); with "
                     "--folder, the reconstructions' .npz (the originals' goes beside it)")  # fmt: skip
    rec.add_argument("--size", type=int, default=256, help="with --folder: images resized and centre-cropped to SxS")
    rec.add_argument("--batch-size", type=int, default=32, help="with --folder: images at once")
    rec.add_argument("--shard-size", type=int, default=1000, help="with --folder: images per shard")
    add_device_options(rec, default_dtype="auto")
    rec.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    rec.add_argument(
        "--max-megapixels",
        type=float,
        default=DEFAULT_MAX_MEGAPIXELS,
        help=f"refuse larger images (default {DEFAULT_MAX_MEGAPIXELS:g}; memory grows with the pixel count)",
    )
    rec.set_defaults(run=run_reconstruct)

    gen = commands.add_parser(
        "generate",
        help="generate images of classes or captions",
        description="Samples image tokens with the generator (classifier-free guidance, top-k/top-p, temperature) "
        "and decodes them with the tokenizer into one PNG grid, a row per class or prompt. An embedded "
        "generator (shapes-c2i, digits-c2i, ...) brings its own tokenizer and text encoder.",
    )
    add_generation_options(gen)
    gen.set_defaults(run=run_generate)

    com = commands.add_parser(
        "complete",
        help="continue an image from its first token rows, under classes or captions",
        description="Tokenizes the image with the generator's tokenizer (resized on the shorter side and "
        "centre-cropped to the generator's image size), keeps its first --keep-rows rows of tokens and samples the "
        "rest under each class or prompt; writes one PNG grid, a row per condition, the original first.",
    )
    com.add_argument("image", help="an image file (any format and mode PIL reads)")
    com.add_argument("--keep-rows", type=int, required=True, help="rows of the token grid kept from the image")
    com.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_MEGAPIXELS, help="refuse larger images")
    add_generation_options(com)
    com.set_defaults(run=run_complete)

    demo = commands.add_parser(
        "demo",
        help="the Gradio apps: generate, complete, reconstruct, compare conditioning, codebook",
        description="Serves the apps with the embedded models, and with the published or local checkpoints a "
        "JSON file names (see llamagen.apps.models), until Ctrl+C.",
    )
    demo.add_argument("--models", help="a JSON file of more generators and tokenizers, and their device and dtype")
    demo.add_argument("--host", default="127.0.0.1", help="the address to serve on (default 127.0.0.1: this machine)")
    demo.add_argument("--port", type=int, default=7860)
    add_device_options(demo)
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from llamagen.apps import launch
    from llamagen.apps.models import ModelRegistry

    # One line per refused request (the apps' log), none of the libraries' chatter.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger("llamagen.apps").addHandler(handler)
    logging.getLogger("llamagen.apps").setLevel(logging.INFO)
    registry = ModelRegistry.embedded()
    if args.models:
        registry.add_from_file(args.models)
    if args.device or args.dtype:
        registry.device, registry.dtype = args.device or registry.device, args.dtype or registry.dtype
    app, url = launch(registry, args.host, args.port)
    print(f"LlamaGen explorer: {url}  (Ctrl+C stops it)", flush=True)
    try:
        app.block_thread()
    finally:
        app.close()


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """Guidance, top-k, top-p and temperature, each defaulting to the model's: its card's recommendation, or
    the original's defaults."""
    parser.add_argument(
        "--cfg-scale", type=float, help="guidance scale: 1 none, 0 unconditional (default: the model's)"
    )
    parser.add_argument("--cfg-interval", type=int, help="guide tokens 0..N+1 only (-1: all; default: the model's)")
    parser.add_argument("--cfg-schedule", choices=SCHEDULES, help="the scale over the tokens: constant, linear (from 1 "
                     "up to --cfg-scale, as VAR), reverse (from it down to 1) or first-half (it on the first half "
                     "of the tokens, then 1) (default: the model's)")  # fmt: skip
    parser.add_argument("--top-k", type=int, help="sample among the k most likely codes (0: all; default: the model's)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling threshold (1: off; default: the model's)")
    parser.add_argument("--temperature", type=float, help="0 is greedy (default: the model's)")
    parser.add_argument(
        "--jacobi-window",
        type=int,
        default=0,
        help="verify this many draft tokens per model call (speculative Jacobi decoding: the same distribution "
        "in fewer calls; 0: one token a call)",
    )


def sampling_arguments(args: argparse.Namespace) -> dict:
    """The pipeline's sampling arguments from `add_sampling_options`' options (None: the model's)."""
    names = ("cfg_scale", "cfg_interval", "cfg_schedule", "top_k", "top_p", "temperature")
    return {name: getattr(args, name) for name in names}


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The generator and the models it needs, and for published files the configuration overrides."""
    parser.add_argument("--gpt", required=True, help="a .pt or .safetensors generator, or an embedded name")
    parser.add_argument("--tokenizer", help="a .pt or .safetensors tokenizer, or an embedded name (default: the "
                     "generator's own, for generators trained here)")  # fmt: skip
    parser.add_argument("--text-encoder", help="for text-to-image: the text encoder (default: the generator's own)")
    parser.add_argument(
        "--gpt-config",
        help="preset, JSON file or inline JSON; for published files, overrides of "
        "what is read off the weights (e.g. '{\"block_size\": 576}' for 384x384 models)",
    )
    parser.add_argument("--tokenizer-config", help="preset, JSON file or inline JSON of VQConfig fields")


def load_models(args: argparse.Namespace, device=None):
    """The pipeline of `add_model_options`' options, on `device` (default: --device)."""
    from llamagen.pipeline import load_pipeline

    return load_pipeline(args.gpt, tokenizer=args.tokenizer, text_encoder=args.text_encoder,
                         device=device or args.device, dtype=args.dtype, gpt_config=parse_config(args.gpt_config),
                         tokenizer_config=parse_config(args.tokenizer_config))  # fmt: skip


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """The options `generate` and `complete` share: the models, the conditions and the sampling."""
    add_model_options(parser)
    parser.add_argument(
        "--class", dest="class_ids", nargs="+", help="class ids or names ('red star'; ImageNet: 0-999 or names)"
    )
    parser.add_argument("--prompt", dest="prompts", nargs="+", help="captions, for a text-to-image generator")
    parser.add_argument("--images-per-class", type=int, default=1, help="images per class or prompt")
    add_sampling_options(parser)
    parser.add_argument(
        "--pixel-scale",
        type=int,
        choices=range(1, 17),
        metavar="N",
        help=f"draw each pixel as NxN in the grid (nearest neighbour; default: the smallest N that shows each image "
        f"at least {SHOWN_IMAGE_SIZE} pixels wide)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the grid image to write (e.g. grid.png)")
    add_device_options(parser)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the decoding step: faster per token, after a compilation (on a GPU, the step each CUDA graph "
        "replays; on a CPU with llamagen's kernels, batches up to 4 with guidance already decode each step in one "
        "call and skip it)",
    )
