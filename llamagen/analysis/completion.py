"""Completion against the condition: how many of an image's first token rows it takes before the image, not the
class, decides what the generator draws.

Each held-out real image of a kind (shapes, digits) is continued from its first k rows of tokens under its own
class ("agree") and under a class that contradicts it in every attribute ("contradict": for shapes another
shape and another colour, for digits another digit); the kind's judge reads every completion. With no row kept
the completion is plain generation of the condition's class; with every row kept it is the image itself.
Between the two, the share read as the condition's class against the share read as the image's own class tells
where the kept rows take over (for shapes, also by where the object lies: kept rows above it show only the
background); and the condition-use measure (`llamagen.analysis.condition_use`) summed over the tokens a
completion writes tells how much information about the condition its predictions still carried.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llamagen.analysis.condition_use import condition_use
from llamagen.analysis.statistics import bootstrap_mean
from llamagen.data.shapes import COLOURS, SHAPES
from llamagen.evaluation.generation import class_ids_of, condition_labels, flat_row, read_images, share_of
from llamagen.evaluation.judges import held_out, load_judge
from llamagen.evaluation.set_measures import Interval

VERTICAL_THIRDS = ("top", "middle", "bottom")


def contradicting_classes(kind: str, class_ids: torch.Tensor) -> torch.Tensor:
    """For each class id, one that differs in every attribute: shapes the next shape in the next colour, digits
    the next digit."""
    if kind == "shapes":
        labels = condition_labels(kind, class_ids)
        return ((labels["shape"] + 1) % len(SHAPES)) * len(COLOURS) + (labels["colour"] + 1) % len(COLOURS)
    return (class_ids + 1) % 10


def image_groups(kind: str, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Which images each group of the readings holds: "all", and for shapes the object's vertical third of the
    image ("top", "middle", "bottom"), since the rows kept show the object only once they reach it. (Digits
    are centred: one group.)"""
    groups = {"all": torch.ones(len(next(iter(labels.values()))), dtype=torch.bool)}
    if kind == "shapes":
        third = labels["position"] // 3  # positions run top left .. bottom right, three a row
        groups.update({name: third == i for i, name in enumerate(VERTICAL_THIRDS)})
    return groups


@torch.no_grad()
def completion_readings(
    pipe, kind: str, keep_rows: Sequence[int], images: int = 200, seed: int = 0, progress=None, **sampling
) -> list[dict]:
    """A row per kept-row count, condition ("agree", "contradict") and group of images (`image_groups`: "all",
    and for shapes where the object is) for the first `images` held-out real images of `kind` completed by
    `pipe` (`sampling`: cfg_scale, ...): the share of completions the judge reads as the condition's class and
    as the image's own class (every attribute right), each with its Wilson interval, and the count; and
    `class_nats_written`, the mean over images of the KL to the null condition summed over the tokens the
    completion wrote (nats), with its bootstrap interval. Each row is handed to `progress` as it comes."""
    pixels, labels = held_out(kind, images)
    own = class_ids_of(kind, labels)
    groups = image_groups(kind, labels)
    judge = load_judge(f"{kind}-judge", device=pipe.device)
    grid = pipe.gpt.config.grid_size
    rows = []
    for kept in keep_rows:
        for condition, classes in (("agree", own), ("contradict", contradicting_classes(kind, own))):
            output = pipe(class_labels=classes.tolist(), images=pixels, keep_rows=kept, seed=seed, **sampling)
            predicted = read_images(judge, output.pixels).predicted
            hits = {
                reading: torch.stack(
                    [predicted[name] == values for name, values in condition_labels(kind, asked).items()]
                ).all(0)
                for reading, asked in (("read_as_condition", classes), ("read_as_image", own))
            }
            cond, cond_mask, _, _ = pipe.encode_conditions(classes.tolist(), None)
            use = condition_use(pipe.gpt, output.tokens.to(pipe.device), cond.to(pipe.device), cond_mask)
            written = use.kl[:, kept * grid :].sum(1).cpu()
            for where, members in groups.items():
                nats = bootstrap_mean(written[members])
                measures = {reading: share_of(hit[members]) for reading, hit in hits.items()}
                measures["class_nats_written"] = Interval(float(nats.mean), float(nats.low), float(nats.high))
                row = {"keep_rows": kept, "condition": condition, "where": where, "images": int(members.sum()),
                       **flat_row(measures, {})}  # fmt: skip
                rows.append(row)
                if progress is not None:
                    progress(row)
    return rows
