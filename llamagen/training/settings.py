"""The settings of the training loops: what they all share (`TrainingSettings`), and each trainer's own.

Each field is a `setting`: its default and its help, from which the command line makes its flags
(`llamagen.cli.common.add_settings_flags`), so that a setting is declared once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


def setting(default, help: str, flag: str | None = None, metavar: str | None = None) -> Any:
    """A training setting: its default, and how the command line offers it (`llamagen.cli.settings`): its help,
    and a flag other than --NAME where the command line has its own (`--fp32` for bf16=False)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar})


@dataclass
class TrainingSettings:
    """The settings every training loop has. Each trainer's settings add their own and set their defaults."""

    steps: int = setting(10_000, "steps to train for")
    batch_size: int = setting(64, "samples per step, over all the processes")
    lr: float = setting(1e-4, "peak learning rate")
    weight_decay: float = setting(0.0, "AdamW's weight decay")
    warmup_steps: int = setting(100, "steps of linear learning-rate warm-up, before the cosine decay")
    final_lr_ratio: float = setting(0.1, "the learning rate at the last step, as a share of the peak")
    grad_clip: float = setting(1.0, "the largest gradient norm")
    # bf16 autocast runs the products on a CPU's AVX512-BF16 units (4-5x faster); the losses stay in fp32.
    bf16: bool = setting(True, "no bf16 autocast", flag="--fp32")
    seed: int = setting(0, "the seed of the weights, the data order and dropout")
    log_every: int = setting(50, "steps between lines of OUT/metrics.jsonl")
    checkpoint_every: int = setting(500, "steps between checkpoints (OUT/latest.pt)")

    def __post_init__(self) -> None:
        """Refuse settings no loop can run: counts below 1, an EMA decay outside [0, 1)."""
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        decay = getattr(self, "ema_decay", 0.0)
        if not 0 <= decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")

    def lr_at(self, step: int) -> float:
        """The learning rate of `step`: linear warm-up, then a cosine down to `final_lr_ratio` at the last step."""
        return self.lr * warmup_cosine(step, self.steps, self.warmup_steps, self.final_lr_ratio)


@dataclass
class GPTTrainingConfig(TrainingSettings):
    lr: float = setting(1e-4, "peak learning rate (the original's)")
    weight_decay: float = setting(0.05, "AdamW's weight decay, on matrices only (the original's)")
    beta1: float = setting(0.9, "AdamW's beta1")
    beta2: float = setting(0.95, "AdamW's beta2 (the original's)")
    ema_decay: float = setting(0.9999, "the weight EMA's decay; 0 keeps no EMA (required with --fsdp)")
    fsdp: bool = setting(False, "under torchrun: shard the model over the processes (FSDP2), not DDP")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fsdp and self.ema_decay > 0:
            raise ValueError(
                "FSDP shards the weights over the processes, and a weight EMA would need a whole copy in each: "
                "train with ema_decay=0 (--ema-decay 0)"
            )


