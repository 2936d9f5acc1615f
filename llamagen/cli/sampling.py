"""`llamagen sample`: a sample set for the standard evaluation, alone or under torchrun."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from llamagen.cli.common import add_device_options, check_writable
from llamagen.cli.inference import add_model_options, add_sampling_options, load_models, sampling_arguments


def _conditions(args: argparse.Namespace, pipe) -> dict:
    """class_labels= or prompts= of the set, one per image, from --per-class, --labels or --captions."""
    if args.per_class is not None:
        if pipe.model_type != "c2i":
            raise ValueError("--per-class needs a class-conditional generator; give --captions")
        classes = pipe.gpt.config.num_classes
        return {"class_labels": tuple(i % classes for i in range(classes * args.per_class))}
    path = Path(args.labels or args.captions)
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{str(path)!r} holds no line: one class label or caption a line, one per image")
    if args.labels:
        return {"class_labels": tuple(pipe.class_id(line) for line in lines)}  # unknown names refused here
    if pipe.model_type != "t2i":
        raise ValueError("--captions needs a text-to-image generator; give --labels or --per-class")
    return {"prompts": tuple(lines)}


def run_sample(args: argparse.Namespace) -> None:
    from llamagen.evaluation.sample_set import SampleSet, gather_set, write_set
    from llamagen.evaluation.shards import make_in_processes
    from llamagen.generation import fitting_batch_size
    from llamagen.training.distributed import start_processes

    out = Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out {str(out)!r}: the ADM evaluator reads .npz files; name one")
    check_writable(out, "--out")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    processes = start_processes(args.device)
    pipe = load_models(args, processes.device)
    conditions = _conditions(args, pipe)
    count = len(next(iter(conditions.values())))
    if args.num_images is not None:
        if not 1 <= args.num_images <= count:
            raise ValueError(f"--num-images must be from 1 to the {count} conditions given, got {args.num_images}")
        conditions = {name: values[: args.num_images] for name, values in conditions.items()}
    sampling = {**pipe.sampling.filled(**sampling_arguments(args)), "jacobi_window": args.jacobi_window}
    # One batch size for every process (the first's choice), so that each shard is drawn alike whoever draws it.
    batch_size = processes.share(args.batch_size or fitting_batch_size(pipe.gpt, guidance=sampling["cfg_scale"] != 1))
    spec = SampleSet(class_labels=conditions.get("class_labels"), prompts=conditions.get("prompts"),
                     seed=args.seed, sampling=tuple(sorted(sampling.items())), resize=args.resize,
                     shard_size=args.shard_size)  # fmt: skip
    write_mine = functools.partial(write_set, pipe, spec, out, args.gpt, batch_size=batch_size,
                                   png_dir=Path(args.png_dir) if args.png_dir else None)  # fmt: skip
    if make_in_processes(spec.plan(args.gpt), out, processes, write_mine):
        images = gather_set(spec, out, args.gpt)
        print(
            f"wrote       {out}: {len(images)} images of {images.shape[2]}x{images.shape[1]} pixels (arr_0, uint8 "
            f"NHWC{', with labels' if spec.class_labels is not None else ''}); "
            + ", ".join(f"{name} {value}" for name, value in spec.sampling)
        )
    processes.close()


def add_sample_command(commands: argparse._SubParsersAction) -> None:
    sample = commands.add_parser(
        "sample",
        help="a sample set for FID and the ADM evaluator, alone or under torchrun",
        description="Draws one image per condition (--per-class K: K of every class, interleaved; --labels or "
        "--captions: a file of one per line) and writes them as the ADM evaluator's .npz (arr_0, uint8 NHWC). "
        "Image i has its own seed and condition from i alone, so the set is the same under any number of "
        "processes (torchrun --nproc-per-node N -m llamagen sample ...); shards are written atomically beside "
        "--out, and a stopped run resumes from them.",
    )
    add_model_options(sample)
    which = sample.add_mutually_exclusive_group(required=True)
    which.add_argument("--per-class", type=int, help="images of every class (e.g. 50: the paper's 50,000 for 1,000)")
    which.add_argument("--labels", help="a text file of class ids or names, one per image")
    which.add_argument("--captions", help="a text file of captions, one per image")
    sample.add_argument("--num-images", type=int, help="the first N conditions only")
    add_sampling_options(sample)
    sample.add_argument("--seed", type=int, default=0, help="the set's seed (image i draws with seed * 2**32 + i)")
    sample.add_argument("--resize", type=int, help="resize to SxS pixels (bicubic), e.g. 256 for the 384 models")
    sample.add_argument("--batch-size", type=int, help="images drawn at once by each process (default: the largest "
                        "power of two up to 256 that fits the memory free)")  # fmt: skip
    sample.add_argument("--shard-size", type=int, default=1000, help="images per shard (the unit of resuming)")
    sample.add_argument("--png-dir", help="also write each image as DIR/NNNNNN.png")
    sample.add_argument("--out", required=True, help="the .npz to write")
    add_device_options(sample)
    sample.set_defaults(run=run_sample)
