"""Training a small CLIP on captioned images with open_clip's contrastive loss (Radford et al., 2021).

What the text-to-image generator needs from it: captions that differ in colour, shape, size, position
or background must get different features. The contrastive loss pulls each image's embedding towards its
caption's and away from the batch's other captions, which forces exactly those distinctions. The
shapes data set used for it leaves out the held-out (shape, colour) pairs (`captioned=True`), so that
text-to-image composition is measured on pairs neither model has seen.
One process (the loss compares each image with the whole batch; under torchrun it would need the
features of every process gathered, which these small runs do not need).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llamagen.checkpoints import save
from llamagen.data.loading import step_loader
from llamagen.text.clip import ClipConfig, ClipTextEncoder
from llamagen.training.common import TrainingRun, adamw_decaying_matrices, check_loop_settings, run_steps, warmup_cosine
from llamagen.training.distributed import start_processes


@dataclass
class ClipTrainingConfig:
    steps: int = 3000
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1  # on matrices only, as open_clip's training does
    warmup_steps: int = 100
    final_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    bf16: bool = True
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        check_loop_settings(self)
        if self.batch_size < 2:
            raise ValueError("a contrastive batch needs at least 2 pairs")


def train_clip(
    config: ClipConfig,
    training: ClipTrainingConfig,
    dataset,
    out_dir: str | Path,
    resume: bool = False,
    show_progress: bool = True,
    command: str | None = None,
    device: str | torch.device | None = None,
) -> tuple[ClipTextEncoder, int, bool]:
    """Train (or continue) a CLIP on `dataset` items with "image" and "caption"; the weights go to
    `final.safetensors`. Returns (the encoder, steps done, whether it finished)."""
    from open_clip.loss import ClipLoss

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("train clip runs in one process (its loss would need every process's features)")
    processes = start_processes(device)
    run = TrainingRun(out_dir, resume, processes, config.to_dict(), training, command)
    torch.manual_seed(training.seed)
    encoder = ClipTextEncoder.from_config(config, source=str(Path(out_dir) / "final.safetensors"))
    encoder = encoder.to(processes.device).train()
    # open_clip's defaults for ViTs: betas (0.9, 0.98)
    optimizer = adamw_decaying_matrices(encoder, training.lr, (0.9, 0.98), training.weight_decay)
    if run.state is not None:
        encoder.load_state_dict(run.state["model"])
        optimizer.load_state_dict(run.state["optimizer"])
    run.restore_rng()
    loss_fn = ClipLoss()
    batches = step_loader(dataset, training.batch_size, run.start, training.steps, training.seed)

    def take_step(batch: dict, step: int) -> dict[str, float]:
        lr = training.lr * warmup_cosine(step, training.steps, training.warmup_steps, training.final_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = batch["image"].to(processes.device)
        ids, _, _ = encoder.token_ids(list(batch["caption"]))
        with torch.autocast(processes.device.type, dtype=torch.bfloat16, enabled=training.bf16):
            image_features = encoder.model.encode_image(images, normalize=True)
            text_features = encoder.model.encode_text(ids.to(processes.device), normalize=True)
        scale = encoder.model.logit_scale.exp()
        loss = loss_fn(image_features.float(), text_features.float(), scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), training.grad_clip)
        optimizer.step()
        with torch.no_grad():  # open_clip clamps the temperature at 100
            encoder.model.logit_scale.clamp_(0, 4.6052)
            similarity = image_features.float() @ text_features.float().T
            matched = (similarity.argmax(1) == torch.arange(len(images), device=images.device)).float().mean()
        return {"loss": loss.item(), "batch_retrieval": matched.item(), "logit_scale": scale.item(), "lr": lr}

    def state() -> dict:
        return {"model": encoder.state_dict(), "optimizer": optimizer.state_dict()}

    step = run_steps(run, batches, training.steps, training.batch_size, take_step, state, training.log_every,
                     training.checkpoint_every, show_progress, shown=("loss", "batch_retrieval"))  # fmt: skip
    finished = step >= training.steps
    encoder.eval()
    if finished:
        save(encoder, run.out_dir / "final.safetensors")
    return encoder, step, finished
