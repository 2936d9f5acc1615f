"""Turn a finished training run into an embedded model: bf16 weights and a model card in llamagen/assets."""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llamagen.checkpoints import ASSETS_DIR, embedded_models, save
from llamagen.evaluation.judges import judge_reconstructions
from llamagen.evaluation.tokenizer import evaluate_tokenizer, held_out_images
from llamagen.files import write_text_atomically
from llamagen.tokenizer.loading import load_tokenizer
from llamagen.training.common import LATEST_CHECKPOINT, MetricsLog


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no metrics.jsonl: is it a training run's folder?")
    return MetricsLog(path).records()


def finished_run(run_dir: Path, train_commands: Sequence[str] | None) -> tuple[Path, list[dict], dict, list[str]]:
    """The final weights, metrics, config and training commands of a finished run: those given, in order (a run
    started from another's weights needs that run's command first), or else the one the run recorded."""
    final = run_dir / "final.safetensors"
    if not final.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no final.safetensors: the run has not finished")
    metrics = read_metrics(run_dir)
    run_config = json.loads((run_dir / "config.json").read_text())
    run_config["training"] = _settings_at_the_end(run_dir, run_config["training"])
    train_commands = list(train_commands or [run_config.get("command")])
    if not all(train_commands):
        raise ValueError(f"{str(run_dir)!r} recorded no training command; pass the one that made it")
    return final, metrics, run_config, train_commands


def training_hours(metrics: list[dict]) -> float:
    """Hours spent training: the gaps between log lines summed, leaving out the pauses between the legs of a
    resumed run (a gap over ten times the median one)."""
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(metrics)]
    if not gaps:
        return 0.0
    usual = statistics.median(gaps)
    return sum(gap for gap in gaps if gap <= 10 * usual) / 3600


def _settings_at_the_end(run_dir: Path, training: dict[str, Any]) -> dict[str, Any]:
    """The training settings a run finished with: config.json keeps those it started with, and history.jsonl each
    resume that changed some (`--override`), which are applied here in order and listed under
    "changed_on_resume" as {"step", NAME: [before, after]}."""
    history = run_dir / "history.jsonl"
    events = MetricsLog(history).records() if history.is_file() else []  # a JSON object a line, as the metrics
    changes = [{"step": event["step"], **event["changed"]} for event in events if event.get("changed")]
    if not changes:
        return training
    at_the_end = dict(training)
    for change in changes:
        at_the_end.update({name: values[1] for name, values in change.items() if name in training})
    return {**at_the_end, "changed_on_resume": changes}


def card_opening(name: str, kind: str, run_config: dict, data: str, metrics: list[dict],
                 use_ema: bool) -> dict[str, Any]:  # fmt: skip
    """What every model card opens with: the model's name and kind, the run's model config and training
    settings, the data, and how the training ended."""
    return {
        "name": name,
        "kind": kind,
        "config": run_config["model"],
        "training": run_config["training"],
        "data": data,
        **training_summary(metrics, use_ema),
    }


def training_summary(metrics: list[dict], use_ema: bool) -> dict[str, Any]:
    return {
        "steps": metrics[-1]["step"],
        "wall_time_hours": round(training_hours(metrics), 2),
        "weights": "EMA" if use_ema else "trained (not the EMA)",
        "final_training_log": {k: v for k, v in metrics[-1].items() if k != "time"},
    }


def write_card(card: dict[str, Any], assets_dir: Path) -> dict[str, Any]:
    """The model card `NAME.json` beside the weights, written atomically."""
    write_text_atomically(assets_dir / f"{card['name']}.json", json.dumps(card, indent=2) + "\n")
    return card


