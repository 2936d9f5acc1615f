"""The motion tokenizer study: would LlamaGen's codebook make a better motion tokenizer than T2M-GPT's?

Three quantizers in the same 1-D VQ-VAE (`motion.tokenizer`), at about equal bits per frame (a token every 4
frames, log2 K bits a token; FSQ's grids hold 1,000, 4,375 and 15,360 codes for 1,024, 4,096 and 16,384):
T2M-GPT's (512-dimensional entries, EMA updates, dead entries reset), LlamaGen's (8 dimensions on the unit
sphere, learned by the codebook loss), FSQ's grid (the levels its paper recommends for about K codes); and a
fourth arm, LlamaGen's with the dead-code restarts the image tokenizers train with, so that what LlamaGen's
design does is told apart from what T2M-GPT's resets do. Each at K = 512, 1,024, 4,096 and 16,384; and
LlamaGen's dimension swept (2 ... 64) at 1,024 codes, the motion column of the codebook study's per-data-type
answer. Everything but the quantizer and how it is kept alive is the same in every run: the network, the
steps, the batch, the learning rate and the data.

A run's row holds usage (on the held-out clips and over the last 65,536 training codes), perplexity, MPJPE
(whole, of the pose alone and of the root's path) and joint velocity error on the held-out clips, the geometry
of the used codes (weighted by use) and of the latents as compared with them, and usage over training; its
folder keeps the codebook, a sample of latents and each code's count, as the codebook study's runs do. Runs are
recorded, resumed and shared out under torchrun as `studies.run_study` does; seed 0 of every arm comes before
seed 1, so a study cut short still covers every arm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llamagen.analysis.geometry import near_twin_share, pca_spectrum
from llamagen.motion.measures import evaluate_motion_tokenizer, held_out_clips
from llamagen.motion.tokenizer import ARMS, arm_config
from llamagen.training.export import read_metrics
from llamagen.training.motion_tokenizer import train_motion_tokenizer
from llamagen.training.settings import MotionTokenizerTrainingConfig
from llamagen.training.studies import (
    geometry_fields,
    latents_at_codes_count,
    resumable,
    run_schedule,
    run_study,
    save_array,
    save_float16,
)

# The study's arms: a tokenizer arm (`motion.tokenizer.ARMS`) and the training options that go with it. LlamaGen's
# quantizer again with the image tokenizers' dead-code restarts separates what its design does from what
# T2M-GPT's resets do.
STUDY_ARMS = {
    **{arm: (arm, {}) for arm in ARMS},
    "llamagen-restart": ("llamagen", {"restart_dead_codes_every": 100}),
}
SIZES = (512, 1024, 4096, 16384)
DIMENSIONS = (2, 4, 8, 16, 32, 64)
LATENTS_KEPT = 4096
CSV_FIELDS = (
    "arm", "size", "dim", "seed", "codebook_size", "usage_eval", "usage_train", "perplexity", "mpjpe_mm",
    "velocity_error_mm_s", "pose_mpjpe_mm", "root_error_mm", "codes_participation", "codes_two_nn",
    "codes_near_twins", "latents_participation", "latents_two_nn", "latents_two_nn_at_codes_count",
)  # fmt: skip


@dataclass
class MotionStudySettings:
    arms: tuple[str, ...] = tuple(STUDY_ARMS)
    sizes: tuple[int, ...] = SIZES
    dimensions: tuple[int, ...] = DIMENSIONS  # LlamaGen's arm, at `dimension_size` codes
    dimension_size: int = 1024
    seeds: tuple[int, ...] = (0, 1, 2)
    width: int = 128
    depth: int = 3
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
    eval_clips: int = 1024  # 33,000 tokens: usage is measured on about half the paper's window
    statistics_clips: int = 1024  # clips the features' mean and deviation are measured on

    def __post_init__(self) -> None:
        unknown = [arm for arm in self.arms if arm not in STUDY_ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(STUDY_ARMS)}")

    def training(self) -> dict:
        """What every run shares, every training setting included (the loss's weights too, so that a study is
        not continued under other ones) but those an arm sets; the arms, sizes, dimensions and seeds only choose
        which runs to add."""
        shared = {"width": self.width, "depth": self.depth, "eval_clips": self.eval_clips}
        by_arm = {name for _, options in STUDY_ARMS.values() for name in options}
        return {**shared, **{name: value for name, value in dataclasses.asdict(self.run_training(0)).items()
                             if name != "seed" and name not in by_arm}}  # fmt: skip

    def run_training(self, seed: int, arm: str | None = None) -> MotionTokenizerTrainingConfig:
        """A run's training settings: the study's, and those of its arm."""
        options = STUDY_ARMS[arm][1] if arm is not None else {}
        return MotionTokenizerTrainingConfig(**run_schedule(self.steps, seed), batch_size=self.batch_size,
                                             lr=self.lr, statistics_clips=self.statistics_clips, **options)  # fmt: skip

    def runs(self) -> dict[str, tuple[str, int, int | None, int]]:
        """name -> (arm, size, code dimension or None for the arm's own, seed), seed by seed."""
        planned = {}
        for seed in self.seeds:
            for arm in self.arms:
                for size in self.sizes:
                    planned[run_name(arm, size, None, seed)] = (arm, size, None, seed)
            if "llamagen" in self.arms:
                for dim in self.dimensions:
                    if dim != ARMS["llamagen"]["code_dim"] or self.dimension_size not in self.sizes:
                        planned[run_name("llamagen", self.dimension_size, dim, seed)] = (
                            "llamagen", self.dimension_size, dim, seed
                        )  # fmt: skip
        return planned


def run_name(arm: str, size: int, dim: int | None, seed: int) -> str:
    return f"{arm}-k{size}" + ("" if dim is None else f"-d{dim}") + f"-s{seed}"


def study_motion_tokenizers(settings: MotionStudySettings, out: str | Path, work_dir: str | Path,
                            show_progress: bool = True) -> dict:  # fmt: skip
    """Train, evaluate and measure every run that `out` (JSON) does not hold yet, and add it there."""
    runs = settings.runs()
    clips: list[torch.Tensor] = []

    def train(name: str, folder: Path) -> dict | None:
        if not clips:
            clips.extend(held_out_clips(settings.eval_clips))
        return _run(settings, *runs[name], clips, folder, show_progress)

    return run_study(list(runs), train, out, work_dir, settings.training(), CSV_FIELDS)


def _run(settings: MotionStudySettings, arm: str, size: int, dim: int | None, seed: int, clips, folder: Path,
         show_progress: bool) -> dict | None:  # fmt: skip
    config = arm_config(STUDY_ARMS[arm][0], size, width=settings.width, depth=settings.depth,
                        **({} if dim is None else {"code_dim": dim}))  # fmt: skip
    outcome = train_motion_tokenizer(config, settings.run_training(seed, arm), folder, resume=resumable(folder),
                                     show_progress=show_progress)  # fmt: skip
    if not outcome.finished:
        return None
    evaluation = evaluate_motion_tokenizer(outcome.model, clips)
    codebook = outcome.model.quantize.codebook().detach().cpu()
    drawn = torch.randperm(len(evaluation.latents), generator=torch.Generator().manual_seed(seed))[:LATENTS_KEPT]
    latents = evaluation.latents[drawn]
    save_float16(folder / "codebook.npy", codebook)
    save_float16(folder / "latents.npy", latents)
    save_array(folder / "uses.npy", evaluation.counts.numpy().astype(np.int32))
    counts = evaluation.counts
    used = counts > 0
    usage_over_steps = [[m["step"], m["usage"]] for m in read_metrics(folder)]
    return {
        "arm": arm,
        "size": size,
        "dim": config.code_dim,
        "seed": seed,
        "quantizer": config.quantizer,
        "codebook_size": config.codebook_size,  # FSQ's grid is near, not at, the size
        "usage_eval": evaluation.usage,
        "usage_train": usage_over_steps[-1][1],
        "perplexity": evaluation.perplexity,
        "mpjpe_mm": evaluation.mpjpe_mm,
        "velocity_error_mm_s": evaluation.velocity_error_mm_s,
        "pose_mpjpe_mm": evaluation.pose_mpjpe_mm,
        "root_error_mm": evaluation.root_error_mm,
        **geometry_fields("codes", codebook[used], counts[used]),
        # Where this is far above TwoNN's own expectation, the codes' TwoNN reads near pairs, not a dimension.
        "codes_near_twins": near_twin_share(codebook[used], counts[used]) if used.sum() >= 3 else None,
        **geometry_fields("latents", latents, None),
        # From the latents as kept (float16), so that the control can be taken again from the run's folder.
        **latents_at_codes_count(latents.half().float(), int(used.sum()), seed),
        "codes_spectrum": pca_spectrum(codebook[used], counts[used]).tolist() if used.sum() > 1 else None,
        "latents_spectrum": pca_spectrum(latents).tolist(),
        "usage_over_steps": usage_over_steps,
    }
