"""`llamagen extract-codes` and `llamagen train tokenizer|gpt|cca|clip|judge`."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from llamagen.cli.common import (
    add_run_options,
    add_settings_flags,
    apply_overrides,
    check_writable,
    command_line,
    parse_config,
    report_training,
    settings_from_flags,
)
from llamagen.training.settings import (
    CCATrainingConfig,
    ClipTrainingConfig,
    GPTTrainingConfig,
    TokenizerTrainingConfig,
)

DEFAULT_TOKENIZER_CONFIG = "VQ-8-small"


def _conditioned_data(args: argparse.Namespace, size: int):
    """(data set, "label" or "caption") for --data, --captions and --seed: what a generator is conditioned on."""
    from llamagen.data import open_dataset

    if args.captions and args.data != "shapes":
        raise ValueError("--captions applies to the shapes data set (captions:FILE.jsonl always has them)")
    options = {"captioned": True} if args.captions else {}
    dataset = open_dataset(args.data, size=size, seed=args.seed, **options)
    return dataset, "caption" if args.captions or args.data.startswith("captions:") else "label"


def _codes_description(args: argparse.Namespace) -> dict:
    return {"tokenizer": args.tokenizer, "data": args.data, "seed": args.seed, "command": command_line()}


def run_extract_codes(args: argparse.Namespace) -> None:
    from llamagen.data.batches import is_procedural
    from llamagen.data.codes import extract_codes, source_size
    from llamagen.tokenizer.loading import load_tokenizer

    check_writable(Path(args.out), "--out")
    dataset, condition = _conditioned_data(args, source_size(args.augment, args.image_size))
    if args.count is None and is_procedural(dataset):
        raise ValueError(f"{args.data} draws images without end: say how many with --count")
    tokenizer = load_tokenizer(args.tokenizer, device=args.device)
    description = _codes_description(args)
    path = extract_codes(tokenizer, dataset, args.out, args.image_size, args.augment, args.count,
                         condition=condition, description=description)  # fmt: skip
    print(f"wrote       {path}")


def run_train_tokenizer(args: argparse.Namespace) -> None:
    from llamagen.data import open_dataset
    from llamagen.tokenizer import VQConfig
    from llamagen.training.tokenizer import train_tokenizer

    training = settings_from_flags(TokenizerTrainingConfig, args)
    training, changes = apply_overrides(training, args.override, args.resume)
    model_config = None  # started from weights (--init-from) without --config: their model
    if args.config is not None or training.init_from is None:
        model_config = VQConfig.coerce(parse_config(args.config or DEFAULT_TOKENIZER_CONFIG))
    if args.entropy_loss is not None:
        if model_config is None:
            from llamagen.tokenizer.loading import load_tokenizer

            model_config = load_tokenizer(training.init_from, device="cpu").config
        model_config = dataclasses.replace(model_config, entropy_loss_ratio=args.entropy_loss)
    lpips = None
    if args.lpips_vgg or args.lpips_lin:
        if not (args.lpips_vgg and args.lpips_lin):
            raise ValueError("LPIPS needs both --lpips-vgg and --lpips-lin")
        from llamagen.evaluation.lpips import load_lpips

        lpips = load_lpips(args.lpips_vgg, args.lpips_lin)
    if args.hue_jitter and not args.data.startswith("photos"):
        raise ValueError("--hue-jitter applies to the photos data sets only")
    options = {"hue_jitter": True} if args.hue_jitter else {}
    dataset = open_dataset(args.data, size=args.image_size, seed=args.seed, **options)
    outcome = train_tokenizer(
        model_config,
        training,
        dataset,
        args.out,
        resume=args.resume,
        command=command_line(),
        workers=args.workers,
        device=args.device,
        lpips=lpips,
        changes=changes,
    )
    report_training(outcome.finished, outcome.step, Path(args.out))


def run_train_gpt(args: argparse.Namespace) -> None:
    from llamagen.data.codes import CodesDataset, CodesOnTheFly
    from llamagen.gpt import GPTConfig
    from llamagen.tokenizer.loading import load_tokenizer
    from llamagen.training.gpt import generator_config_for, train_gpt

    if bool(args.codes) == bool(args.data):
        raise ValueError("train on extracted codes (--codes FILE) or on images tokenized as they come (--data)")
    if args.codes:
        codes = CodesDataset(args.codes, seed=args.seed)
    else:
        if not args.tokenizer:
            raise ValueError("--data needs the --tokenizer that turns its images into codes")
        dataset, condition = _conditioned_data(args, args.image_size)
        tokenizer = load_tokenizer(args.tokenizer, device=args.device)
        codes = CodesOnTheFly(dataset, tokenizer, args.image_size, condition, _codes_description(args))
    info = codes.info
    text_encoder = None
    if args.text_encoder:
        from llamagen.text import load_text_encoder

        text_encoder = load_text_encoder(args.text_encoder)
    model_config = generator_config_for(info, GPTConfig.coerce(parse_config(args.config)), text_encoder)
    training = settings_from_flags(GPTTrainingConfig, args)
    training, changes = apply_overrides(training, args.override, args.resume)
    outcome = train_gpt(model_config, training, codes, args.out, text_encoder, resume=args.resume,
                        command=command_line(), device=args.device, changes=changes)  # fmt: skip
    report_training(outcome.finished, outcome.step, Path(args.out), ema=training.ema_decay > 0)


def run_train_cca(args: argparse.Namespace) -> None:
    from llamagen.gpt.loading import load_gpt
    from llamagen.training.cca import finetune_cca

    pretrained = load_gpt(args.gpt, device=args.device, dtype=torch.float32)
    training = settings_from_flags(CCATrainingConfig, args)
    training, changes = apply_overrides(training, args.override, args.resume)
    _, step, finished = finetune_cca(pretrained, training, args.codes, args.out, resume=args.resume,
                                     command=command_line(), changes=changes)  # fmt: skip
    report_training(finished, step, Path(args.out), ema=training.ema_decay > 0)


def run_train_clip(args: argparse.Namespace) -> None:
    from llamagen.data import open_dataset
    from llamagen.text import ClipConfig
    from llamagen.training.clip import train_clip

    training = settings_from_flags(ClipTrainingConfig, args)
    training, changes = apply_overrides(training, args.override, args.resume)
    if args.data == "motion":
        from llamagen.motion.text import MOTION_CLIP
        from llamagen.training.motion_clip import train_motion_clip

        chosen = MOTION_CLIP if args.config == "shapes-clip" else parse_config(args.config)
        _, step, finished = train_motion_clip(training, args.out, ClipConfig.coerce(chosen), resume=args.resume,
                                              command=command_line(), changes=changes)  # fmt: skip
        report_training(finished, step, Path(args.out), ema=False)
        return
    config = ClipConfig.coerce(parse_config(args.config))
    options = {"captioned": True} if args.data == "shapes" else {}
    dataset = open_dataset(args.data, size=config.vision_cfg.get("image_size", 224), seed=args.seed, **options)
    _, step, finished = train_clip(config, training, dataset, args.out, resume=args.resume, command=command_line(),
                                   device=args.device, changes=changes)  # fmt: skip
    report_training(finished, step, Path(args.out), ema=False)


def run_train_judge(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must name a .safetensors file, got {str(out)!r}")
    check_writable(out, "--out")
    chosen = {name: getattr(args, name) for name in ("steps", "batch_size", "lr", "seed") if getattr(args, name)}
    started = time.time()
    if args.kind == "motion":
        from llamagen.motion.judge import MotionJudgeConfig
        from llamagen.training.motion_judge import MotionJudgeTraining, save_motion_judge, train_motion_judge

        training = MotionJudgeTraining(**chosen)
        judge, accuracy = train_motion_judge(MotionJudgeConfig(), training)
        save_motion_judge(judge, training, accuracy, out, command_line(), (time.time() - started) / 60)
    else:
        from llamagen.training.judge import JudgeTraining, save_judge, train_judge

        training = JudgeTraining(**chosen)
        judge, accuracy = train_judge(args.kind, training)
        save_judge(judge, args.kind, training, accuracy, out, command_line(), (time.time() - started) / 60)
    print(
        f"wrote       {out} and its card; held-out accuracy " + ", ".join(f"{k} {v:.1%}" for k, v in accuracy.items())
    )


def add_extract_codes(commands: argparse._SubParsersAction) -> None:
    """The top-level `extract-codes`."""
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


def add_train_commands(train: argparse._SubParsersAction) -> None:
    """The `train` group: tokenizer, gpt, cca, clip, judge."""
    tok = train.add_parser(
        "tokenizer",
        help="train a VQ tokenizer (one process, or several under torchrun)",
        description="Data: photos (random crops of the scikit-image photos), photos+gradio (and of Gradio's six), "
        "shapes (rendered), digits (scikit-learn's), folder:PATH (one sub-folder per class, as ImageNet) or "
        "captions:FILE.jsonl. Under "
        "`torchrun --nproc-per-node N -m llamagen train tokenizer ...` each process takes 1/N of every batch "
        "(DDP: gloo on the CPU, NCCL on GPUs). Checkpoints to OUT/latest.pt every --checkpoint-every steps "
        "(atomically); --resume continues exactly; SIGINT or SIGTERM saves and exits. Metrics go to "
        "OUT/metrics.jsonl, the EMA weights to OUT/final.safetensors.",
    )
    tok.add_argument(
        "--config",
        help=f"a preset, a JSON file or inline JSON of VQConfig fields (default: {DEFAULT_TOKENIZER_CONFIG}, or with "
        "--init-from the model of those weights; from weights, num_res_blocks may grow: the new blocks start as the "
        "identity)",
    )
    tok.add_argument("--out", required=True, help="the run's folder")
    tok.add_argument(
        "--data", default="photos", help="photos, photos+gradio, shapes, digits, folder:PATH or captions:FILE.jsonl"
    )
    tok.add_argument("--image-size", type=int, default=64)
    tok.add_argument("--hue-jitter", action="store_true", help="photos: turn the hue of half the crops at random")
    tok.add_argument("--workers", type=int, default=0, help="data-loading processes (0: read in the training one)")
    tok.add_argument(
        "--entropy-loss",
        type=float,
        help="weight of the entropy loss, which spreads codes over the codebook "
        "(default: the config's, 0 in the presets)",
    )
    tok.add_argument("--lpips-vgg", help="torchvision's VGG16 weights (vgg16-397923af.pth), for the LPIPS loss")
    tok.add_argument("--lpips-lin", help="LPIPS's linear layers for VGG (vgg.pth of the lpips package)")
    add_settings_flags(tok, TokenizerTrainingConfig)
    add_run_options(tok)
    tok.set_defaults(run=run_train_tokenizer)
    gpt = train.add_parser(
        "gpt",
        help="train a generator on extracted codes (one process, or several under torchrun)",
        description="Class- or text-conditional, as the codes file says (see `llamagen extract-codes`). "
        "--data with --tokenizer tokenizes images as they come instead. The model is the --config preset "
        "fitted to the codes: their vocabulary, grid and classes, or the "
        "text encoder's width and context. Checkpoints, --resume, signals and logs as for the tokenizer.",
    )
    gpt.add_argument("--codes", help="a codes file written by `llamagen extract-codes`")
    gpt.add_argument("--data", help="instead of --codes: images tokenized as they come (shapes, digits, ...)")
    gpt.add_argument("--tokenizer", help="with --data: the tokenizer (an embedded name or a checkpoint)")
    gpt.add_argument("--image-size", type=int, default=64, help="with --data (default 64)")
    gpt.add_argument("--captions", action="store_true", help="with --data shapes: captions (text-to-image)")
    gpt.add_argument("--config", default="GPT-S", help="a preset, a JSON file or inline JSON of GPTConfig fields")
    gpt.add_argument("--text-encoder", help="for captioned codes: an embedded CLIP's name or a checkpoint")
    gpt.add_argument("--out", required=True, help="the run's folder")
    add_settings_flags(gpt, GPTTrainingConfig)
    add_run_options(gpt)
    gpt.set_defaults(run=run_train_gpt)
    cca = train.add_parser(
        "cca",
        help="fine-tune a class-conditional generator to sample without guidance (condition contrastive alignment)",
        description="CCA (Chen et al. 2024): the generator, against a frozen copy of itself, learns to make each "
        "image likelier under its own class and less likely under another's, so that unguided sampling draws what "
        "guidance drew; --cca-lambda plays the guidance scale's part. On the codes it was trained on. Checkpoints, "
        "--resume, signals and logs as for the generator. One process.",
    )
    cca.add_argument("--gpt", required=True, help="the generator: an embedded name (shapes-c2i) or a file")
    cca.add_argument("--codes", required=True, help="its class-labelled codes (`llamagen extract-codes`)")
    cca.add_argument("--out", required=True, help="the run's folder")
    add_settings_flags(cca, CCATrainingConfig)
    add_run_options(cca)
    cca.set_defaults(run=run_train_cca)
    clip = train.add_parser(
        "clip",
        help="train a small CLIP on captioned images or motions (open_clip's architecture and contrastive loss)",
        description="For text-to-image on shapes: the captions leave out the held-out (shape, colour) pairs. "
        "For text-to-motion (--data motion): a text tower against a motion tower, the captions leaving out the "
        "held-out (action, value) pairs. The weights go to OUT/final.safetensors, usable as --text-encoder. "
        "One process.",
    )
    clip.add_argument(
        "--config", default="shapes-clip", help="a preset, JSON file or inline JSON of ClipConfig (motion: its own)"
    )
    clip.add_argument("--data", default="shapes", help="shapes, motion or captions:FILE.jsonl")
    clip.add_argument("--out", required=True, help="the run's folder")
    add_settings_flags(clip, ClipTrainingConfig)
    add_run_options(clip)
    clip.set_defaults(run=run_train_clip)
    judge = train.add_parser(
        "judge",
        help="train a judge: a classifier of real shapes, digits or motion clips that scores generated ones",
        description="Writes the weights (bf16) to --out and a card with the held-out accuracy beside it; "
        "--out llamagen/assets/NAME.safetensors makes it an embedded model.",
    )
    judge.add_argument("kind", choices=["shapes", "digits", "motion"])
    judge.add_argument("--out", required=True, help="a .safetensors file")
    judge.add_argument("--steps", type=int, help="(default: 1,500; motion: 2,000)")
    judge.add_argument("--batch-size", type=int, help="(default: 64; motion: 32)")
    judge.add_argument("--lr", type=float, help="(default: 2e-3; motion: 1e-3)")
    judge.add_argument("--seed", type=int, help="(default: 0)")
    judge.set_defaults(run=run_train_judge)