def export_tokenizer(
    run_dir: str | Path,
    name: str,
    data: str,
    train_commands: Sequence[str] | None = None,
    notes: str = "",
    assets_dir: Path = ASSETS_DIR,
    evaluate_on: str = "photos",
    use_ema: bool = True,
) -> dict[str, Any]:
    """Write `assets_dir/NAME.safetensors` (the run's EMA weights in bf16) and its card `NAME.json`.

    `train_commands` default to the command the run recorded in its config.json; `evaluate_on` names the
    held-out images the card reports (see `held_out_images`). `use_ema=False` ships the trained weights
    themselves rather than their moving average: in a short run the average trails far behind (and with
    dead-code restarts it averages entries that moved), so it can be the worse of the two.
    """
    run_dir = Path(run_dir)
    final, metrics, run_config, train_commands = finished_run(run_dir, train_commands)

    weights = assets_dir / f"{name}.safetensors"
    # final.safetensors holds the EMA weights; the last checkpoint, written at the same step, both.
    trained = load_tokenizer(final if use_ema else run_dir / LATEST_CHECKPOINT, device="cpu")
    save(trained, weights, weights_dtype=torch.bfloat16)
    shipped = load_tokenizer(weights, device="cpu")  # evaluate what users get: the bf16 weights
    images, description = held_out_images(evaluate_on)
    evaluation = evaluate_tokenizer(shipped, images)
    also = {}  # what the card reports beside the held-out set's measures, for some kinds of data
    if evaluate_on == "photos":
        also["whole_photos"] = whole_photo_psnr(shipped)
    if f"{evaluate_on}-judge" in embedded_models():
        also["judge_accuracy_on_reconstructions"] = judge_reconstructions(shipped, evaluate_on)
    card = {
        **card_opening(name, "vq", run_config, data, metrics, use_ema),
        "codebook_usage_training_window": shipped.codebook_usage(),
        "evaluation": {
            "data": description,
            **evaluation.as_dict(),
            **also,
        },
        "reproduce": [
            *train_commands,
            f"llamagen export tokenizer {run_dir} --name {name} --data {json.dumps(data)} --evaluate-on {evaluate_on}"
            + ("" if use_ema else " --no-ema"),
        ],
        "notes": notes,
    }
    return write_card(card, assets_dir)


def whole_photo_psnr(tokenizer) -> dict[str, Any]:
    """PSNR on the held-out photos whole (resized and centre-cropped to 256, the scale at which the paper reads
    ImageNet), beside the crops a photo tokenizer's card reports first: per photo, there being three."""
    from llamagen.tokenizer.reconstruction import reconstruct_batch

    images, description = held_out_images("whole-photos")
    per_photo = [result.psnr for result in reconstruct_batch(tokenizer, images)]
    return {"data": description, "psnr": statistics.fmean(per_photo), "psnr_per_photo": per_photo}


def shipped_name(kind: str, source: str | None, override: str | None) -> str:
    """The embedded model an exported generator names as its tokenizer or text encoder: a shipped generator
    must not point at a training folder that only exists where it was trained."""
    name = override or source
    if name not in embedded_models():
        raise ValueError(
            f"the generator's {kind} is {name!r}, not an embedded model: export it first and name it "
            f"with --{kind.replace(' ', '-')}"
        )
    return name


# What the guidance sweep of an exported generator holds fixed; with the best scale, the card's recommendation.
SWEPT_WITH = {"top_k": 0, "top_p": 1.0, "temperature": 1.0}
_SWEPT_WITH_TEXT = "top_k 0, top_p 1, temperature 1, seed 0"


