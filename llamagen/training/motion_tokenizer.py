"""Training a motion tokenizer as T2M-GPT trains its VQ-VAE, resumably.

Loss = smooth L1 between the normalised features of a window and their reconstruction, plus `position_weight`
times the same on the joint-position part of the features (T2M-GPT's extra weight there), plus `path_weight`
times the same on each frame's turn and root move (whose errors add up along a clip), plus the quantizer's
own terms (commitment, and LlamaGen's codebook loss). Windows are a pure function of (seed, step), so a run
resumed from a checkpoint ends on the weights of one never stopped. A tokenizer this small trains in one
process; under torchrun a study gives each process whole runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llamagen.checkpoints import save
from llamagen.data.batches import seeded_generator, step_loader
from llamagen.data.motion.features import FEATURE_SLICES, PATH_FEATURES
from llamagen.data.motion.windows import MotionWindows, feature_statistics
from llamagen.motion.quantizers import Quantized
from llamagen.motion.tokenizer import MotionVQ, MotionVQConfig
from llamagen.tokenizer.quantizer import USAGE_WINDOW
from llamagen.training.common import TrainingRun, forget_moments, load_optimizer_state
from llamagen.training.distributed import process_group
from llamagen.training.settings import MotionTokenizerTrainingConfig


@dataclass
class MotionTrainingOutcome:
    model: MotionVQ
    step: int  # steps done
    finished: bool  # False when a signal stopped the run first; resuming continues it


def train_motion_tokenizer(config: MotionVQConfig, training: MotionTokenizerTrainingConfig, out_dir: str | Path,
                           resume: bool = False, show_progress: bool = True,
                           command: str | None = None) -> MotionTrainingOutcome:  # fmt: skip
    """Train (or, with `resume`, continue) a motion tokenizer on `Motions(training.seed)`; its weights go to
    `final.safetensors` at the end."""
    if training.restart_dead_codes_every is not None and config.quantizer != "llamagen":
        raise ValueError(f"dead-code restarts are an option of the llamagen quantizer, not {config.quantizer!r}'s "
                         "(t2m's resets its own entries; fsq's grid has none to restart)")  # fmt: skip
    with process_group("cpu", alone=True) as processes:
        data = {"motion": {"seed": training.seed, "window": training.window}}
        run = TrainingRun(out_dir, resume, processes, config.to_dict(), training, command, data=data)
        torch.manual_seed(training.seed)
        model = MotionVQ(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=training.lr, betas=(training.beta1, training.beta2),
                                      weight_decay=training.weight_decay)  # fmt: skip
        # the last USAGE_WINDOW codes chosen in training: usage as the paper measures it (Table 2)
        recent = torch.full((USAGE_WINDOW,), -1, dtype=torch.long)
        if run.state is not None:
            model.load_state_dict(run.state["model"])
            load_optimizer_state(optimizer, run.state["optimizer"])
            recent = run.state["recent_codes"]
        else:
            model.set_statistics(*feature_statistics(training.seed, training.statistics_clips))
        run.start_rng()
        windows = MotionWindows(training.seed, training.window)
        batches = step_loader(windows, training.batch_size, run.start, training.steps, training.seed)
        for step, batch in run.steps(batches, show_progress):
            report, quantized = _train_step(model, optimizer, training, batch["features"], step)
            codes = quantized.codes.detach()
            recent = torch.cat([recent[codes.numel() :], codes.flatten()[-USAGE_WINDOW:]])
            every = training.restart_dead_codes_every
            if every is not None and (step + 1) % every == 0:
                report["restarted_codes"] = _restart_dead_codes(model, optimizer, quantized.compared, recent,
                                                                training.seed, step)  # fmt: skip
            if run.log_due():
                usage = torch.unique(recent[recent >= 0]).numel() / model.config.codebook_size
                run.log(report, shown=("loss", "usage"), usage=usage)
            if run.checkpoint_due():
                run.checkpoint(_state(model, optimizer, recent))
        run.checkpoint(_state(model, optimizer, recent))
        if run.finished:
            save(model, run.out_dir / "final.safetensors")
        return MotionTrainingOutcome(model.eval(), run.step, run.finished)


def _state(model: MotionVQ, optimizer, recent: torch.Tensor) -> dict:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "recent_codes": recent}


def _restart_dead_codes(model: MotionVQ, optimizer, latents: torch.Tensor, recent: torch.Tensor, seed: int,
                        step: int) -> int:  # fmt: skip
    """Move the entries `recent` never chose onto latents of the batch (as the image tokenizer's training does)
    and forget their Adam moments; a pure function of (seed, step), so a resumed run restarts the same ones."""
    inner = model.quantize.inner
    generator = seeded_generator(seed, step)
    dead = inner.restart_dead_codes(latents, generator, used=recent)
    forget_moments(optimizer, inner.embedding.weight, dead)
    return int(dead.sum())


def _train_step(model: MotionVQ, optimizer, training: MotionTokenizerTrainingConfig, features: torch.Tensor,
                step: int) -> tuple[dict[str, float], Quantized]:  # fmt: skip
    """One update; the losses, and what the quantizer made of the batch."""
    for group in optimizer.param_groups:
        group["lr"] = training.lr_at(step)
    target = model.normalise(features)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=training.bf16):
        reconstruction, quantized = model(target)
    reconstruction = reconstruction.float()
    positions = FEATURE_SLICES["positions"]
    terms = {
        "reconstruction": F.smooth_l1_loss(reconstruction, target),
        "positions": training.position_weight
        * F.smooth_l1_loss(reconstruction[..., positions], target[..., positions]),
        "path": training.path_weight * F.smooth_l1_loss(reconstruction[..., PATH_FEATURES], target[..., PATH_FEATURES]),
        "quantizer": quantized.loss,
    }
    loss = sum(terms.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
    optimizer.step()
    report = {"loss": loss.item(), **{name: value.item() for name, value in terms.items()},
              "grad_norm": float(grad_norm), "lr": training.lr_at(step)}  # fmt: skip
    return report, quantized
