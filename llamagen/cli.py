"""The `llamagen` command. Each sub-command is a `run_*(args)` function; the parser lives only here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
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


def run_generate(args: argparse.Namespace) -> None:
    from llamagen.checkpoints import write_atomically
    from llamagen.pipeline import load_pipeline

    out = Path(args.out)
    check_output_path(out)
    if not (args.class_ids or args.prompts):
        raise ValueError("name at least one class with --class (or, for a text-to-image model, --prompt)")
    pipe = load_pipeline(
        args.gpt,
        tokenizer=args.tokenizer,
        text_encoder=args.text_encoder,
        device=args.device,
        dtype=args.dtype,
        gpt_config=parse_config(args.gpt_config),
        tokenizer_config=parse_config(args.tokenizer_config),
    )
    output = pipe(
        class_labels=args.class_ids,
        prompts=args.prompts,
        cfg_scale=args.cfg_scale,
        cfg_interval=args.cfg_interval,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        num_images_per_condition=args.images_per_class,
        compile=args.compile,
    )
    conditions = len(output.conditions) // args.images_per_class
    grid = output.grid(columns=args.images_per_class if conditions > 1 else None)
    write_atomically(out, lambda temporary: grid.save(temporary, format=_format_of(out)))
    for note in output.notes:
        print(f"note        {note}")
    shown = ", ".join(dict.fromkeys(output.conditions))
    print(f"wrote       {out}: {len(output.images)} images of {shown} ({grid.width}x{grid.height} grid)")


def run_train_tokenizer(args: argparse.Namespace) -> None:
    from llamagen.data.loading import open_dataset
    from llamagen.tokenizer import VQConfig
    from llamagen.training.tokenizer import TokenizerTrainingConfig, train_tokenizer

    model_config = VQConfig.coerce(parse_config(args.config))
    if args.entropy_loss is not None:
        model_config = dataclasses.replace(model_config, entropy_loss_ratio=args.entropy_loss)
    training = TokenizerTrainingConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        ema_decay=args.ema_decay,
        bf16=not args.fp32,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        perceptual_weight=args.perceptual_weight,
        disc_start=args.disc_start,
        disc_weight=args.disc_weight,
        restart_dead_codes_every=args.restart_dead_codes,
    )
    lpips = None
    if args.lpips_vgg or args.lpips_lin:
        if not (args.lpips_vgg and args.lpips_lin):
            raise ValueError("LPIPS needs both --lpips-vgg and --lpips-lin")
        from llamagen.evaluation.lpips import load_lpips

        lpips = load_lpips(args.lpips_vgg, args.lpips_lin)
    if args.hue_jitter and args.data != "photos":
        raise ValueError("--hue-jitter applies to the photos data set only")
    options = {"hue_jitter": True} if args.hue_jitter else {}
    dataset = open_dataset(args.data, size=args.image_size, seed=args.seed, **options)
    outcome = train_tokenizer(
        model_config,
        training,
        dataset,
        args.out,
        resume=args.resume,
        command=_command_line(),
        workers=args.workers,
        device=args.device,
        lpips=lpips,
    )
    _report_training(outcome.finished, outcome.step, Path(args.out))


def _report_training(finished: bool, step: int, out: Path) -> None:
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun the first process reports
    if finished:
        print(f"finished    {step} steps; EMA weights in {out / 'final.safetensors'}")
    else:
        print(f"stopped     at step {step}; {out / 'latest.pt'} holds it, --resume continues")


def run_extract_codes(args: argparse.Namespace) -> None:
    from llamagen.data.codes import extract_codes, source_size
    from llamagen.data.loading import is_procedural, open_dataset
    from llamagen.tokenizer.loading import load_tokenizer

    if args.captions and args.data != "shapes":
        raise ValueError("--captions applies to the shapes data set (captions:FILE.jsonl always has them)")
    options = {"captioned": True} if args.captions else {}
    size = source_size(args.augment, args.image_size)
    dataset = open_dataset(args.data, size=size, seed=args.seed, **options)
    if args.count is None and is_procedural(dataset):
        raise ValueError(f"{args.data} draws images without end: say how many with --count")
    tokenizer = load_tokenizer(args.tokenizer, device=args.device)
    condition = "caption" if args.captions or args.data.startswith("captions:") else "label"
    description = {"tokenizer": args.tokenizer, "data": args.data, "seed": args.seed, "command": _command_line()}
    path = extract_codes(tokenizer, dataset, args.out, args.image_size, args.augment, args.count,
                         condition=condition, description=description)  # fmt: skip
    print(f"wrote       {path}")


def run_train_gpt(args: argparse.Namespace) -> None:
    from llamagen.data.codes import CodesDataset
    from llamagen.gpt import GPTConfig
    from llamagen.training.gpt import GPTTrainingConfig, generator_config_for, train_gpt

    info = CodesDataset(args.codes).info
    text_encoder = None
    if args.text_encoder:
        from llamagen.text import load_text_encoder

        text_encoder = load_text_encoder(args.text_encoder)
    model_config = generator_config_for(info, GPTConfig.coerce(parse_config(args.config)), text_encoder)
    training = GPTTrainingConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        ema_decay=args.ema_decay,
        bf16=not args.fp32,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
    )
    outcome = train_gpt(model_config, training, args.codes, args.out, text_encoder, resume=args.resume,
                        command=_command_line(), device=args.device)  # fmt: skip
    _report_training(outcome.finished, outcome.step, Path(args.out))


def run_train_clip(args: argparse.Namespace) -> None:
    from llamagen.data.loading import open_dataset
    from llamagen.text import ClipConfig
    from llamagen.training.clip import ClipTrainingConfig, train_clip

    config = ClipConfig.coerce(parse_config(args.config))
    training = ClipTrainingConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        bf16=not args.fp32,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
    )
    options = {"captioned": True} if args.data == "shapes" else {}
    dataset = open_dataset(args.data, size=config.vision_cfg.get("image_size", 224), seed=args.seed, **options)
    _, step, finished = train_clip(config, training, dataset, args.out, resume=args.resume, command=_command_line(),
                                   device=args.device)  # fmt: skip
    _report_training(finished, step, Path(args.out))


def run_eval_tokenizer(args: argparse.Namespace) -> None:
    from llamagen.evaluation.tokenizer import evaluate_tokenizer, held_out_images
    from llamagen.images import load_image
    from llamagen.tokenizer.loading import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer, config=parse_config(args.config), device=args.device, dtype=args.dtype)
    images = [load_image(path) for path in args.images] if args.images else held_out_images(args.data, args.size)[0]
    features = None
    if args.inception:
        from llamagen.evaluation.fid import InceptionFeatures

        features = InceptionFeatures(args.inception)
    save_images = Path(args.save_images) if args.save_images else None
    for field, value in (
        evaluate_tokenizer(tokenizer, images, features=features, save_images=save_images).as_dict().items()
    ):
        print(f"{field:<16}{value:.4g}" if isinstance(value, float) else f"{field:<16}{value}")


def run_export_tokenizer(args: argparse.Namespace) -> None:
    from llamagen.training.export import export_tokenizer

    card = export_tokenizer(
        args.run_dir,
        args.name,
        args.data,
        args.train_command,
        args.notes,
        evaluate_on=args.evaluate_on,
        use_ema=not args.no_ema,
    )
    evaluation = card["evaluation"]
    print(f"wrote       llamagen/assets/{args.name}.safetensors and {args.name}.json")
    print(
        f"held-out    PSNR {evaluation['psnr']:.2f} dB, SSIM {evaluation['ssim']:.3f}, "
        f"usage in training {card['codebook_usage_training_window']:.1%}"
    )


def run_export_gpt(args: argparse.Namespace) -> None:
    from llamagen.training.export import export_generator

    card = export_generator(args.run_dir, args.name, args.data, args.judge, tuple(args.cfg_scales),
                            args.images_per_class, args.train_command, args.notes, use_ema=not args.no_ema)  # fmt: skip
    print(f"wrote       llamagen/assets/{args.name}.safetensors and {args.name}.json")
    for row in card["evaluation"]["by_cfg_scale"]:
        _print_guidance_row(row)


def _print_guidance_row(row: dict) -> None:
    accuracy = ", ".join(f"{k.removeprefix('accuracy_')} {v:.1%}" for k, v in row.items() if k.startswith("accuracy_"))
    print(
        f"cfg {row['cfg_scale']:<5g} {accuracy}; FID {row['fid']:.2f} (real {row['fid_real_floor']:.2f}), "
        f"precision {row['precision']:.2f}, recall {row['recall']:.2f}, diversity {row['diversity']:.2f}"
    )


def run_sweep_cfg(args: argparse.Namespace) -> None:
    from llamagen.analysis.guidance import sweep_guidance, write_rows_csv
    from llamagen.pipeline import load_pipeline

    pipe = load_pipeline(args.model, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype)
    rows = sweep_guidance(pipe, args.judge, tuple(args.scales), args.images_per_class, args.seed,
                          progress=_print_guidance_row, top_k=args.top_k)  # fmt: skip
    print(f"wrote       {write_rows_csv(rows, args.out)}")


def run_train_judge(args: argparse.Namespace) -> None:
    from llamagen.training.judge import JudgeTraining, save_judge, train_judge

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must name a .safetensors file, got {str(out)!r}")
    training = JudgeTraining(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    started = time.time()
    judge, accuracy = train_judge(args.kind, training)
    save_judge(judge, args.kind, training, accuracy, out, _command_line(), (time.time() - started) / 60)
    print(
        f"wrote       {out} and its card; held-out accuracy " + ", ".join(f"{k} {v:.1%}" for k, v in accuracy.items())
    )


def run_sweep_codebook(args: argparse.Namespace) -> None:
    from llamagen.training.sweep import SweepSettings, sweep_codebook

    chosen = {"dimensions": args.dims, "sizes": args.sizes, "steps": args.steps, "batch_size": args.batch_size}
    settings = SweepSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items() if v})
    results = sweep_codebook(settings, args.out, args.work_dir)
    print(f"wrote       {args.out} and {Path(args.out).with_suffix('.csv')}: {len(results['runs'])} runs")
    for name, run in results["runs"].items():
        print(f"{name:<18} usage {run['usage_eval']:6.1%}  perplexity {run['perplexity']:8.1f}  PSNR {run['psnr']:.2f}")


def _command_line() -> str:
    """The command as typed, for a model card's `reproduce`."""
    return "llamagen " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def _format_of(path: Path) -> str:
    return Image.registered_extensions()[path.suffix.lower()]