def recommended_sampling_entry(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The card's `"sampling"`: the best guidance scale of the evaluation, with the settings it held fixed."""
    return {
        "cfg_scale": evaluation["best_cfg_scale"],
        **SWEPT_WITH,
        "measured": f"guidance: the best of the judge's sweep (evaluation.by_cfg_scale); the rest as that sweep "
        f"held them ({_SWEPT_WITH_TEXT})",
    }


def save_generator(run_dir: Path, final: Path, run_config: dict, use_ema: bool, weights: Path,
                   metadata: dict[str, str]) -> None:  # fmt: skip
    """The run's generator (its EMA `final`, or with `use_ema=False` the trained weights) saved to `weights` in
    bf16 with `metadata`, what a generator file names of its tokenizer and text encoder."""
    from llamagen.gpt import GPTConfig
    from llamagen.gpt.loading import load_gpt

    source = final if use_ema else run_dir / LATEST_CHECKPOINT
    trained = load_gpt(source, config=GPTConfig.from_dict(run_config["model"]), device="cpu")
    save(trained, weights, weights_dtype=torch.bfloat16, metadata=metadata)


def generator_card(opening: dict[str, Any], names: dict[str, Any], evaluation: dict[str, Any],
                   commands: Sequence[str], export_command: str, use_ema: bool,
                   notes: str) -> dict[str, Any]:  # fmt: skip
    """A generator's card: `opening` (`card_opening`), what it names, its evaluation and the sampling it
    recommends from it, the commands that reproduce it (empty ones left out) ending with its export."""
    return {
        **opening,
        **names,
        "evaluation": evaluation,
        "sampling": recommended_sampling_entry(evaluation),
        "reproduce": [*(command for command in commands if command), export_command + ("" if use_ema else " --no-ema")],
        "notes": notes,
    }


def _class_conditional_evaluation(pipe, judge: str, cfg_scales, images_per_class: int) -> dict[str, Any]:
    from llamagen.analysis.guidance import best_scale, sweep_guidance

    rows = sweep_guidance(pipe, judge, cfg_scales, images_per_class, **SWEPT_WITH)
    return {
        "judge": f"{judge}-judge",
        "images_per_class": images_per_class,
        "sampling": f"{_SWEPT_WITH_TEXT}, every class in one batch",
        "best_cfg_scale": best_scale(rows),
        "by_cfg_scale": rows,
    }


def _text_conditional_evaluation(pipe, cfg_scales, captions: int) -> dict[str, Any]:
    """Per guidance scale, the judge's accuracy on each attribute the captions state (captions drawn as in
    training); at the best scale, the same on captions of the (shape, colour) pairs training never showed."""
    from llamagen.evaluation.generation import caption_sets, evaluate_text_conditional

    sets = caption_sets(captions)
    rows = []
    for scale in cfg_scales:
        scores = evaluate_text_conditional(pipe, sets["seen"], cfg_scale=scale, **SWEPT_WITH)
        accuracy = {f"accuracy_{name}": value for name, value in scores["accuracy"].items()}
        rows.append({"cfg_scale": scale, **accuracy, "clip_score": scores.get("clip_score")})
    best = max(rows, key=lambda row: row["accuracy_all_stated"])["cfg_scale"]
    held_out = evaluate_text_conditional(pipe, sets["held_out_pairs"], cfg_scale=best, **SWEPT_WITH)
    return {
        "judge": "shapes-judge",
        "captions": captions,
        "sampling": f"{_SWEPT_WITH_TEXT}, one image per caption",
        "best_cfg_scale": best,
        "by_cfg_scale": rows,
        "held_out_pairs_at_best_cfg_scale": {key: value for key, value in held_out.items() if key != "distances"},
    }


def export_generator(
    run_dir: str | Path,
    name: str,
    data: str,
    judge: str | None = None,
    cfg_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0),
    images_per_class: int = 25,
    train_commands: Sequence[str] | None = None,
    notes: str = "",
    assets_dir: Path = ASSETS_DIR,
    use_ema: bool = True,
    tokenizer: str | None = None,
    text_encoder: str | None = None,
    captions: int = 400,
) -> dict[str, Any]:
    """Write `assets_dir/NAME.safetensors` (bf16) and its card: the judge's scores at each guidance scale in
    `cfg_scales`, and the best of them as the model's recommended setting.

    Class-conditional: `images_per_class` images of every class, best by class accuracy, then FID.
    Text-conditional: one image for each of `captions` shapes captions, best by the share of images right on
    every attribute their caption states; at that scale, the captions of held-out (shape, colour) pairs.
    The card names its tokenizer and text encoder by their embedded names (`tokenizer`, `text_encoder`
    override what the run recorded, which may be a training folder).
    """
    from llamagen.gpt import GPTConfig
    from llamagen.pipeline import generator_metadata, load_pipeline

    run_dir = Path(run_dir)
    final, metrics, run_config, train_commands = finished_run(run_dir, train_commands)
    metadata = generator_metadata(final)
    config = GPTConfig.from_dict(run_config["model"])
    if config.model_type == "c2i" and judge is None:
        raise ValueError("a class-conditional generator is scored by a judge: name one (shapes or digits)")
    metadata["tokenizer"] = shipped_name("tokenizer", metadata.get("tokenizer"), tokenizer)
    if config.model_type == "t2i":
        metadata["text_encoder"] = shipped_name("text encoder", metadata.get("text_encoder"), text_encoder)
    stored = {key: json.dumps(value) if key == "class_names" else value for key, value in metadata.items()}
    weights = assets_dir / f"{name}.safetensors"
    save_generator(run_dir, final, run_config, use_ema, weights, stored)
    pipe = load_pipeline(weights, device="cpu")  # evaluate what users get: the bf16 weights
    if config.model_type == "c2i":
        evaluation = _class_conditional_evaluation(pipe, judge, cfg_scales, images_per_class)
        how = f"--judge {judge} --images-per-class {images_per_class}"
    else:
        evaluation = _text_conditional_evaluation(pipe, cfg_scales, captions)
        how = f"--captions {captions} --text-encoder {metadata['text_encoder']}"
    names = {key: value for key, value in metadata.items() if key not in ("class_names", "codes_command")}
    card = generator_card(
        card_opening(name, "gpt", run_config, data, metrics, use_ema),
        {**names, "class_names": metadata.get("class_names")},
        evaluation,
        [metadata.get("codes_command", ""), *train_commands],
        f"llamagen export gpt {run_dir} --name {name} --data {json.dumps(data)} --tokenizer {metadata['tokenizer']} "
        f"--cfg-scales {' '.join(f'{scale:g}' for scale in cfg_scales)} {how}",
        use_ema,
        notes,
    )
    return write_card(card, assets_dir)


