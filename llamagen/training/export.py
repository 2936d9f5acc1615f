"""Turn a finished training run into an embedded model: bf16 weights and a model card in llamagen/assets."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from llamagen.checkpoints import ASSETS_DIR, embedded_models, save, write_text_atomically
from llamagen.evaluation.judges import judge_reconstructions
from llamagen.evaluation.tokenizer import evaluate_tokenizer, held_out_images
from llamagen.tokenizer.loading import load_tokenizer
from llamagen.training.common import LATEST_CHECKPOINT, MetricsLog


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no metrics.jsonl: is it a training run's folder?")
    return MetricsLog(path).records()


def _finished_run(run_dir: Path, train_command: str | None) -> tuple[Path, list[dict], dict, str]:
    """The final weights, metrics, config and training command of a finished run."""
    final = run_dir / "final.safetensors"
    if not final.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no final.safetensors: the run has not finished")
    metrics = read_metrics(run_dir)
    run_config = json.loads((run_dir / "config.json").read_text())
    train_command = train_command or run_config.get("command")
    if not train_command:
        raise ValueError(f"{str(run_dir)!r} recorded no training command; pass the one that made it")
    return final, metrics, run_config, train_command


def training_hours(metrics: list[dict]) -> float:
    """Hours spent training: the gaps between log lines summed, leaving out the pauses between the legs of a
    resumed run (a gap over ten times the median one)."""
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(metrics)]
    if not gaps:
        return 0.0
    usual = statistics.median(gaps)
    return sum(gap for gap in gaps if gap <= 10 * usual) / 3600


def _training_summary(metrics: list[dict], use_ema: bool) -> dict[str, Any]:
    return {
        "steps": metrics[-1]["step"],
        "wall_time_hours": round(training_hours(metrics), 2),
        "weights": "EMA" if use_ema else "trained (not the EMA)",
        "final_training_log": {k: v for k, v in metrics[-1].items() if k != "time"},
    }


def export_tokenizer(
    run_dir: str | Path,
    name: str,
    data: str,
    train_command: str | None = None,
    notes: str = "",
    assets_dir: Path = ASSETS_DIR,
    evaluate_on: str = "photos",
    use_ema: bool = True,
) -> dict[str, Any]:
    """Write `assets_dir/NAME.safetensors` (the run's EMA weights in bf16) and its card `NAME.json`.

    `train_command` defaults to the command the run recorded in its config.json; `evaluate_on` names the
    held-out images the card reports (see `held_out_images`). `use_ema=False` ships the trained weights
    themselves rather than their moving average: in a short run the average trails far behind (and with
    dead-code restarts it averages entries that moved), so it can be the worse of the two.
    """
    run_dir = Path(run_dir)
    final, metrics, run_config, train_command = _finished_run(run_dir, train_command)

    weights = assets_dir / f"{name}.safetensors"
    # final.safetensors holds the EMA weights; the last checkpoint, written at the same step, both.
    trained = load_tokenizer(final if use_ema else run_dir / LATEST_CHECKPOINT, device="cpu")
    save(trained, weights, weights_dtype=torch.bfloat16)
    shipped = load_tokenizer(weights, device="cpu")  # evaluate what users get: the bf16 weights
    images, description = held_out_images(evaluate_on)
    evaluation = evaluate_tokenizer(shipped, images)
    judged = {}
    if f"{evaluate_on}-judge" in embedded_models():
        judged = {"judge_accuracy_on_reconstructions": judge_reconstructions(shipped, evaluate_on)}
    card = {
        "name": name,
        "kind": "vq",
        "config": run_config["model"],
        "training": run_config["training"],
        "data": data,
        **_training_summary(metrics, use_ema),
        "codebook_usage_training_window": shipped.codebook_usage(),
        "evaluation": {
            "data": description,
            **evaluation.as_dict(),
            **judged,
        },
        "reproduce": [
            train_command,
            f"llamagen export tokenizer {run_dir} --name {name} --data {json.dumps(data)} --evaluate-on {evaluate_on}"
            + ("" if use_ema else " --no-ema"),
        ],
        "notes": notes,
    }
    write_text_atomically(assets_dir / f"{name}.json", json.dumps(card, indent=2) + "\n")
    return card


def export_generator(
    run_dir: str | Path,
    name: str,
    data: str,
    judge: str,
    cfg_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0),
    images_per_class: int = 25,
    train_command: str | None = None,
    notes: str = "",
    assets_dir: Path = ASSETS_DIR,
    use_ema: bool = True,
) -> dict[str, Any]:
    """Write `assets_dir/NAME.safetensors` (bf16) and its card: the judge's scores at each guidance scale in
    `cfg_scales`, and the best of them (by class accuracy, then FID) as the model's recommended setting."""
    from llamagen.analysis.guidance import best_scale, sweep_guidance
    from llamagen.gpt.loading import load_gpt
    from llamagen.pipeline import generator_metadata, load_pipeline

    run_dir = Path(run_dir)
    final, metrics, run_config, train_command = _finished_run(run_dir, train_command)
    metadata = generator_metadata(final)
    from llamagen.gpt import GPTConfig

    config = GPTConfig.from_dict(run_config["model"])
    trained = load_gpt(final if use_ema else run_dir / LATEST_CHECKPOINT, config=config, device="cpu")
    stored = {key: json.dumps(value) if key == "class_names" else value for key, value in metadata.items()}
    weights = assets_dir / f"{name}.safetensors"
    save(trained, weights, weights_dtype=torch.bfloat16, metadata=stored)
    pipe = load_pipeline(weights, device="cpu")  # evaluate what users get: the bf16 weights
    rows = sweep_guidance(pipe, judge, cfg_scales, images_per_class)
    card = {
        "name": name,
        "kind": "gpt",
        "config": run_config["model"],
        "training": run_config["training"],
        "data": data,
        **{key: value for key, value in metadata.items() if key not in ("class_names", "codes_command")},
        "class_names": metadata.get("class_names"),
        **_training_summary(metrics, use_ema),
        "evaluation": {
            "judge": f"{judge}-judge",
            "images_per_class": images_per_class,
            "sampling": "top_k 0, top_p 1, temperature 1, seed 0, every class in one batch",
            "best_cfg_scale": best_scale(rows),
            "by_cfg_scale": rows,
        },
        "reproduce": [
            metadata.get("codes_command", ""),
            train_command,
            f"llamagen export gpt {run_dir} --name {name} --data {json.dumps(data)} --judge {judge} "
            f"--cfg-scales {' '.join(f'{scale:g}' for scale in cfg_scales)} --images-per-class {images_per_class}"
            + ("" if use_ema else " --no-ema"),
        ],
        "notes": notes,
    }
    write_text_atomically(assets_dir / f"{name}.json", json.dumps(card, indent=2) + "\n")
    return card