def add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present, else the CPU)")
    parser.add_argument("--dtype", help="float32 (default) or bf16")


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
    add_device_options(rec)
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
    gen.add_argument("--gpt", required=True, help="a .pt or .safetensors generator, or an embedded name")
    gen.add_argument("--tokenizer", help="a .pt or .safetensors tokenizer, or an embedded name (default: the "
                     "generator's own, for generators trained here)")  # fmt: skip
    gen.add_argument("--text-encoder", help="for text-to-image: the text encoder (default: the generator's own)")
    gen.add_argument(
        "--class", dest="class_ids", nargs="+", help="class ids or names ('red star'; ImageNet: 0-999 or names)"
    )
    gen.add_argument("--prompt", dest="prompts", nargs="+", help="captions, for a text-to-image generator")
    gen.add_argument("--images-per-class", type=int, default=1, help="images per class or prompt")
    gen.add_argument("--cfg-scale", type=float, default=4.0, help="guidance scale: 1 none, 0 unconditional")
    gen.add_argument("--cfg-interval", type=int, default=-1, help="guide tokens 0..N+1 only (-1: all)")
    gen.add_argument("--top-k", type=int, default=0, help="sample among the k most likely codes (0: all)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1: off)")
    gen.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", required=True, help="the grid image to write (e.g. grid.png)")
    gen.add_argument(
        "--gpt-config",
        help="preset, JSON file or inline JSON; for published files, overrides of "
        "what is read off the weights (e.g. '{\"block_size\": 576}' for 384x384 models)",
    )
    gen.add_argument("--tokenizer-config", help="preset, JSON file or inline JSON of VQConfig fields")
    add_device_options(gen)
    gen.add_argument(
        "--compile", action="store_true", help="compile the decoding step: faster per token, after a compilation"
    )
    gen.set_defaults(run=run_generate)

    ext = commands.add_parser(
        "extract-codes",
        help="tokenize a data set once, for generator training",
        description="Writes the codes of every image (or the first --count of a rendered data set), with their "
        "labels or captions, to one safetensors file. --augment: none; flip (the image and its mirror); crops "
        "(the five crops of an image enlarged 1.1x, as the original); ten-crop (those and their mirrors, the "
        "original's ten). Mirrors are wrong for digits and for captions that name a side.",
    )
    ext.add_argument("--data", required=True, help="shapes, digits, photos, folder:PATH or captions:FILE.jsonl")
    ext.add_argument("--tokenizer", required=True, help="an embedded tokenizer's name or a checkpoint")
    ext.add_argument("--image-size", type=int, default=64)
    ext.add_argument("--augment", default="none", choices=["none", "flip", "crops", "ten-crop"])
    ext.add_argument("--count", type=int, help="how many images (required for rendered data sets)")
    ext.add_argument("--captions", action="store_true", help="shapes: keep captions (text-to-image), not labels")
    ext.add_argument("--seed", type=int, default=0)
    ext.add_argument("--out", required=True, help="the codes file to write (.safetensors)")
    ext.add_argument("--device", help="cpu, cuda (default: CUDA when present, else the CPU)")
    ext.set_defaults(run=run_extract_codes)

    evaluate = commands.add_parser("eval", help="evaluate a model").add_subparsers(dest="model", required=True)
    ev = evaluate.add_parser(
        "tokenizer",
        help="PSNR, SSIM, codebook usage, perplexity and dead codes on images the tokenizer never saw",
        description="By default on 256x256 crops of the held-out photos (china and flower from scikit-learn, "
        "grace_hopper from Matplotlib); --data picks another held-out set; or on the image files given.",
    )
    ev.add_argument("--tokenizer", required=True)
    ev.add_argument("images", nargs="*", help="image files (default: the held-out photo crops)")
    ev.add_argument("--data", default="photos", help="held-out images: photos, photo-tiles, shapes or digits")
    ev.add_argument("--size", type=int, help="image size of the held-out set (default: its own)")
    ev.add_argument("--config")
    ev.add_argument("--save-images", help="write the originals and reconstructions as PNGs under this folder")
    ev.add_argument(
        "--inception",
        help="torchvision's Inception-v3 weights (inception_v3_google-0cc3c7bd.pth) for the "
        "reconstruction FID; without them a fixed random network's features stand in (see llamagen.evaluation.fid)",
    )
    add_device_options(ev)
    ev.set_defaults(run=run_eval_tokenizer)

    export = commands.add_parser("export", help="ship a trained model").add_subparsers(dest="model", required=True)
    ex = export.add_parser("tokenizer", help="bf16 weights and a model card in llamagen/assets, loadable by name")
    ex.add_argument("run_dir", metavar="RUN", help="the training run's folder")
    ex.add_argument("--name", required=True)
    ex.add_argument("--data", required=True, help="what it was trained on, for the card")
    ex.add_argument("--train-command", help="the command that trained it (default: as the run recorded it)")
    ex.add_argument("--notes", default="", help="anything a reader of the card should know")
    ex.add_argument("--no-ema", action="store_true", help="ship the trained weights, not their moving average")
    ex.add_argument("--evaluate-on", default="photos", help="held-out images: photos, photo-tiles, shapes, digits")
    ex.set_defaults(run=run_export_tokenizer)
    exg = export.add_parser("gpt", help="bf16 weights and a model card scored by a judge, loadable by name")
    exg.add_argument("run_dir", metavar="RUN", help="the training run's folder")
    exg.add_argument("--name", required=True)
    exg.add_argument("--data", required=True, help="what it was trained on, for the card")
    exg.add_argument("--judge", required=True, choices=["shapes", "digits"], help="the judge that scores samples")
    exg.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0])
    exg.add_argument("--images-per-class", type=int, default=25)
    exg.add_argument("--train-command", help="the command that trained it (default: as the run recorded it)")
    exg.add_argument("--notes", default="", help="anything a reader of the card should know")
    exg.add_argument("--no-ema", action="store_true", help="ship the trained weights, not their moving average")
    exg.set_defaults(run=run_export_gpt)

    train = commands.add_parser("train", help="train a model").add_subparsers(dest="model", required=True)
    tok = train.add_parser(
        "tokenizer",
        help="train a VQ tokenizer (one process, or several under torchrun)",
        description="Data: photos (random crops of the scikit-image photos), shapes (rendered), digits "
        "(scikit-learn's), folder:PATH (one sub-folder per class, as ImageNet) or captions:FILE.jsonl. Under "
        "`torchrun --nproc-per-node N -m llamagen train tokenizer ...` each process takes 1/N of every batch "
        "(DDP: gloo on the CPU, NCCL on GPUs). Checkpoints to OUT/latest.pt every --checkpoint-every steps "
        "(atomically); --resume continues exactly; SIGINT or SIGTERM saves and exits. Metrics go to "
        "OUT/metrics.jsonl, the EMA weights to OUT/final.safetensors.",
    )
    tok.add_argument("--config", default="VQ-8-small", help="a preset, a JSON file or inline JSON of VQConfig fields")
    tok.add_argument("--out", required=True, help="the run's folder")
    tok.add_argument("--data", default="photos", help="photos, shapes, digits, folder:PATH or captions:FILE.jsonl")
    tok.add_argument("--image-size", type=int, default=64)
    tok.add_argument("--hue-jitter", action="store_true", help="photos: turn the hue of half the crops at random")
    tok.add_argument("--workers", type=int, default=0, help="data-loading processes (0: read in the training one)")
    tok.add_argument("--steps", type=int, default=10_000)
    tok.add_argument("--batch-size", type=int, default=16)
    tok.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4, the original's)")
    tok.add_argument(
        "--entropy-loss",
        type=float,
        help="weight of the entropy loss, which spreads codes over the codebook "
        "(default: the config's, 0 in the presets)",
    )
    tok.add_argument(
        "--restart-dead-codes",
        type=int,
        metavar="N",
        help="every N steps, move codebook entries unused in the "
        "usage window onto poorly represented latents (not in the original; against collapse)",
    )
    tok.add_argument("--ema-decay", type=float, default=0.999)
    tok.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    tok.add_argument("--lpips-vgg", help="torchvision's VGG16 weights (vgg16-397923af.pth), for the LPIPS loss")
    tok.add_argument("--lpips-lin", help="LPIPS's linear layers for VGG (vgg.pth of the lpips package)")
    tok.add_argument("--perceptual-weight", type=float, default=1.0, help="weight of LPIPS (default 1.0)")
    tok.add_argument("--disc-start", type=int, help="step at which the PatchGAN starts (default: no GAN)")
    tok.add_argument("--disc-weight", type=float, default=0.5, help="weight of the adversarial loss (default 0.5)")
    tok.add_argument("--seed", type=int, default=0)
    tok.add_argument("--log-every", type=int, default=50)
    tok.add_argument("--checkpoint-every", type=int, default=500)
    tok.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tok.add_argument("--device", help="cpu, cuda (default: CUDA when present, else the CPU)")
    tok.set_defaults(run=run_train_tokenizer)
    gpt = train.add_parser(
        "gpt",
        help="train a generator on extracted codes (one process, or several under torchrun)",
        description="Class- or text-conditional, as the codes file says (see `llamagen extract-codes`). "
        "The model is the --config preset fitted to the codes: their vocabulary, grid and classes, or the "
        "text encoder's width and context. Checkpoints, --resume, signals and logs as for the tokenizer.",
    )
    gpt.add_argument("--codes", required=True, help="a codes file written by `llamagen extract-codes`")
    gpt.add_argument("--config", default="GPT-S", help="a preset, a JSON file or inline JSON of GPTConfig fields")
    gpt.add_argument("--text-encoder", help="for captioned codes: an embedded CLIP's name or a checkpoint")
    gpt.add_argument("--out", required=True, help="the run's folder")
    gpt.add_argument("--steps", type=int, default=10_000)
    gpt.add_argument("--batch-size", type=int, default=64)
    gpt.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4, the original's)")
    gpt.add_argument("--weight-decay", type=float, default=0.05, help="on matrices only (default 0.05)")
    gpt.add_argument("--ema-decay", type=float, default=0.9999)
    gpt.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    gpt.add_argument("--seed", type=int, default=0)
    gpt.add_argument("--log-every", type=int, default=50)
    gpt.add_argument("--checkpoint-every", type=int, default=500)
    gpt.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    gpt.add_argument("--device", help="cpu, cuda (default: CUDA when present, else the CPU)")
    gpt.set_defaults(run=run_train_gpt)
    clip = train.add_parser(
        "clip",
        help="train a small CLIP on captioned images (open_clip's architecture and contrastive loss)",
        description="For text-to-image on shapes: the captions leave out the held-out (shape, colour) pairs. "
        "The weights go to OUT/final.safetensors, usable as --text-encoder. One process.",
    )
    clip.add_argument("--config", default="shapes-clip", help="a preset, JSON file or inline JSON of ClipConfig")
    clip.add_argument("--data", default="shapes", help="shapes or captions:FILE.jsonl")
    clip.add_argument("--out", required=True, help="the run's folder")
    clip.add_argument("--steps", type=int, default=3000)
    clip.add_argument("--batch-size", type=int, default=128)
    clip.add_argument("--lr", type=float, default=5e-4)
    clip.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    clip.add_argument("--seed", type=int, default=0)
    clip.add_argument("--log-every", type=int, default=50)
    clip.add_argument("--checkpoint-every", type=int, default=500)
    clip.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    clip.add_argument("--device", help="cpu, cuda (default: CUDA when present, else the CPU)")
    clip.set_defaults(run=run_train_clip)
    judge = train.add_parser(
        "judge",
        help="train a judge: a classifier of real shapes or digits that scores generated images",
        description="Writes the weights (bf16) to --out and a card with the held-out accuracy beside it; "
        "--out llamagen/assets/NAME.safetensors makes it an embedded model.",
    )
    judge.add_argument("kind", choices=["shapes", "digits"])
    judge.add_argument("--out", required=True, help="a .safetensors file")
    judge.add_argument("--steps", type=int, default=1500)
    judge.add_argument("--batch-size", type=int, default=64)
    judge.add_argument("--lr", type=float, default=2e-3)
    judge.add_argument("--seed", type=int, default=0)
    judge.set_defaults(run=run_train_judge)

    sweep = commands.add_parser("sweep", help="studies over many small models").add_subparsers(
        dest="study", required=True
    )
    cb = sweep.add_parser(
        "codebook",
        help="codebook usage against dimension, size and l2-normalisation (the paper's Table 2, small)",
        description="Trains one small tokenizer per combination on the same photo crops for the same steps and "
        "writes usage, perplexity, PSNR and usage over training to --out (JSON) and a CSV beside it after every "
        "run. Started again, it skips the runs already recorded.",
    )
    cb.add_argument("--out", default="notebooks/data/codebook_sweep.json")
    cb.add_argument("--work-dir", default="runs/codebook-sweep", help="where the runs' checkpoints go")
    cb.add_argument("--dims", type=int, nargs="+", help="codebook dimensions (default: 4 8 16 32 64 256)")
    cb.add_argument("--sizes", type=int, nargs="+", help="codebook sizes (default: 1024 4096 16384)")
    cb.add_argument("--steps", type=int, help="training steps per run (default: 400)")
    cb.add_argument("--batch-size", type=int, help="(default: 32)")
    cb.set_defaults(run=run_sweep_codebook)
    cfg = sweep.add_parser(
        "cfg",
        help="accuracy, FID, precision, recall and diversity against the guidance scale",
        description="Generates --images-per-class images of every class at each scale (the same seeds at every "
        "scale) and scores them with the embedded judge; one CSV row per scale (the notebooks read it).",
    )
    cfg.add_argument("--model", required=True, help="a class-conditional generator: embedded name or file")
    cfg.add_argument("--tokenizer", help="for published generators: their tokenizer")
    cfg.add_argument("--judge", required=True, choices=["shapes", "digits"])
    cfg.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0])
    cfg.add_argument("--images-per-class", type=int, default=25)
    cfg.add_argument("--top-k", type=int, default=0)
    cfg.add_argument("--seed", type=int, default=0)
    cfg.add_argument("--out", required=True, help="the CSV to write (e.g. notebooks/data/cfg_sweep_shapes-c2i.csv)")
    add_device_options(cfg)
    cfg.set_defaults(run=run_sweep_cfg)
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
