"""Training the motion CLIP (`llamagen.motion.text`) on captioned clips with open_clip's contrastive loss.

As the shapes CLIP: each clip's embedding is pulled towards its caption's and away from the batch's other
captions, which makes captions that differ in an action or a parameter differ in their features, what the
text-to-motion generator needs. Captioned clips leave the held-out (action, value) pairs out, so composition
is measured on pairs neither model has seen. One process, resumable.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch

from llamagen.checkpoints import save
from llamagen.data.batches import step_loader
from llamagen.data.motion.windows import PaddedClips, feature_statistics
from llamagen.motion.text import MOTION_CLIP, MotionTextEncoder
from llamagen.text.clip import ClipConfig
from llamagen.training.clip import contrastive_loss
from llamagen.training.common import TrainingRun, adamw_decaying_matrices, load_optimizer_state
from llamagen.training.distributed import process_group
from llamagen.training.settings import ClipTrainingConfig

STATISTICS_CLIPS = 1024


def train_motion_clip(training: ClipTrainingConfig, out_dir: str | Path, config: ClipConfig | None = None,
                      resume: bool = False, show_progress: bool = True, command: str | None = None,
                      changes: Collection[str] = ()) -> tuple[MotionTextEncoder, int, bool]:  # fmt: skip
    """Train (or continue) a motion CLIP on `PaddedClips(training.seed)`; the weights go to `final.safetensors`.
    Returns (the encoder, steps done, whether it finished)."""
    if training.hard_negatives:
        raise ValueError("hard negatives rephrase shapes captions; the motion CLIP trains without them")
    config = config or ClipConfig.from_dict(MOTION_CLIP)
    with process_group("cpu", alone=True) as processes:
        data = {"motion": {"seed": training.seed, "captioned": True}}
        run = TrainingRun(out_dir, resume, processes, config.to_dict(), training, command, data=data, changes=changes)
        torch.manual_seed(training.seed)
        encoder = MotionTextEncoder.from_config(config, source=str(Path(out_dir) / "final.safetensors")).train()
        optimizer = adamw_decaying_matrices(encoder, training.lr, (0.9, 0.98), training.weight_decay)
        if run.state is not None:
            encoder.load_state_dict(run.state["model"])
            load_optimizer_state(optimizer, run.state["optimizer"])
        else:
            mean, std = feature_statistics(training.seed, STATISTICS_CLIPS)
            encoder.model.visual.feature_mean.copy_(mean)
            encoder.model.visual.feature_std.copy_(std)
        run.start_rng()
        batches = step_loader(PaddedClips(training.seed), training.batch_size, run.start, training.steps, training.seed)

        def state() -> dict:
            return {"model": encoder.state_dict(), "optimizer": optimizer.state_dict()}

        for step, batch in run.steps(batches, show_progress):
            losses = _train_step(encoder, optimizer, training, batch, step)
            if run.log_due():
                run.log(losses, shown=("loss", "batch_retrieval"))
            if run.checkpoint_due():
                run.checkpoint(state())
        run.checkpoint(state())
        encoder.eval()
        if run.finished:
            save(encoder, run.out_dir / "final.safetensors")
        return encoder, run.step, run.finished


def _train_step(encoder: MotionTextEncoder, optimizer, training: ClipTrainingConfig, batch: dict, step: int):
    lr = training.lr_at(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    ids, _, _ = encoder.token_ids(list(batch["caption"]))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=training.bf16):
        motions = encoder.embed_motions(batch["features"], batch["frames"])
        captions = encoder.model.encode_text(ids, normalize=True)
    scale = encoder.model.logit_scale.exp()
    loss = contrastive_loss(motions.float(), captions.float(), scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(encoder.parameters(), training.grad_clip)
    optimizer.step()
    with torch.no_grad():  # open_clip clamps the temperature at 100
        encoder.model.logit_scale.clamp_(0, 4.6052)
        matched = ((motions.float() @ captions.float().T).argmax(1) == torch.arange(len(motions))).float().mean()
    return {"loss": loss.item(), "batch_retrieval": matched.item(), "logit_scale": scale.item(), "lr": lr}