def export_text_encoder(
    run_dir: str | Path,
    name: str,
    data: str,
    train_commands: Sequence[str] | None = None,
    notes: str = "",
    assets_dir: Path = ASSETS_DIR,
    retrieval_images: int = 500,
) -> dict[str, Any]:
    """Write `assets_dir/NAME.safetensors` (the run's final CLIP in bf16) and its card, with caption-image
    retrieval among `retrieval_images` captioned shapes the training stream did not draw, and how often it
    picks their right shape and colour words (also for as many shapes of the pairs training never showed)."""
    from llamagen.data.shapes import Shapes
    from llamagen.evaluation.generation import SECOND_REAL_SEED
    from llamagen.evaluation.retrieval import caption_retrieval, word_choice
    from llamagen.text import load_text_encoder

    run_dir = Path(run_dir)
    final, metrics, run_config, train_commands = finished_run(run_dir, train_commands)
    weights = assets_dir / f"{name}.safetensors"
    save(load_text_encoder(final, device="cpu"), weights, weights_dtype=torch.bfloat16)
    shipped = load_text_encoder(weights, device="cpu")
    held_out = Shapes(size=shipped.config.vision_cfg["image_size"], seed=SECOND_REAL_SEED, captioned=True)
    items = [held_out[i] for i in range(retrieval_images)]
    pairs = Shapes(size=held_out.size, seed=SECOND_REAL_SEED, only_held_out_pairs=True)
    evaluation = {
        "data": f"{retrieval_images} captioned shapes of seed {SECOND_REAL_SEED} (not the training stream)",
        **caption_retrieval(shipped, items),
        "right_word": word_choice(shipped, items),
        "right_word_held_out_pairs": word_choice(shipped, [pairs[i] for i in range(retrieval_images)]),
    }
    card = encoder_card(name, "clip", run_dir, run_config, metrics, data, evaluation, train_commands, notes)
    return write_card(card, assets_dir)


def encoder_card(name: str, kind: str, run_dir: Path, run_config: dict, metrics: list[dict], data: str,
                  evaluation: dict, train_commands: list[str], notes: str) -> dict[str, Any]:  # fmt: skip
    """The card of a CLIP: `kind` is also the `llamagen export` command that ships it."""
    return {
        **card_opening(name, kind, run_config, data, metrics, use_ema=False),
        "evaluation": evaluation,
        "reproduce": [*train_commands, f"llamagen export {kind} {run_dir} --name {name} --data {json.dumps(data)}"],
        "notes": notes,
    }