@dataclass
class CCATrainingConfig(TrainingSettings):
    steps: int = setting(500, "steps to fine-tune for")
    lr: float = setting(1e-5, "peak learning rate (the paper's for LlamaGen)")
    weight_decay: float = setting(0.05, "AdamW's weight decay, on matrices only (the generator's)")
    beta1: float = setting(0.9, "AdamW's beta1")
    beta2: float = setting(0.95, "AdamW's beta2 (the generator's)")
    warmup_steps: int = setting(0, "steps of linear learning-rate warm-up, before the cosine decay")
    final_lr_ratio: float = setting(1.0, "the learning rate at the last step, as a share of the peak (1: constant)")
    ema_decay: float = setting(0.0, "the weight EMA's decay; 0 ships the fine-tuned weights themselves")
    beta: float = setting(0.02, "CCA's beta: the scale of the log-likelihood gaps (the paper's 0.02)")
    cca_lambda: float = setting(1000.0, "CCA's lambda: the weight of the negatives, the guidance it stands for")
    null_share: float = setting(0.1, "the share of rows given the null class, as positives (the paper's 0.1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0 or self.cca_lambda <= 0:
            raise ValueError(f"beta and cca_lambda must be positive, got {self.beta} and {self.cca_lambda}")
        if not 0 <= self.null_share < 1:
            raise ValueError(f"null_share must be in [0, 1), got {self.null_share}")


CODEBOOK_INITS = ("uniform", "kmeans")


@dataclass
class TokenizerTrainingConfig(TrainingSettings):
    batch_size: int = setting(16, "samples per step, over all the processes")
    warmup_steps: int = setting(200, "steps of linear learning-rate warm-up, before the cosine decay")
    lr: float = setting(1e-4, "peak learning rate (the original's)")
    beta1: float = setting(0.9, "AdamW's beta1")
    beta2: float = setting(0.95, "AdamW's beta2 (the original's)")
    ema_decay: float = setting(0.999, "the weight EMA's decay")
    perceptual_weight: float = setting(1.0, "weight of LPIPS, when its weights are given")
    disc_start: int | None = setting(None, "step at which the PatchGAN starts (the original: 20,000; default: no GAN)")
    disc_weight: float = setting(0.5, "weight of the adversarial loss (the original's)")
    restart_dead_codes_every: int | None = setting(
        None,
        "every N steps, move codebook entries unused in the usage window onto poorly represented latents "
        "(not in the original; against collapse in small runs)",
        flag="--restart-dead-codes",
        metavar="N",
    )

    codebook_init: str = setting(
        "uniform",
        "uniform: the original's draw in +-1/K; kmeans: k-means centroids of the encoder's first latents (not in "
        "the original; puts every entry where the latents are, with or without l2-normalisation)",
        metavar="{uniform,kmeans}",
    )
    init_from: str | None = setting(
        None,
        "start from these weights (an embedded tokenizer's name, a .safetensors file or a published checkpoint) "
        "rather than at random: fine-tuning; the model is theirs (but for a decoder trained alone, decoder_only)",
        metavar="WEIGHTS",
    )
    decoder_only: bool = setting(
        False,
        "train the decoder alone, from init_from's weights: their encoder and codebook stay as they are, so every "
        "image keeps its codes; the decoder may be another one (a config with other decoder_ch_mult)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.codebook_init not in CODEBOOK_INITS:
            raise ValueError(f"codebook_init must be one of {', '.join(CODEBOOK_INITS)}, got {self.codebook_init!r}")
        if self.init_from is not None and self.codebook_init != "uniform":
            raise ValueError("a run started from weights (init_from) keeps their codebook: no codebook_init")
        check_restart_interval(self.restart_dead_codes_every)
        if self.decoder_only and self.init_from is None:
            raise ValueError("decoder_only trains a decoder for the encoder and codebook of init_from: give it")
        if self.decoder_only and self.restart_dead_codes_every is not None:
            raise ValueError("decoder_only keeps the codebook as it is: no restart_dead_codes_every")
        if self.disc_start is not None and self.disc_start < 0:
            raise ValueError(f"disc_start must be a step (0 or more), got {self.disc_start}")


@dataclass
class MotionTokenizerTrainingConfig(TrainingSettings):
    steps: int = setting(3000, "steps to train for")
    batch_size: int = setting(64, "windows per step")
    lr: float = setting(2e-4, "peak learning rate (T2M-GPT's)")
    beta1: float = setting(0.9, "AdamW's beta1")
    beta2: float = setting(0.99, "AdamW's beta2 (T2M-GPT's)")
    warmup_steps: int = setting(200, "steps of linear learning-rate warm-up, before the cosine decay")
    window: int = setting(60, "feature frames a training window (3 s at 20 frames a second)")
    position_weight: float = setting(
        0.5, "extra weight of the joint positions' part of the features in the loss (T2M-GPT's 0.5)"
    )
    path_weight: float = setting(
        1.0,
        "extra weight of each frame's turn and root move in the loss, whose errors add up along a clip (not in "
        "T2M-GPT; 0 is its loss)",
    )
    statistics_clips: int = setting(1024, "clips the features' mean and deviation are measured on")
    restart_dead_codes_every: int | None = setting(
        None,
        "llamagen quantizer only: every this many steps, move the entries the last 65,536 codes never chose onto "
        "latents of the batch their codes represent worst (t2m's quantizer resets its own; fsq has no entries)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_restart_interval(self.restart_dead_codes_every)


@dataclass
class ClipTrainingConfig(TrainingSettings):
    steps: int = setting(3000, "steps to train for")
    batch_size: int = setting(128, "image-caption pairs per step (at least 2)")
    lr: float = setting(5e-4, "peak learning rate")
    weight_decay: float = setting(0.1, "AdamW's weight decay, on matrices only (as open_clip's training)")
    final_lr_ratio: float = setting(0.0, "the learning rate at the last step, as a share of the peak")
    hard_negatives: bool = setting(
        False, "shapes: also contrast each image with its caption for another shape and for another colour"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 2:
            raise ValueError("a contrastive batch needs at least 2 pairs")


def check_restart_interval(every: int | None) -> None:
    if every is not None and every < 1:
        raise ValueError(f"restart_dead_codes_every must be at least 1, got {every}")


def warmup_cosine(step: int, total: int, warmup: int, final_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up, then a cosine down to `final_ratio` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
