"""`llamagen eval tokenizer`, `llamagen export tokenizer|gpt` and the `llamagen sweep` commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from llamagen.cli.common import add_device_options, check_writable, command_line, parse_config
from llamagen.gpt.guidance_schedules import SCHEDULES


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


def run_eval_samples(args: argparse.Namespace) -> None:
    import json

    from llamagen.evaluation.sample_metrics import (
        InceptionReader,
        JudgeReader,
        compare,
        load_images,
        read_in_parts,
        reference_statistics,
    )
    from llamagen.files import write_text_atomically
    from llamagen.training.distributed import start_processes

    if bool(args.inception) == bool(args.judge):
        raise ValueError("read the images with --inception WEIGHTS or with --judge shapes|digits, one of them")
    if args.out:
        check_writable(Path(args.out), "--out")
    samples, reference = load_images(args.samples), load_images(args.reference)  # both checked before any model
    processes = start_processes(args.device)
    reader = (InceptionReader(args.inception, processes.device) if args.inception
              else JudgeReader(args.judge, processes.device))  # fmt: skip
    # An ADM reference batch's FID statistics are the TensorFlow graph's: only its port may be compared with them.
    graph = isinstance(reader, InceptionReader) and reader.graph == "tensorflow"
    statistics = reference_statistics(args.reference) if graph else None
    fake, real = (read_in_parts(reader, images, processes, args.batch_size) for images in (samples, reference))
    if processes.is_main:
        fid_reference = "the reference batch's statistics" if statistics else "the reference images"
        results = {"reader": reader.name, "fid_reference": fid_reference, **compare(fake, real, statistics=statistics)}
        for name, value in results.items():
            print(f"{name:<18}{value:.4f}" if isinstance(value, float) else f"{name:<18}{value}")
        if args.out:
            write_text_atomically(Path(args.out), json.dumps(results, indent=1) + "\n")
            print(f"wrote             {args.out}")
    processes.close()


def run_export_tokenizer(args: argparse.Namespace) -> None:
    from llamagen.training.export import export_tokenizer

    card = export_tokenizer(
        args.run_dir,
        args.name,
        args.data,
        args.train_commands,
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

    card = export_generator(
        args.run_dir, args.name, args.data, args.judge, tuple(args.cfg_scales), args.images_per_class,
        args.train_commands, args.notes, use_ema=not args.no_ema, tokenizer=args.tokenizer,
        text_encoder=args.text_encoder, captions=args.captions,
    )  # fmt: skip
    print(f"wrote       llamagen/assets/{args.name}.safetensors and {args.name}.json")
    for row in card["evaluation"]["by_cfg_scale"]:
        _print_guidance_row(row)
    held_out = card["evaluation"].get("held_out_pairs_at_best_cfg_scale")
    if held_out:
        print(f"held-out (shape, colour) pairs at the best scale: {held_out['accuracy']}")


def run_export_clip(args: argparse.Namespace) -> None:
    from llamagen.training.export import export_text_encoder

    card = export_text_encoder(args.run_dir, args.name, args.data, args.train_commands, args.notes)
    evaluation = card["evaluation"]
    print(f"wrote       llamagen/assets/{args.name}.safetensors and {args.name}.json")
    print(
        f"retrieval   caption -> image {evaluation['text_to_image_top1']:.1%}, image -> caption "
        f"{evaluation['image_to_text_top1']:.1%} among {evaluation['candidates']}"
    )


def run_export_motion_clip(args: argparse.Namespace) -> None:
    from llamagen.training.motion_export import export_motion_text_encoder

    card = export_motion_text_encoder(args.run_dir, args.name, args.data, args.train_commands, args.notes)
    evaluation = card["evaluation"]
    print(f"wrote       llamagen/assets/{args.name}.safetensors and {args.name}.json")
    print(
        f"retrieval   caption -> motion {evaluation['text_to_motion_top1']:.1%}, motion -> caption "
        f"{evaluation['motion_to_text_top1']:.1%} among {evaluation['candidates']}; own parameter value preferred: "
        + ", ".join(f"{name} {share:.0%}" for name, share in evaluation["right_value"].items())
    )


def run_export_motion_tokenizer(args: argparse.Namespace) -> None:
    from llamagen.training.motion_export import export_motion_tokenizer

    card = export_motion_tokenizer(args.run_dir, args.name, args.data, args.train_commands, args.notes)
    evaluation = card["evaluation"]
    print(f"wrote       llamagen/assets/{args.name}.safetensors and {args.name}.json")
    print(
        f"held out    MPJPE {evaluation['mpjpe_mm']:.1f} mm (pose {evaluation['pose_mpjpe_mm']:.1f}, root's path "
        f"{evaluation['root_error_mm']:.1f}), joint velocity error "
        f"{evaluation['velocity_error_mm_s']:.1f} mm/s, usage {evaluation['codebook_usage']:.1%}, perplexity "
        f"{evaluation['perplexity']:.1f}"
    )


def run_export_motion_gpt(args: argparse.Namespace) -> None:
    from llamagen.training.motion_export import export_motion_generator

    card = export_motion_generator(
        args.run_dir, args.name, args.data, tokenizer=args.tokenizer, text_encoder=args.text_encoder,
        judge=args.judge, cfg_scales=args.cfg_scales, captions=args.captions, train_commands=args.train_commands,
        notes=args.notes, use_ema=not args.no_ema,
    )  # fmt: skip
    print(f"wrote       llamagen/assets/{args.name}.safetensors and {args.name}.json")
    for row in card["evaluation"]["by_cfg_scale"]:
        print(
            f"guidance {row['cfg_scale']:<5g} actions right {row['actions']:.1%} [{row['actions_low']:.1%}, "
            f"{row['actions_high']:.1%}], everything right {row['everything']:.1%} [{row['everything_low']:.1%}, "
            f"{row['everything_high']:.1%}] of {row['actions_n']}"
        )
    held_out = card["evaluation"]["held_out_pairs_at_best_cfg_scale"]
    print(f"held-out pairs at guidance {card['evaluation']['best_cfg_scale']:g}: actions right "
          f"{held_out['actions']:.1%}, everything right {held_out['everything']:.1%}")  # fmt: skip


def _print_guidance_row(row: dict) -> None:
    """A guidance sweep's row: with intervals and floors as the sweeps write them (captions: accuracy per stated
    attribute, FID, KID and CLIP score), or as a model card recorded it (values alone)."""
    label = f"cfg {row['cfg_scale']:<5g}"
    if row.get("cfg_schedule", "constant") != "constant":
        label = f"{row['cfg_schedule']} cfg, mean {row['mean_scale']:g} (up to {row['cfg_scale']:g})"

    def shown(name: str, digits: int = 2) -> str:
        floor = f" (real {row[f'{name}_real_floor']:.{digits}f})" if f"{name}_real_floor" in row else ""
        if f"{name}_low" not in row:
            return f"{row[name]:.{digits}f}{floor}"
        return f"{row[name]:.{digits}f} [{row[f'{name}_low']:.{digits}f}, {row[f'{name}_high']:.{digits}f}]{floor}"

    accuracy = ", ".join(f"{key.removeprefix('accuracy_')} {value:.1%}" for key, value in row.items()
                         if key.startswith("accuracy_") and not key.endswith(("_low", "_high")))  # fmt: skip
    if "accuracy_all_stated" in row:  # captions
        distances = f"; FID {shown('fid')}, KID {shown('kid', 4)}" if "kid" in row else ""
        clip = "" if row.get("clip_score") is None else f"; CLIP score {row['clip_score']:.1f}"
        print(f"{label} {accuracy}{distances}{clip}")
        return
    if "kid" in row:
        print(
            f"{label} class accuracy {shown('accuracy_class', 3)}, read as none "
            f"{shown('read_as_none', 3)}, FID {shown('fid')}, KID {shown('kid', 4)}, precision "
            f"{shown('precision')}, recall {shown('recall')}, diversity {shown('diversity')}; {row['images']} images"
        )
        return
    print(
        f"{label} {accuracy}; FID {shown('fid')}, precision {row['precision']:.2f}, "
        f"recall {row['recall']:.2f}, diversity {row['diversity']:.2f}"
    )


def run_codebook_study(args: argparse.Namespace) -> None:
    from llamagen.training.codebook_study import StudySettings, gather_points, study_codebooks

    if args.points:
        import json

        check_writable(Path(args.points), "--points")
        gathered = gather_points(json.loads(Path(args.out).read_text()), args.work_dir, args.points)
        print(f"wrote       {args.points}: the codes and latents of {len(gathered)} runs")
        return
    chosen = {"data": args.data, "variants": args.variants, "seeds": args.seeds, "steps": args.steps}
    settings = StudySettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items() if v})
    check_writable(Path(args.out), "--out")
    results = study_codebooks(settings, args.out, args.work_dir)
    print(f"wrote       {args.out} and {Path(args.out).with_suffix('.csv')}: {len(results['runs'])} runs")
    width = max(map(len, results["runs"]), default=0) + 2
    for name, run in results["runs"].items():
        usage, perplexity, psnr = run["usage_eval"], run["perplexity"], run["psnr"]
        print(f"{name:<{width}}usage {usage:6.1%}  perplexity {perplexity:8.1f}  PSNR {psnr:.2f}")


def run_motion_study(args: argparse.Namespace) -> None:
    from llamagen.training.motion_study import MotionStudySettings, study_motion_tokenizers

    chosen = {"arms": args.arms, "sizes": args.sizes, "dimensions": args.dimensions, "seeds": args.seeds,
              "steps": args.steps}  # fmt: skip
    settings = MotionStudySettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items() if v})
    check_writable(Path(args.out), "--out")
    results = study_motion_tokenizers(settings, args.out, args.work_dir)
    print(f"wrote       {args.out} and {Path(args.out).with_suffix('.csv')}: {len(results['runs'])} runs")
    width = max(map(len, results["runs"]), default=0) + 2
    for name, run in results["runs"].items():
        print(f"{name:<{width}}usage {run['usage_eval']:6.1%}  perplexity {run['perplexity']:8.1f}  "
              f"MPJPE {run['mpjpe_mm']:6.1f} mm  pose {run['pose_mpjpe_mm']:6.1f} mm")  # fmt: skip


def run_text_to_motion_study(args: argparse.Namespace) -> None:
    from llamagen.training.text_to_motion_study import TextToMotionSettings, study_text_to_motion

    chosen = {name: getattr(args, name) for name in ("steps", "cfg_scale") if getattr(args, name) is not None}
    settings = TextToMotionSettings(tuple(args.tokenizers), args.text_encoder, args.judge, **chosen)
    check_writable(Path(args.out), "--out")
    results = study_text_to_motion(settings, args.out, args.work_dir)
    print(f"wrote       {args.out} and {Path(args.out).with_suffix('.csv')}: {len(results['runs'])} tokenizers")
    for name, row in results["runs"].items():
        print(f"{name}: actions right {row['seen_actions']:.0%} (seen pairs), {row['held_out_actions']:.0%} "
              f"(held-out pairs); the wrong-caption control {row['control_actions']:.0%}")  # fmt: skip


def run_sweep_cfg(args: argparse.Namespace) -> None:
    from llamagen.analysis.guidance import sweep_caption_guidance, sweep_guidance, write_rows_csv
    from llamagen.pipeline import load_pipeline

    check_writable(Path(args.out), "--out")
    pipe = load_pipeline(args.model, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype)
    progress = _written_as_they_come(args.out, _print_guidance_row)
    common = {"scales": tuple(args.scales), "seed": args.seed, "progress": progress,
              "schedules": tuple(args.schedules), "top_k": args.top_k}  # fmt: skip
    if pipe.model_type == "t2i":
        if args.judge not in (None, "shapes") or args.inception:
            raise SystemExit(
                "a text-to-image generator is judged on its captions by the shapes judge, without --inception"
            )
        rows = sweep_caption_guidance(pipe, args.captions, **common)
    else:
        if args.judge is None:
            raise SystemExit("--judge is needed for a class-conditional generator: shapes or digits")
        inception = None
        if args.inception:
            from llamagen.evaluation.fid import InceptionFeatures

            inception = InceptionFeatures(args.inception)
        rows = sweep_guidance(pipe, args.judge, images_per_class=args.images_per_class, inception=inception, **common)
    print(f"wrote       {write_rows_csv(rows, args.out)}")


def _written_as_they_come(out, show):
    """A sweep's progress callback: show each row and write the CSV so far to `out`, so that a sweep stopped
    part way keeps the rows it scored."""
    from llamagen.analysis.guidance import write_rows_csv

    done: list[dict] = []

    def progress(row: dict) -> None:
        show(row)
        done.append(row)
        write_rows_csv(done, out)

    return progress


def _print_completion_row(row: dict) -> None:
    print(
        f"{row['keep_rows']} rows kept, {row['condition']:<10} {row['where']:<6} read as the condition's class "
        f"{row['read_as_condition']:.1%}, as the image's {row['read_as_image']:.1%} ({row['images']} images)"
    )


def run_sweep_completion(args: argparse.Namespace) -> None:
    from llamagen.analysis.completion import completion_readings
    from llamagen.pipeline import load_pipeline

    check_writable(Path(args.out), "--out")
    pipe = load_pipeline(args.model, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype)
    if pipe.model_type != "c2i":
        raise SystemExit("completion against a contradicting class needs a class-conditional generator")
    keep_rows = args.keep_rows if args.keep_rows is not None else range(pipe.gpt.config.grid_size + 1)
    cfg_scale = args.cfg_scale if args.cfg_scale is not None else pipe.sampling.cfg_scale
    written = _written_as_they_come(args.out, _print_completion_row)
    completion_readings(pipe, args.judge, keep_rows, args.images, args.seed,
                        lambda row: written({**row, "cfg_scale": cfg_scale}), cfg_scale=cfg_scale)  # fmt: skip
    print(f"wrote       {args.out}")


def run_sweep_conditioning(args: argparse.Namespace) -> None:
    from llamagen.text import load_text_encoder
    from llamagen.tokenizer.loading import load_tokenizer
    from llamagen.training.conditioning_study import StudySettings, run_study

    chosen = {"arms": args.arms, "seeds": args.seeds, "steps": args.steps, "images_per_class": args.images_per_class,
              "captions": args.captions}  # fmt: skip
    if args.base:
        from llamagen.gpt import GPTConfig

        chosen["base"] = GPTConfig.coerce(parse_config(args.base)).to_dict()
    settings = StudySettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items() if v})
    check_writable(Path(args.out), "--out")
    tokenizer = load_tokenizer(args.tokenizer, device=args.device)
    encoder = load_text_encoder(args.text_encoder, device=args.device) if args.text_encoder else None
    rows = run_study(settings, args.codes, tokenizer, args.out, args.work_dir, encoder, on_row=_print_arm_row,
                     command=command_line())  # fmt: skip
    print(f"wrote       {args.out}: {len(rows)} runs")


def _print_arm_row(row: dict) -> None:
    accuracies = " ".join(f"{key.removeprefix('accuracy_at_')}: {float(value):.2f}"
                          for key, value in row.items() if key.startswith("accuracy_at_"))  # fmt: skip
    print(f"{row['arm']:<16} seed {row['seed']}  {row['parameters']:,} parameters  accuracy by scale {accuracies}")


def add_eval_commands(evaluate: argparse._SubParsersAction) -> None:
    """The `eval` group: tokenizer, samples."""
    ev = evaluate.add_parser(
        "tokenizer",
        help="PSNR, SSIM, codebook usage, perplexity and dead codes on images the tokenizer never saw",
        description="By default on 256x256 crops of the held-out photos (china and flower from scikit-learn, "
        "grace_hopper from Matplotlib); --data picks another held-out set; or on the image files given.",
    )
    ev.add_argument("--tokenizer", required=True)
    ev.add_argument("images", nargs="*", help="image files (default: the held-out photo crops)")
    ev.add_argument(
        "--data", default="photos", help="held-out images: photos, whole-photos, photo-tiles, shapes or digits"
    )
    ev.add_argument("--size", type=int, help="image size of the held-out set (default: its own)")
    ev.add_argument("--config")
    ev.add_argument("--save-images", help="write the originals and reconstructions as PNGs under this folder")
    ev.add_argument(
        "--inception",
        help="Inception-v3 weights for the reconstruction FID (the FID port of the TensorFlow graph, "
        "pt_inception-2015-12-05-6726825d.pth, or torchvision's, inception_v3_google-0cc3c7bd.pth); without them a "
        "fixed random network's features stand in (see llamagen.evaluation.fid)",
    )
    add_device_options(ev)
    ev.set_defaults(run=run_eval_tokenizer)
    samples = evaluate.add_parser(
        "samples",
        help="FID, sFID, Inception Score, precision and recall of a sample set against a reference set",
        description="Reads both sets (ADM-format .npz files with arr_0, as `llamagen sample` writes, or folders of "
        "images) with Inception-v3 from a local weight file, or with a judge of this project, and compares them "
        "(llamagen.evaluation.sample_metrics; docs/evaluation.md says how close to the ADM evaluator's numbers "
        "they come). With the FID port of the TensorFlow graph, FID and sFID use an ADM reference batch's own "
        "statistics where it has them. Under torchrun each process reads its part of each set.",
    )
    samples.add_argument("samples", help="the sample set: .npz (arr_0) or a folder of images")
    samples.add_argument("--reference", required=True, help="the reference set: .npz (arr_0) or a folder of images")
    samples.add_argument(
        "--inception",
        help="Inception-v3 weights: the FID port of the TensorFlow graph (pt_inception-2015-12-05-6726825d.pth, "
        "as the ADM evaluator reads) or torchvision's (inception_v3_google-0cc3c7bd.pth)",
    )
    samples.add_argument("--judge", choices=["shapes", "digits"], help="read with this project's judge instead")
    samples.add_argument("--batch-size", type=int, default=64)
    samples.add_argument("--out", help="also write the results as JSON")
    add_device_options(samples)
    samples.set_defaults(run=run_eval_samples)


def _export_parser(export: argparse._SubParsersAction, model: str, help: str) -> argparse.ArgumentParser:
    """A sub-command of `export` with the options every export takes."""
    parser = export.add_parser(model, help=help)
    parser.add_argument("run_dir", metavar="RUN", help="the training run's folder")
    parser.add_argument("--name", required=True)
    parser.add_argument("--data", required=True, help="what it was trained on, for the card")
    parser.add_argument(
        "--train-command",
        dest="train_commands",
        action="append",
        help="the command that trained it (default: as the run recorded it); once per command, in order, for a run "
        "started from another run's weights",
    )
    parser.add_argument("--notes", default="", help="anything a reader of the card should know")
    return parser


def add_export_commands(export: argparse._SubParsersAction) -> None:
    """The `export` group: tokenizer, gpt, clip, motion-clip, motion-tokenizer, motion-gpt."""
    ex = _export_parser(export, "tokenizer", "bf16 weights and a model card in llamagen/assets, loadable by name")
    ex.add_argument("--no-ema", action="store_true", help="ship the trained weights, not their moving average")
    ex.add_argument(
        "--evaluate-on", default="photos", help="held-out images: photos, whole-photos, photo-tiles, shapes, digits"
    )
    ex.set_defaults(run=run_export_tokenizer)
    exg = _export_parser(export, "gpt", "bf16 weights and a model card scored by a judge, loadable by name")
    exg.add_argument("--judge", choices=["shapes", "digits"], help="class-conditional: the judge that scores samples")
    exg.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0])
    exg.add_argument("--images-per-class", type=int, default=25, help="class-conditional: images per class and scale")
    exg.add_argument("--captions", type=int, default=400, help="text-conditional: captions per scale")
    exg.add_argument("--tokenizer", help="the embedded tokenizer to name (default: the one the codes recorded)")
    exg.add_argument("--text-encoder", help="text-conditional: the embedded CLIP to name (export it first)")
    exg.add_argument("--no-ema", action="store_true", help="ship the trained weights, not their moving average")
    exg.set_defaults(run=run_export_gpt)
    exc = _export_parser(export, "clip", "a small CLIP's bf16 weights and card, with caption-image retrieval")
    exc.set_defaults(run=run_export_clip)
    exm = _export_parser(export, "motion-clip", "a motion CLIP's bf16 weights and card, with caption-motion retrieval")
    exm.set_defaults(run=run_export_motion_clip)
    exmt = _export_parser(
        export, "motion-tokenizer", "a motion tokenizer's bf16 weights and card, with MPJPE and usage"
    )
    exmt.set_defaults(run=run_export_motion_tokenizer)
    exmg = _export_parser(
        export, "motion-gpt", "a text-to-motion generator's bf16 weights and card, its guidance scored by the judge"
    )
    exmg.add_argument("--tokenizer", help="the embedded motion tokenizer to name (default: the one the codes recorded)")
    exmg.add_argument("--text-encoder", help="the embedded motion CLIP to name (default: the one the run recorded)")
    exmg.add_argument("--judge", default="motion-judge", help="the embedded motion judge that scores it")
    exmg.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0])
    exmg.add_argument("--captions", type=int, default=256, help="captions of seen pairs per scale (and of held-out)")
    exmg.add_argument("--no-ema", action="store_true", help="ship the trained weights, not their moving average")
    exmg.set_defaults(run=run_export_motion_gpt)


def add_sweep_commands(sweep: argparse._SubParsersAction) -> None:
    """The `sweep` group: codebook-study, motion-tokenizers, text-to-motion, cfg, completion, conditioning."""
    study = sweep.add_parser(
        "codebook-study",
        help="where codebooks collapse and into how many dimensions, per kind of data, over seeds",
        description="Trains one small tokenizer per (data, variant, seed): the paper's codebook (16,384 x 8, l2) "
        "and variants that change its dimension, its size, l2-normalisation, its start (k-means) or add dead-code "
        "restarts. Writes usage, perplexity, PSNR, usage over training and the geometry of the used codes and the "
        "latents to --out (JSON) and a CSV beside it after every run, each run's codebook and latents to its "
        "folder. Started again, it skips the runs already recorded.",
    )
    study.add_argument("--out", default="notebooks/data/codebook_study.json")
    study.add_argument("--work-dir", default="runs/codebook-study", help="where the runs' folders go")
    study.add_argument("--data", nargs="+", help="photos, shapes, digits (default: all three)")
    study.add_argument("--variants", nargs="+", help="variant names (default: all; see codebook_study.VARIANTS)")
    study.add_argument("--seeds", type=int, nargs="+", help="(default: 0 1 2)")
    study.add_argument("--steps", type=int, help="training steps per run (default: 1000)")
    study.add_argument(
        "--points",
        help="instead of training: gather the used codes and latents of the runs --out records (seed 0 of each) "
        "from --work-dir into this .npz, for the notebooks",
    )
    study.set_defaults(run=run_codebook_study)
    motion = sweep.add_parser(
        "motion-tokenizers",
        help="LlamaGen's codebook against T2M-GPT's and FSQ in a motion tokenizer, over seeds",
        description="Trains one 1-D motion tokenizer per (arm, codebook size, seed) on the procedural motion data: "
        "T2M-GPT's quantizer (512 dimensions, EMA, resets), LlamaGen's (8 dimensions, l2) and FSQ at 512-16,384 "
        "codes, and LlamaGen's at 1,024 codes over code dimensions. Writes usage, perplexity, MPJPE, joint velocity "
        "error and the geometry of the used codes and the latents to --out (JSON) and a CSV beside it after every "
        "run. Started again, it skips the runs already recorded; under torchrun the processes share the runs.",
    )
    motion.add_argument("--out", default="notebooks/data/motion_study.json")
    motion.add_argument("--work-dir", default="runs/motion-study", help="where the runs' folders go")
    motion.add_argument("--arms", nargs="+", help="llamagen, t2m, fsq, llamagen-restart (default: all four)")
    motion.add_argument("--sizes", type=int, nargs="+", help="codebook sizes (default: 512 1024 4096 16384)")
    motion.add_argument("--dimensions", type=int, nargs="+", help="LlamaGen's code dimensions (default: 2 ... 64)")
    motion.add_argument("--seeds", type=int, nargs="+", help="(default: 0 1 2)")
    motion.add_argument("--steps", type=int, help="training steps per run (default: 2000)")
    motion.set_defaults(run=run_motion_study)
    t2m = sweep.add_parser(
        "text-to-motion",
        help="the same text-to-motion GPT over each motion tokenizer's codes, judged on what the captions ask",
        description="For each --tokenizers file: its codes of the captioned motion clips, a GPT trained on them with "
        "the captions through --text-encoder (a motion CLIP), and one motion a caption for captions whose "
        "(action, value) pairs training saw and for the held-out pairs, read by --judge. Writes each tokenizer's "
        "row (actions right, everything right, parameters right, with Wilson intervals; a wrong-caption control) "
        "and the judge's reading of the real clips to --out (JSON) and a CSV beside it. Started again, it skips "
        "the tokenizers already recorded.",
    )
    t2m.add_argument("--tokenizers", nargs="+", required=True, help="motion tokenizer files (final.safetensors)")
    t2m.add_argument("--text-encoder", required=True, help="a motion CLIP (llamagen train clip --data motion)")
    t2m.add_argument("--judge", required=True, help="a motion judge (llamagen train judge motion)")
    t2m.add_argument("--out", default="notebooks/data/text_to_motion.json")
    t2m.add_argument("--work-dir", default="runs/text-to-motion", help="where the runs' folders go")
    t2m.add_argument("--steps", type=int, help="generator training steps (default: 3000)")
    t2m.add_argument("--cfg-scale", type=float, help="guidance of the generations (default: 2)")
    t2m.set_defaults(run=run_text_to_motion_study)
    cfg = sweep.add_parser(
        "cfg",
        help="accuracy, KID, FID, precision, recall and diversity against the guidance scale and its schedule",
        description="Generates --images-per-class images of every class (a text-to-image generator of shapes: "
        "one image for each of --captions captions) at each mean guidance scale under each schedule, the same "
        "seeds for every row, and scores them with the embedded judge, each measure with its 95%% interval; "
        "one CSV row per schedule and scale (the notebooks read it).",
    )
    cfg.add_argument("--model", required=True, help="a class- or text-conditional generator: embedded name or file")
    cfg.add_argument("--tokenizer", help="for published generators: their tokenizer")
    cfg.add_argument("--judge", choices=["shapes", "digits"], help="the judge of a class generator's images")
    cfg.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0],
                     help="mean guidance scales over the tokens")  # fmt: skip
    cfg.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=["constant"],
                     help="the scale over the tokens; a ramp reaches the scale that gives the mean")  # fmt: skip
    cfg.add_argument("--images-per-class", type=int, default=25)
    cfg.add_argument("--captions", type=int, default=400, help="text-to-image: captions drawn as in training")
    cfg.add_argument("--top-k", type=int, default=0)
    cfg.add_argument("--seed", type=int, default=0)
    cfg.add_argument(
        "--inception",
        help="Inception-v3 weights (the FID port of TensorFlow's graph or torchvision's): adds the usual FID to "
        "each row",
    )
    cfg.add_argument("--out", required=True, help="the CSV to write (e.g. notebooks/data/cfg_sweep_shapes-c2i.csv)")
    add_device_options(cfg)
    cfg.set_defaults(run=run_sweep_cfg)
    com = sweep.add_parser(
        "completion",
        help="held-out images continued from their first token rows under their class and a contradicting one",
        description="Completes the first --images held-out images of the judge's kind from each number of kept "
        "token rows, under the image's own class and under one that differs in every attribute, and reads each "
        "completion as the condition's class and as the image's (Wilson intervals), with the class information "
        "its written tokens carried; a CSV row per count, condition and group of images (all; for shapes also by "
        "the object's vertical third), written as it comes.",
    )
    com.add_argument("--model", required=True, help="a class-conditional generator: embedded name or file")
    com.add_argument("--tokenizer", help="for published generators: their tokenizer")
    com.add_argument("--judge", required=True, choices=["shapes", "digits"], help="the kind of the images")
    com.add_argument("--keep-rows", type=int, nargs="+", help="token rows kept (default: 0 to the whole grid)")
    com.add_argument("--images", type=int, default=200, help="held-out images completed at each count")
    com.add_argument("--cfg-scale", type=float, help="guidance scale (default: the model's)")
    com.add_argument("--seed", type=int, default=0)
    com.add_argument("--out", required=True, help="the CSV to write")
    add_device_options(com)
    com.set_defaults(run=run_sweep_completion)
    cond = sweep.add_parser(
        "conditioning",
        help="the ways to condition, at equal parameters, trained and scored alike on the shapes codes",
        description="Trains every arm (prefix, k prefix tokens, the condition at every layer, adaLN-zero, "
        "cross-attention) with each seed on the same codes for the same steps and scores it (judged accuracy by "
        "guidance scale, FID with its floor, the condition's use on held-out shapes, the generator as a "
        "classifier); a CSV row after each run. Started again, it skips the runs already recorded.",
    )
    cond.add_argument("--codes", required=True, help="shapes codes with class labels or captions (extract-codes)")
    cond.add_argument("--tokenizer", default="shapes-vq", help="the tokenizer that made the codes")
    cond.add_argument("--text-encoder", help="captions: the CLIP whose features the generators read (shapes-clip)")
    cond.add_argument("--out", required=True, help="the CSV (e.g. notebooks/data/conditioning_c2i.csv)")
    cond.add_argument("--work-dir", default="runs/conditioning", help="where the runs' checkpoints go")
    cond.add_argument("--arms", nargs="+", help="(default: all)")
    cond.add_argument("--seeds", type=int, nargs="+", help="(default: 0 1)")
    cond.add_argument("--steps", type=int, help="training steps per run (default: 3000)")
    cond.add_argument("--images-per-class", type=int, help="class labels: images per class and scale (default: 10)")
    cond.add_argument("--captions", type=int, help="captions: captions per scale (default: 400)")
    cond.add_argument("--base", help="the generator every arm is sized from: a preset, JSON file or inline JSON of "
                      "GPTConfig fields (default: shapes-c2i's 6 layers of width 192)")  # fmt: skip
    add_device_options(cond)
    cond.set_defaults(run=run_sweep_conditioning)
