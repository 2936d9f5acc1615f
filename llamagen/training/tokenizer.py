"""Training the VQ tokenizer: the original's objective (Sec. 2.1), resumable exactly.

Loss = L2 reconstruction + codebook loss + beta x commitment loss (+ optional entropy loss).
Every batch is a pure function of (seed, step), so resuming from a checkpoint at step s reproduces
the run that was never interrupted: model, EMA, optimizer, step and RNG state are all restored.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llamagen.checkpoints import save
from llamagen.tokenizer import VQConfig, VQModel
from llamagen.training.common import (
    MetricsLog,
    StopRequest,
    load_training_state,
    save_training_state,
    update_ema,
    warmup_cosine,
)


@dataclass
class TrainingOutcome:
    model: VQModel  # the EMA weights
    step: int  # steps done
    finished: bool  # False when a signal stopped the run first; --resume continues it


@dataclass
class TokenizerTrainingConfig:
    steps: int = 10_000
    batch_size: int = 16
    lr: float = 1e-4  # the original's learning rate, with its Adam betas (0.9, 0.95)
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    warmup_steps: int = 200
    final_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    bf16: bool = True  # autocast on the CPU's AVX512-BF16 units (4-5x faster matmuls); losses in fp32
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def batch_at(dataset, step: int, batch_size: int) -> torch.Tensor:
    """The batch of a given step: samples step*B ... step*B + B - 1, whatever happened before."""
    return torch.stack([dataset[step * batch_size + i] for i in range(batch_size)])


def train_tokenizer(
    model_config: VQConfig,
    training: TokenizerTrainingConfig,
    dataset,
    out_dir: str | Path,
    resume: bool = False,
    show_progress: bool = True,
    command: str | None = None,
) -> TrainingOutcome:
    """Train (or, with `resume`, continue) a tokenizer; its EMA weights go to `final.safetensors` at the end.

    `command`, the command line that started the run, is recorded in `config.json` for its model card.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = load_training_state(out_dir) if resume else None
    if not resume and (out_dir / "metrics.jsonl").exists():
        raise ValueError(f"{str(out_dir)!r} already holds a training run; pass resume=True (--resume) to continue it")

    torch.manual_seed(training.seed)
    model = VQModel(model_config).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=training.lr, betas=(training.beta1, training.beta2), weight_decay=training.weight_decay
    )
    start = 0
    if state is not None:
        if state["model_config"] != model_config.to_dict():
            raise ValueError(f"the checkpoint in {str(out_dir)!r} was trained with another model config")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
    (out_dir / "config.json").write_text(
        json.dumps(
            {"model": model_config.to_dict(), "training": dataclasses.asdict(training), "command": command}, indent=2
        )
    )

    def checkpoint(step: int) -> None:
        save_training_state(
            out_dir,
            {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "rng": torch.get_rng_state(),
                "model_config": model_config.to_dict(),
            },
        )

    log = MetricsLog(out_dir / "metrics.jsonl")
    progress = tqdm(range(start, training.steps), initial=start, total=training.steps, disable=not show_progress)
    window_start, window_images = time.perf_counter(), 0
    step = start
    with StopRequest() as stop:
        for step in progress:
            if stop.requested:
                break
            losses = _train_step(model, optimizer, training, batch_at(dataset, step, training.batch_size), step)
            update_ema(ema, model, training.ema_decay)
            window_images += training.batch_size
            if (step + 1) % training.log_every == 0:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step + 1,
                    **losses,
                    "usage": model.codebook_usage(),
                    "images_per_s": window_images / elapsed,
                }
                log.write(record)
                progress.set_postfix(
                    loss=f"{losses['loss']:.4f}",
                    psnr=f"{losses['psnr']:.1f}",
                    usage=f"{record['usage']:.2f}",
                    img_s=f"{record['images_per_s']:.1f}",
                )
                window_start, window_images = time.perf_counter(), 0
            if (step + 1) % training.checkpoint_every == 0:
                checkpoint(step + 1)
        else:
            step = training.steps
    checkpoint(step)
    finished = step >= training.steps
    if finished:
        save(ema, out_dir / "final.safetensors")
    return TrainingOutcome(ema, step, finished)


def _train_step(
    model: VQModel, optimizer: torch.optim.Optimizer, training: TokenizerTrainingConfig, images: torch.Tensor, step: int
) -> dict[str, Any]:
    for group in optimizer.param_groups:
        group["lr"] = training.lr * warmup_cosine(step, training.steps, training.warmup_steps, training.final_lr_ratio)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=training.bf16):
        output = model(images)
    quantizer = output.quantizer
    reconstruction_loss = F.mse_loss(output.reconstruction.float(), images)
    loss = reconstruction_loss + quantizer.codebook_loss + quantizer.commitment_loss + quantizer.entropy_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
    optimizer.step()
    # PSNR of the batch in [-1, 1] (range 2), a running indication only; evaluation measures it properly.
    return {
        "loss": loss.item(),
        "reconstruction": reconstruction_loss.item(),
        "codebook": quantizer.codebook_loss.item(),
        "commitment": quantizer.commitment_loss.item(),
        "psnr": 10 * math.log10(4.0 / max(reconstruction_loss.item(), 1e-12)),
        "grad_norm": grad_norm.item(),
        "lr": optimizer.param_groups[0]["lr"],
    }
