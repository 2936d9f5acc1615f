"""How a text-to-image generator reads the words of its captions.

Captions with attributes left out: does it draw what a caption states, and let vary what it does not? Training
captions leave out size, position and background a third of the time each (`llamagen.data.shapes`), so a model
that reads its caption should hold a stated attribute fixed across seeds and spread an unstated one over its
values (uniformly drawn in the training images). The shapes judge reads each attribute of every image.

The generator as a reader of words: for a real image, which shape word and which colour word make its tokens
most likely, all else in the caption the same (`word_choices`): a direct reading, without sampling, of how much
of each word the model knows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llamagen.analysis.condition_use import loss_per_image
from llamagen.data.shapes import COLOURS, OPTIONAL_ATTRIBUTES, SHAPES, ShapeAttributes, describe
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


# The words a shapes caption names an attribute by, in the order of the judge's labels.
WORDS = {"shape": SHAPES, "colour": tuple(COLOURS)}


@torch.no_grad()
def word_choices(
    pipe, tokens: torch.Tensor, labels: dict[str, torch.Tensor], batch: int = 64
) -> dict[str, torch.Tensor]:
    """For real shapes' tokens (B, T) and their judge labels ("shape", "colour": (B,) ids), the word of each
    attribute under which the generator finds each image most likely: {attribute: (B,) ids}. Each image's caption
    is "<colour> <shape>" (a training phrasing), with the attribute's word replaced by each of its alternatives."""
    if pipe.model_type != "t2i":
        raise ValueError("reading caption words needs a text-conditional pipeline")
    chosen = {}
    for attribute, words in WORDS.items():
        scores = []
        for word in range(len(words)):
            named = {**{name: labels[name].tolist() for name in WORDS}, attribute: [word] * len(tokens)}
            captions = [
                f"{WORDS['colour'][c]} {WORDS['shape'][s]}"
                for s, c in zip(named["shape"], named["colour"], strict=True)
            ]
            cond, cond_mask, _, _ = pipe.encode_conditions(prompts=captions)
            parts = [
                -loss_per_image(pipe.gpt, tokens[i : i + batch], cond[i : i + batch],
                                None if cond_mask is None else cond_mask[i : i + batch])
                for i in range(0, len(tokens), batch)
            ]  # fmt: skip
            scores.append(torch.cat(parts))
        chosen[attribute] = torch.stack(scores, dim=1).argmax(1).cpu()
    return chosen
