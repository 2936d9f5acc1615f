"""The codebook-collapse study (paper Sec. 3.1, Table 2 at small scale): usage against dimension and l2.

Small tokenizers that differ only in their codebook (dimension x size x l2-normalisation) train on the
same photo crops for the same steps. Each run records its usage over training (the window of the last
65,536 codes), and on every 16x16 tile of the held-out photos its usage, perplexity and PSNR. Results go,
after every run, to one JSON file (and a CSV beside it) that the notebooks read; a stopped sweep started
again skips the runs it has already recorded.
"""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from llamagen.data.photos import PhotoCrops
from llamagen.evaluation.tokenizer import evaluate_tokenizer, held_out_images
from llamagen.files import write_results
from llamagen.tokenizer import vq_preset
from llamagen.training.common import has_checkpoint
from llamagen.training.export import read_metrics
from llamagen.training.tokenizer import TokenizerTrainingConfig, train_tokenizer

DIMENSIONS = (4, 8, 16, 32, 64, 256)
SIZES = (1024, 4096, 16384)
# Held-out tiles reconstructed at a time: the tiles are tiny, and in batches of a few dozen the time goes to
# calling each layer rather than to its arithmetic (a run's evaluation took about 8 s in batches of 32).
EVAL_BATCH = 512
CSV_FIELDS = ("codebook_dim", "codebook_size", "l2_norm", "usage_eval", "usage_train", "perplexity", "psnr")


@dataclass
class SweepSettings:
    dimensions: tuple[int, ...] = DIMENSIONS
    sizes: tuple[int, ...] = SIZES
    l2: tuple[bool, ...] = (True, False)
    preset: str = "VQ-4-tiny"  # downsample 4: a 16x16 crop is 16 codes
    image_size: int = 16
    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-4
    seed: int = 0

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def run_name(dim: int, size: int, l2: bool) -> str:
    return f"d{dim}-k{size}-{'l2' if l2 else 'raw'}"


def sweep_codebook(settings: SweepSettings, out: str | Path, work_dir: str | Path, show_progress: bool = True) -> dict:
    """Train and evaluate every combination; `out` (JSON) is rewritten after each run."""
    out, work_dir = Path(out), Path(work_dir)
    results = json.loads(out.read_text()) if out.is_file() else {}
    if results and results.get("settings") != settings.as_dict():
        raise ValueError(f"{str(out)!r} holds a sweep with other settings; write to another file")
    eval_images, eval_description = held_out_images("photo-tiles", settings.image_size)
    results = {
        "settings": settings.as_dict(),
        "data": f"training: random crops of the scikit-image photos at {settings.image_size}x{settings.image_size}; "
        f"evaluation: {eval_description} ({len(eval_images)} images)",
        "runs": results.get("runs", {}),
    }
    training = TokenizerTrainingConfig(
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=settings.steps // 10,
        seed=settings.seed,
        log_every=max(1, settings.steps // 40),
        checkpoint_every=settings.steps,
    )
    for dim, size, l2 in itertools.product(settings.dimensions, settings.sizes, settings.l2):
        name = run_name(dim, size, l2)
        if name in results["runs"]:
            continue
        config = vq_preset(settings.preset, codebook_size=size, codebook_embed_dim=dim, codebook_l2_norm=l2)
        run_dir = work_dir / name
        if run_dir.exists() and not has_checkpoint(run_dir):
            shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to resume, so it starts again
        outcome = train_tokenizer(
            config,
            training,
            PhotoCrops(size=settings.image_size, seed=settings.seed),
            run_dir,
            resume=run_dir.exists(),
            show_progress=show_progress,
        )
        if not outcome.finished:
            break  # stopped by a signal: the run resumes when the sweep starts again
        # The trained weights, not their EMA: after a few hundred steps the average is still near the start.
        evaluation = evaluate_tokenizer(outcome.trained, eval_images, batch_size=EVAL_BATCH)
        metrics = read_metrics(run_dir)
        results["runs"][name] = {
            "codebook_dim": dim,
            "codebook_size": size,
            "l2_norm": l2,
            "usage_eval": evaluation.codebook_usage,
            "usage_train": outcome.trained.codebook_usage(),
            "perplexity": evaluation.perplexity,
            "psnr": evaluation.psnr,
            "usage_over_steps": [[m["step"], m["usage"]] for m in metrics],
        }
        write_results(results, out, CSV_FIELDS)
    return results
