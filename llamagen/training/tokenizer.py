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
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from llamagen.checkpoints import save
from llamagen.data.loading import step_loader
from llamagen.tokenizer import VQConfig, VQModel
from llamagen.training.common import (
    MetricsLog,
    StopRequest,
    load_training_state,
    save_training_state,
    update_ema,
    warmup_cosine,
)
from llamagen.training.distributed import start_processes


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


def train_tokenizer(
    model_config: VQConfig,
    training: TokenizerTrainingConfig,
    dataset,
    out_dir: str | Path,
    resume: bool = False,
    show_progress: bool = True,
    command: str | None = None,
    workers: int = 0,
    device: str | torch.device | None = None,
) -> TrainingOutcome:
    """Train (or, with `resume`, continue) a tokenizer; its EMA weights go to `final.safetensors` at the end.

    `dataset` items are dicts with an "image" in [-1, 1] (see `llamagen.data`); `workers` processes read
    them. Under torchrun every process runs this with the same arguments and takes its share of each batch.
    `command`, the command line that started the run, is recorded in `config.json` for its model card.
    """
    out_dir = Path(out_dir)
    processes = start_processes(device)
    try:
        return _train(model_config, training, dataset, out_dir, resume, show_progress, command, workers, processes)
    finally:
        processes.close()


def _train(model_config, training, dataset, out_dir, resume, show_progress, command, workers, processes):
    state = load_training_state(out_dir) if resume else None
    if not resume and (out_dir / "metrics.jsonl").exists():
        raise ValueError(f"{str(out_dir)!r} already holds a training run; pass resume=True (--resume) to continue it")
    if processes.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(training.seed)
    model = VQModel(model_config).to(processes.device).train()
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
    # Each process's usage window sees its own share of the codes; rank 0's is logged and saved.
    trained = DistributedDataParallel(model, broadcast_buffers=False) if processes.distributed else model
    if processes.is_main:
        (out_dir / "config.json").write_text(
            json.dumps(
                {"model": model_config.to_dict(), "training": dataclasses.asdict(training), "command": command},
                indent=2,
            )
        )

    def checkpoint(step: int) -> None:
        if processes.is_main:
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
    if processes.is_main:
        log.drop_after(start)  # lines a killed run wrote after its last checkpoint are written again
    batches = step_loader(
        dataset, training.batch_size, start, training.steps, training.seed, workers, processes.rank, processes.world
    )
    progress = tqdm(
        total=training.steps, initial=start, disable=not (show_progress and processes.is_main), dynamic_ncols=True
    )
    window_start, window_images, skipped = time.perf_counter(), 0, 0
    step = start
    with StopRequest() as stop:
        for batch in batches:
            if processes.any(stop.requested):
                break
            if batch["skipped"]:
                skipped += batch["skipped"]
                if "image" not in batch:
                    raise ValueError(f"none of the images of step {step + 1} could be read")
            images = batch["image"].to(processes.device, non_blocking=True)
            losses = _train_step(trained, model, optimizer, training, images, step)
            update_ema(ema, model, training.ema_decay)
            window_images += training.batch_size
            step += 1
            progress.update()
            if step % training.log_every == 0:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    **losses,
                    "usage": model.codebook_usage(),
                    "images_per_s": window_images / elapsed,
                }
                if skipped:
                    record["unreadable_images"] = skipped
                if processes.is_main:
                    log.write(record)
                progress.set_postfix(
                    loss=f"{losses['loss']:.4f}",
                    psnr=f"{losses['psnr']:.1f}",
                    usage=f"{record['usage']:.2f}",
                    img_s=f"{record['images_per_s']:.1f}",
                )
                window_start, window_images = time.perf_counter(), 0
            if step % training.checkpoint_every == 0:
                checkpoint(step)
    progress.close()
    checkpoint(step)
    finished = step >= training.steps
    if finished and processes.is_main:
        save(ema, out_dir / "final.safetensors")
    return TrainingOutcome(ema, step, finished)


def _train_step(
    trained: torch.nn.Module,
    model: VQModel,
    optimizer: torch.optim.Optimizer,
    training: TokenizerTrainingConfig,
    images: torch.Tensor,
    step: int,
) -> dict[str, Any]:
    for group in optimizer.param_groups:
        group["lr"] = training.lr * warmup_cosine(step, training.steps, training.warmup_steps, training.final_lr_ratio)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=training.bf16):
        output = trained(images)
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
