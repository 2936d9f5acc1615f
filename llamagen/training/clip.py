"""Training a small CLIP on captioned images with open_clip's contrastive loss (Radford et al., 2021).

What the text-to-image generator needs from it: captions that differ in colour, shape, size, position
or background must get different features. The contrastive loss pulls each image's embedding towards its
caption's and away from the batch's other captions, which forces those distinctions, but only as far as
the batch happens to hold captions that differ in just one of them: the first shapes CLIP picked an
image's shape word over the other four only 91% of the time. With `hard_negatives`, each caption is also
rephrased for another shape and for another colour, and these join the batch's captions as negatives
for every image (NegCLIP's hard negative captions, Yuksekgonul et al., 2023): each image then meets the
captions that differ from its own in the shape or colour alone, the distinction the generator needs
most. A rephrased caption that leaves attributes out may fit another image of the batch, as the
batch's own captions may; the loss counts both as negatives, as open_clip's does. The shapes
data set used for it leaves out the held-out (shape, colour) pairs (`captioned=True`), and so do the
hard negatives, so that text-to-image composition is measured on pairs neither model has seen.
One process (the loss compares each image with the whole batch; under torchrun it would need the
features of every process gathered, which these small runs do not need).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import torch
import torch.nn.functional as F

from llamagen.checkpoints import save
from llamagen.data.batches import seeded_generator, step_loader
from llamagen.data.shapes import COLOURS, HELD_OUT_PAIRS, SHAPES, recaption
from llamagen.text.clip import ClipConfig, ClipTextEncoder
from llamagen.training.common import (
    TrainingRun,
    adamw_decaying_matrices,
    load_optimizer_state,
)
from llamagen.training.distributed import process_group
from llamagen.training.settings import ClipTrainingConfig


def train_clip(
    config: ClipConfig,
    training: ClipTrainingConfig,
    dataset,
    out_dir: str | Path,
    resume: bool = False,
    show_progress: bool = True,
    command: str | None = None,
    device: str | torch.device | None = None,
    changes: Collection[str] = (),
) -> tuple[ClipTextEncoder, int, bool]:
    """Train (or continue) a CLIP on `dataset` items with "image" and "caption"; the weights go to
    `final.safetensors`. Returns (the encoder, steps done, whether it finished)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("train clip runs in one process (its loss would need every process's features)")
    if training.hard_negatives and "phrasing" not in dataset[0]:
        raise ValueError("hard negatives rephrase shapes captions for another shape and colour: train on --data shapes")
    with process_group(device) as processes:
        run = TrainingRun(out_dir, resume, processes, config.to_dict(), training, command, changes=changes)
        torch.manual_seed(training.seed)
        encoder = ClipTextEncoder.from_config(config, source=str(Path(out_dir) / "final.safetensors"))
        encoder = encoder.to(processes.device).train()
        # open_clip's defaults for ViTs: betas (0.9, 0.98)
        optimizer = adamw_decaying_matrices(encoder, training.lr, (0.9, 0.98), training.weight_decay)
        if run.state is not None:
            encoder.load_state_dict(run.state["model"])
            load_optimizer_state(optimizer, run.state["optimizer"])
        run.start_rng()
        batches = step_loader(dataset, training.batch_size, run.start, training.steps, training.seed)

        def state() -> dict:
            return {"model": encoder.state_dict(), "optimizer": optimizer.state_dict()}

        for step, batch in run.steps(batches, show_progress):
            losses = _train_step(encoder, optimizer, training, batch, step, processes.device)
            if run.log_due():
                run.log(losses, shown=("loss", "batch_retrieval"))
            if run.checkpoint_due():
                run.checkpoint(state())
        run.checkpoint(state())
        encoder.eval()
        if run.finished:
            save(encoder, run.out_dir / "final.safetensors")
        return encoder, run.step, run.finished


def _train_step(encoder: ClipTextEncoder, optimizer, training: ClipTrainingConfig, batch: dict, step: int, device):
    lr = training.lr_at(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    images = batch["image"].to(device)
    captions = list(batch["caption"])
    if training.hard_negatives:  # drawn from the step, not the global RNG, so that a resumed run draws alike
        captions += hard_negative_captions(batch, seeded_generator(training.seed, step))
    ids, _, _ = encoder.token_ids(captions)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=training.bf16):
        image_features = encoder.model.encode_image(images, normalize=True)
        text_features = encoder.model.encode_text(ids.to(device), normalize=True)
    scale = encoder.model.logit_scale.exp()
    loss = contrastive_loss(image_features.float(), text_features.float(), scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(encoder.parameters(), training.grad_clip)
    optimizer.step()
    with torch.no_grad():  # open_clip clamps the temperature at 100
        encoder.model.logit_scale.clamp_(0, 4.6052)
        similarity = image_features.float() @ text_features[: len(images)].float().T
        matched = (similarity.argmax(1) == torch.arange(len(images), device=images.device)).float().mean()
    return {"loss": loss.item(), "batch_retrieval": matched.item(), "logit_scale": scale.item(), "lr": lr}


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """open_clip's symmetric InfoNCE (image i belongs with caption i), where captions past the images' count
    are negatives for every image only: with none, the very loss of open_clip's `ClipLoss`."""
    targets = torch.arange(len(image_features), device=image_features.device)
    per_image = scale * image_features @ text_features.T  # (images, all captions)
    per_text = per_image[:, : len(image_features)].T
    return (F.cross_entropy(per_image, targets) + F.cross_entropy(per_text, targets)) / 2


def hard_negative_captions(batch: dict, generator: torch.Generator) -> list[str]:
    """2 x B captions for a collated batch of B shapes items: each item's caption for another shape, then each
    one's for another colour (drawn at random, never a held-out pair)."""
    items = [
        {"attributes": {name: values[i] for name, values in batch["attributes"].items()},
         "stated": batch["stated"][i], "phrasing": int(batch["phrasing"][i])}
        for i in range(len(batch["stated"]))
    ]  # fmt: skip
    negatives = []
    for attribute, choices in (("shape", SHAPES), ("colour", tuple(COLOURS))):
        for item in items:
            own = item["attributes"]
            others = [value for value in choices
                      if value != own[attribute] and _not_held_out({**own, attribute: value})]  # fmt: skip
            pick = others[int(torch.randint(len(others), (1,), generator=generator))]
            negatives.append(recaption(item, **{attribute: pick}))
    return negatives


def _not_held_out(attributes: dict[str, str]) -> bool:
    return (attributes["shape"], attributes["colour"]) not in HELD_OUT_PAIRS
