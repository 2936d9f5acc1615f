"""Captions with attributes left out: does a text-to-image generator draw what a caption states, and let vary
what it does not?

Training captions leave out size, position and background a third of the time each (`llamagen.data.shapes`),
so a model that reads its caption should hold a stated attribute fixed across seeds and spread an unstated one
over its values (uniformly drawn in the training images). The shapes judge reads each attribute of every image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llamagen.data.shapes import OPTIONAL_ATTRIBUTES, ShapeAttributes, describe
from llamagen.evaluation.judges import load_judge


@torch.no_grad()
def leave_out_attributes(
    pipe, attributes: ShapeAttributes, images: int = 16, seed: int = 0, template: int = 0, **sampling
) -> tuple[list[dict], torch.Tensor]:
    """Generate `images` images for the caption of `attributes` that states everything, and as many for each
    caption with one optional attribute left out, all with the same `seed`.

    Returns one row per caption ({"caption", "left_out": None or the attribute, "<attribute>": the share of
    images the judge reads as `attributes` has it, "<attribute>_values": how many different values it reads})
    and the images, (captions, images, 3, H, W) in [-1, 1].
    """
    if pipe.model_type != "t2i":
        raise ValueError("leaving attributes out of captions needs a text-conditional pipeline")
    if images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    judge = load_judge("shapes-judge", device=pipe.device)
    truth = attributes.indices()
    variants: Sequence[str | None] = (None, *OPTIONAL_ATTRIBUTES)
    rows, pictures = [], []
    for left_out in variants:
        text = describe(attributes, [name for name in OPTIONAL_ATTRIBUTES if name != left_out], template).text
        pixels = pipe(prompts=[text], seed=seed, num_images_per_condition=images, **sampling).pixels
        read = judge.predict(pixels.to(pipe.device))
        row = {"caption": text, "left_out": left_out}
        for name in truth:
            row[name] = float((read[name].cpu() == truth[name]).float().mean())
            row[f"{name}_values"] = int(read[name].unique().numel())
        rows.append(row)
        pictures.append(pixels.cpu())
    return rows, torch.stack(pictures)
