"""Classifier-free guidance against quality and diversity (the paper's Fig. 4 and Table 5, small).

For each guidance scale the same seeds generate the same number of images per class; the judge scores
them (`llamagen.evaluation.generation.score_images`: class accuracy, the share read as none, FID and KID in
its feature space, precision, recall, diversity among images judged right, each with its interval and its
real-against-real floor). The paper's trade-off is that FID improves up to a moderate scale (about 2 for its
ImageNet models) and then worsens, while precision rises and recall and diversity fall.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from llamagen.analysis.statistics import proportion
from llamagen.evaluation.generation import caption_sets, evaluate_class_conditional, evaluate_text_conditional
from llamagen.files import write_text_atomically
from llamagen.gpt.guidance_schedules import peak_for_mean_scale

DEFAULT_SCALES = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0)


def sweep_guidance(
    pipe,
    kind: str,
    scales=DEFAULT_SCALES,
    images_per_class: int = 25,
    seed: int = 0,
    progress=None,
    inception=None,
    schedules=("constant",),
    **sampling,
) -> list[dict]:
    """One row of scores per schedule and mean guidance scale: cfg_schedule, mean_scale, cfg_scale (the scale
    the schedule reaches, which gives that mean: `peak_for_mean_scale`), and `GenerationScores.as_dict()`'s
    columns. Every row draws from the same seeds, so schedules differ only in how they guide."""

    def scored(peak: float, schedule: str) -> dict:
        return evaluate_class_conditional(pipe, kind, images_per_class, seed, inception=inception, cfg_scale=peak,
                                          cfg_schedule=schedule, **sampling).as_dict()  # fmt: skip

    return _over_schedules(scales, schedules, scored, progress)


def sweep_caption_guidance(
    pipe, captions: int = 400, scales=DEFAULT_SCALES, seed: int = 0, progress=None, schedules=("constant",),
    **sampling,
) -> list[dict]:  # fmt: skip
    """The same for a text-to-image generator of shapes: `captions` captions drawn as in training, one image
    each, judged on every attribute its caption states (`evaluate_text_conditional`); each row holds the
    accuracy per attribute, `accuracy_all_stated` with its Wilson interval, the set's FID, KID, precision and
    recall with their intervals and floors, CLIP score and the image count."""
    items = caption_sets(captions)["seen"]

    def scored(peak: float, schedule: str) -> dict:
        scores = evaluate_text_conditional(pipe, items, seed, cfg_scale=peak, cfg_schedule=schedule, **sampling)
        accuracy = {f"accuracy_{name}": value for name, value in scores["accuracy"].items()}
        every = proportion(round(scores["accuracy"]["all_stated"] * scores["images"]), scores["images"])
        return {**accuracy, "accuracy_all_stated_low": float(every.low), "accuracy_all_stated_high": float(every.high),
                **scores["distances"], "clip_score": scores.get("clip_score"), "images": scores["images"]}  # fmt: skip

    return _over_schedules(scales, schedules, scored, progress)


def _over_schedules(scales, schedules, scored, progress) -> list[dict]:
    """A row per schedule and mean scale: the schedule, the mean, the scale it reaches for that mean and what
    `scored(scale reached, schedule)` measures; each row handed to `progress` as it comes."""
    rows = []
    for schedule in schedules:
        for scale in scales:
            peak = peak_for_mean_scale(schedule, scale)
            rows.append({"cfg_schedule": schedule, "mean_scale": scale, "cfg_scale": peak, **scored(peak, schedule)})
            if progress is not None:
                progress(rows[-1])
    return rows


def best_scale(rows: list[dict]) -> float:
    """The scale of the highest accuracy (class labels: the class; captions: every stated attribute); ties go to
    the lower KID (defined at any number of images), or to the lower FID in rows that carry no KID (as the
    embedded models' cards record)."""
    distance = "kid" if all("kid" in row for row in rows) else "fid"
    accuracy = "accuracy_class" if all("accuracy_class" in row for row in rows) else "accuracy_all_stated"
    return max(rows, key=lambda row: (round(row[accuracy], 4), -row[distance]))["cfg_scale"]


def write_rows_csv(rows: list[dict], path: str | Path) -> Path:
    """The rows as CSV, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, buffer.getvalue())
    return path
