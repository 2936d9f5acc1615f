"""The conditioning study: every arm (`conditioning_arms`) trained on the same codes for the same steps, with
each seed, and scored alike.

One run per (arm, seed), in its own folder under the work directory, resumable; after each, a row goes to the
results CSV, which a study started again reads to skip the runs it holds (and to score the set distances of
rows recorded without them, from the run's weights, trained again from its seed where its folder is gone). A
row records the arm's config and
parameters, its training (steps, minutes, last loss) and, for its EMA weights:

- judged accuracy at each guidance scale (1 is unguided), on as many images at every scale (`images_per_scale`)
  drawn from the same seeds; for captions, every stated attribute right, and the held-out shape-colour pairs at
  the best scale (on `held_out_pair_images` captions);
- FID in all the judge's 256 features against held-out real images at the best scale (where the images
  outnumber the features), beside the floor a second real set of as many images reaches, and precision and
  recall there;
- the condition's use on held-out real images (`analysis.condition_use`): the mean KL to the null condition
  per token in the first and the last row of the grid; the same on images the arm drew at each scale;
- the generator as a classifier of those images: for class labels, argmax over classes of log p(x | c); for
  captions, the shape word and the colour word that make each image most likely (`analysis.captions`);
- for captions, decoupling at the best scale (`analysis.decoupling`): each caption's shape word, then its colour
  word, changed with the seed kept, and how often the judge reads another attribute differently, beside how
  often it does between two seeds of the unchanged caption.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from llamagen.analysis.captions import WORDS, word_choices
from llamagen.analysis.condition_use import class_log_likelihoods, condition_use
from llamagen.analysis.decoupling import word_swaps
from llamagen.analysis.statistics import by_grid_row
from llamagen.data.codes import CodesDataset
from llamagen.data.shapes import CLASS_NAMES
from llamagen.evaluation.generation import (
    caption_sets,
    class_ids_of,
    evaluate_class_conditional,
    evaluate_text_conditional,
)
from llamagen.evaluation.judges import held_out
from llamagen.files import write_text_atomically
from llamagen.gpt import GPTConfig
from llamagen.pipeline import Pipeline
from llamagen.training.conditioning_arms import ARMS, CLASS_ONLY_ARMS, arm_config, parameter_count
from llamagen.training.export import read_metrics, training_hours
from llamagen.training.gpt import generator_config_for, train_gpt
from llamagen.training.settings import GPTTrainingConfig

# The base of every arm: shapes-c2i's and shapes-t2i's sizes.
BASE = {"n_layer": 6, "n_head": 6, "dim": 192, "multiple_of": 16}
SCALES = (1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass
class StudySettings:
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    scales: tuple[float, ...] = SCALES
    images_per_class: int = 10  # class labels: images of each class at each scale
    captions: int = 400  # captions: captions at each scale, and held-out pairs at the best
    real_images: int | None = None  # held-out real shapes that the condition's use is read on (None: all 1,000)
    generated_for_decay: int = 80  # images drawn at each scale that the condition's use is read on
    base: dict = dataclasses.field(default_factory=lambda: dict(BASE))

    @property
    def ema_decay(self) -> float:
        """The weights' moving average that each run ships and is scored on, over about the last tenth of the
        run: with no warm-up, (1 - 10 / steps) ** steps ~ e^-10 of the random initial weights is left in it (a
        fixed 0.9999 would leave 82% of them after 2,000 steps). Runs of 10 steps or fewer keep no average."""
        return max(0.0, 1.0 - 10.0 / self.steps)


def run_name(task: str, arm: str, seed: int) -> str:
    return f"{task}-{arm}-s{seed}"


def run_study(
    settings: StudySettings,
    codes: str | Path,
    tokenizer,
    out: str | Path,
    work_dir: str | Path,
    text_encoder=None,
    show_progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
    command: str | None = None,
) -> list[dict]:
    """Train and score every (arm, seed) on `codes` (class labels or captions; `text_encoder` for captions),
    decoded by `tokenizer`; rows are appended to `out` (CSV) after each run. Returns every row of `out`.
    `command`, the study's command line, is recorded in each run's folder, for the card of a run exported."""
    out, work_dir = Path(out), Path(work_dir)
    dataset = CodesDataset(codes)
    task = dataset.info.conditioning
    base = generator_config_for(dataset.info, GPTConfig.from_dict(settings.base), text_encoder)
    class_names = dataset.info.class_names

    def trained(arm: str, seed: int):
        """The run of `arm` with `seed`: trained, resumed or, finished already, read back from its checkpoint."""
        run_dir = work_dir / run_name(task, arm, seed)
        training = GPTTrainingConfig(
            steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, seed=seed,
            ema_decay=settings.ema_decay,
            log_every=max(1, settings.steps // 60), checkpoint_every=max(1, settings.steps // 10),
        )  # fmt: skip
        return train_gpt(arm_config(base, arm), training, CodesDataset(codes, seed=seed), run_dir, text_encoder,
                         resume=run_dir.exists(), show_progress=show_progress, command=command)  # fmt: skip

    def kept_weights(row: dict) -> bool:
        return (work_dir / run_name(task, row["arm"], int(row["seed"])) / "final.safetensors").is_file()

    rows = read_rows(out)
    # Rows recorded before the study scored the set's distances: first those whose runs kept their weights.
    unscored = [row for row in rows if not row.get("fid_at_best")]
    for row in sorted(unscored, key=lambda row: not kept_weights(row)):
        outcome = trained(row["arm"], int(row["seed"]))
        if not outcome.finished:
            return rows  # stopped by a signal: the run resumes when the study starts again
        add_distances(row, Pipeline(outcome.model, tokenizer, text_encoder, class_names), settings)
        write_rows(rows, out)
    done = {(row["arm"], int(row["seed"])) for row in rows}
    for arm in settings.arms:
        if arm in CLASS_ONLY_ARMS and task != "c2i":
            continue
        config = arm_config(base, arm)
        for seed in settings.seeds:
            if (arm, seed) in done:
                continue
            outcome = trained(arm, seed)
            if not outcome.finished:
                return rows
            pipe = Pipeline(outcome.model, tokenizer, text_encoder, class_names)
            metrics = read_metrics(work_dir / run_name(task, arm, seed))
            row = {
                "task": task,
                "arm": arm,
                "seed": seed,
                "condition": config.condition,
                "prefix_tokens": config.prefix_length,
                "ffn_hidden_dim": config.ffn_hidden_dim,
                "parameters": parameter_count(config),
                "steps": settings.steps,
                "ema_decay": settings.ema_decay,
                # From the run's log, so that a run resumed across several processes counts all its legs.
                "train_minutes": round(60 * training_hours(metrics), 1),
                "final_loss": metrics[-1]["loss"],
                **score_arm(pipe, settings),
            }
            rows.append(row)
            write_rows(rows, out)
            if on_row is not None:
                on_row(row)
    return rows


@torch.no_grad()
def score_arm(pipe: Pipeline, settings: StudySettings) -> dict:
    """The scores of one trained arm (see the module's notes)."""
    row: dict = {}
    by_scale = {scale: judged_at(pipe, settings, scale) for scale in settings.scales}
    row["images_per_scale"] = by_scale[settings.scales[0]].images
    for scale, judged in by_scale.items():
        row[f"accuracy_at_{scale:g}"] = judged.accuracy
        first, last = condition_use_on_generated(pipe, scale, settings.generated_for_decay)
        row[f"kl_first_row_generated_at_{scale:g}"], row[f"kl_last_row_generated_at_{scale:g}"] = first, last
    best = max(by_scale, key=lambda scale: by_scale[scale].accuracy)
    row["best_scale"] = best
    row.update(distances_at_best(by_scale[best].distances))
    if pipe.gpt.config.model_type == "t2i":
        sets = caption_sets(settings.captions)
        held = evaluate_text_conditional(pipe, sets["held_out_pairs"], cfg_scale=best)
        row["held_out_pairs_at_best"] = held["accuracy"]["all_stated"]
        row["held_out_pair_images"] = held["images"]
        row.update(decoupling_at(pipe, sets["seen"], best))
    row.update(condition_use_on_real_images(pipe, settings.real_images))
    return row


@dataclass
class Judged:
    accuracy: float  # class labels: the class right; captions: every stated attribute right
    images: int
    distances: dict  # the set's FID, KID, precision and recall against held-out shapes, as one flat row


def judged_at(pipe: Pipeline, settings: StudySettings, cfg_scale: float) -> Judged:
    """The arm's images at `cfg_scale` (class labels: `images_per_class` of each; captions: the first
    `captions` training captions, one each), drawn from seed 0 and judged."""
    if pipe.gpt.config.model_type == "c2i":
        scores = evaluate_class_conditional(pipe, "shapes", settings.images_per_class, cfg_scale=cfg_scale)
        return Judged(scores.accuracy["class"].value, scores.images, scores.as_dict())
    scores = evaluate_text_conditional(pipe, caption_sets(settings.captions)["seen"], cfg_scale=cfg_scale)
    return Judged(scores["accuracy"]["all_stated"], scores["images"], scores["distances"])


@torch.no_grad()
def add_distances(row: dict, pipe: Pipeline, settings: StudySettings) -> None:
    """Score a recorded run's set distances at its best scale (`distances_at_best`) into its row, for rows
    recorded before the study measured them. The images are those its accuracy at that scale was judged on (the
    same seed and count): that they are judged alike checks that `pipe` holds the weights the row was scored
    with (a run trained again from its seed gives them back)."""
    best = float(row["best_scale"])
    judged = judged_at(pipe, settings, best)
    recorded = float(row[f"accuracy_at_{best:g}"])
    if judged.images != int(row["images_per_scale"]) or abs(judged.accuracy - recorded) > 1e-6:
        raise ValueError(
            f"{row['arm']} seed {row['seed']} at scale {best:g} judges {judged.images} images "
            f"{judged.accuracy:.4f} right, but its row recorded {row['images_per_scale']} images "
            f"{recorded:.4f} right: these are not the weights or the settings it was scored with"
        )
    row.update(distances_at_best(judged.distances))


def distances_at_best(distances: dict) -> dict:
    """The study's columns from a flat row of set measures (`flat_row`): FID in all the judge's features and its
    floor, precision and recall."""
    return {
        "fid_at_best": distances["fid_all_features"],
        "fid_floor": distances["fid_all_features_real_floor"],
        "precision_at_best": distances["precision"],
        "recall_at_best": distances["recall"],
    }


def decoupling_at(pipe: Pipeline, items: list[dict], cfg_scale: float) -> dict:
    """The shapes' captions each with its shape word and then its colour word changed (`analysis.decoupling`):
    how often the changed word took effect, how often each other attribute changed with it (same seed), and how
    often it changes between two seeds of the unchanged caption (the control, the same for both words)."""
    row: dict = {}
    for swap in word_swaps(pipe, items, cfg_scale=cfg_scale):
        row[f"{swap.word}_word_took_effect"] = float(swap.took_effect.mean)
        for name, changed in swap.changed.items():
            row[f"{swap.word}_word_changes_{name}"] = float(changed.mean)
            row[f"seed_changes_{name}"] = float(swap.control[name].mean)
    return row


def condition_use_on_generated(pipe: Pipeline, cfg_scale: float, count: int) -> tuple[float, float]:
    """Mean KL to the null condition per token in the first and last rows of the grid, on `count` images the
    generator drew at `cfg_scale` (class labels: the classes in turn; captions: the first training captions),
    seed 0: how the condition's use decays along the images it makes itself."""
    gpt = pipe.gpt
    if gpt.config.model_type == "c2i":
        labels = [i % gpt.config.num_classes for i in range(count)]
        tokens = pipe(class_labels=labels, cfg_scale=cfg_scale).tokens
        use = condition_use(gpt, tokens, torch.tensor(labels, device=pipe.device))
    else:
        prompts = [item["caption"] for item in caption_sets(count)["seen"]]
        tokens = pipe(prompts=prompts, cfg_scale=cfg_scale).tokens
        cond, cond_mask, _, _ = pipe.encode_conditions(prompts=prompts)
        use = condition_use(gpt, tokens, cond, cond_mask)
    rows = by_grid_row(use.kl, gpt.config.grid_size).mean(0)
    return float(rows[0]), float(rows[-1])


def condition_use_on_real_images(pipe: Pipeline, count: int | None = None) -> dict:
    """Mean KL to the null condition per token in the first and last rows, on the judge's held-out shapes (class
    labels: their classes; captions: captions stating shape and colour), and the generator's accuracy as a
    classifier of them (captions: of the shape word and of the colour word). `count`: the first so many images
    (None: all)."""
    gpt = pipe.gpt
    images, labels = held_out("shapes", count)
    tokens = pipe.tokenizer.tokenize(images.to(pipe.device)).flatten(1)
    if gpt.config.model_type == "c2i":
        classes = class_ids_of("shapes", labels).to(pipe.device)
        use = condition_use(gpt, tokens, classes)
        guessed = class_log_likelihoods(gpt, tokens).argmax(1)
        extra = {"classifier_accuracy": float((guessed == classes).float().mean())}
    else:
        # "red circle": one of the training captions' phrasings, stating shape and colour only.
        prompts = [CLASS_NAMES[i] for i in class_ids_of("shapes", labels).tolist()]
        cond, cond_mask, _, _ = pipe.encode_conditions(prompts=prompts)
        use = condition_use(gpt, tokens, cond, cond_mask)
        chosen = word_choices(pipe, tokens, {name: labels[name].to(pipe.device) for name in WORDS})
        extra = {f"word_accuracy_{name}": float((chosen[name] == labels[name]).float().mean()) for name in WORDS}
    rows = by_grid_row(use.kl, gpt.config.grid_size).mean(0)
    return {"kl_first_row": float(rows[0]), "kl_last_row": float(rows[-1]), "real_images": len(tokens), **extra}


def read_rows(out: Path) -> list[dict]:
    if not out.is_file():
        return []
    return list(csv.DictReader(io.StringIO(out.read_text())))


def write_rows(rows: list[dict], out: Path) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    table = io.StringIO()
    writer = csv.DictWriter(table, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, table.getvalue())
