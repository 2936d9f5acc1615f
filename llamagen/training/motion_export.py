"""Turn finished motion runs into embedded models: a motion tokenizer, a text-to-motion generator and a motion
CLIP, each as bf16 weights and a model card in llamagen/assets measured on clips training never drew."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llamagen.checkpoints import ASSETS_DIR, save
from llamagen.training.export import (
    SWEPT_WITH,
    card_opening,
    encoder_card,
    finished_run,
    generator_card,
    save_generator,
    shipped_name,
    write_card,
)


def export_motion_tokenizer(
    run_dir: str | Path,
    name: str,
    data: str,
    train_commands: Sequence[str] | None = None,
    notes: str = "",
    assets_dir: Path = ASSETS_DIR,
    clips: int = 1024,
) -> dict[str, Any]:
    """Write `assets_dir/NAME.safetensors` (the run's final motion tokenizer in bf16) and its card: usage,
    perplexity, MPJPE and joint velocity error of the shipped weights on `clips` held-out clips."""
    from llamagen.motion.measures import HELD_OUT_SEED, evaluate_motion_tokenizer, held_out_clips
    from llamagen.motion.tokenizer import load_motion_tokenizer

    run_dir = Path(run_dir)
    final, metrics, run_config, train_commands = finished_run(run_dir, train_commands)
    weights = assets_dir / f"{name}.safetensors"
    save(load_motion_tokenizer(final), weights, weights_dtype=torch.bfloat16)
    measured = evaluate_motion_tokenizer(load_motion_tokenizer(weights), held_out_clips(clips))
    card = {
        **card_opening(name, "motion-vq", run_config, data, metrics, use_ema=False),
        "evaluation": {
            "data": f"{clips} clips of seed {HELD_OUT_SEED} (not the training stream), cut to whole tokens",
            "mpjpe_mm": measured.mpjpe_mm,
            "velocity_error_mm_s": measured.velocity_error_mm_s,
            "pose_mpjpe_mm": measured.pose_mpjpe_mm,
            "root_error_mm": measured.root_error_mm,
            "codebook_usage": measured.usage,
            "perplexity": measured.perplexity,
        },
        "reproduce": [
            *train_commands,
            f"llamagen export motion-tokenizer {run_dir} --name {name} --data {json.dumps(data)}",
        ],
        "notes": notes,
    }
    return write_card(card, assets_dir)


def export_motion_generator(
    run_dir: str | Path,
    name: str,
    data: str,
    tokenizer: str | None = None,
    text_encoder: str | None = None,
    judge: str = "motion-judge",
    cfg_scales: Sequence[float] = (1.0, 1.5, 2.0, 3.0, 4.0),
    captions: int = 256,
    train_commands: Sequence[str] | None = None,
    notes: str = "",
    assets_dir: Path = ASSETS_DIR,
    use_ema: bool = True,
) -> dict[str, Any]:
    """Write `assets_dir/NAME.safetensors` (a text-to-motion GPT in bf16, naming its embedded tokenizer and motion
    CLIP) and its card: per guidance scale, how often the judge reads one motion for each of `captions` captions
    whose pairs training saw doing what it asked; the best scale (by everything right, then actions) is the
    card's recommended setting, and at it the same for captions of the held-out pairs."""
    from llamagen.motion.judge import score_motions
    from llamagen.motion.measures import HELD_OUT_SEED
    from llamagen.motion.pipeline import MOTION_GENERATOR_KIND, load_motion_pipeline
    from llamagen.pipeline import generator_metadata
    from llamagen.training.text_to_motion_study import evaluation_captions, score_fields

    run_dir = Path(run_dir)
    final, metrics, run_config, train_commands = finished_run(run_dir, train_commands)
    recorded = generator_metadata(final)
    names = {
        "tokenizer": shipped_name("tokenizer", recorded.get("tokenizer"), tokenizer),
        "text_encoder": shipped_name("text encoder", recorded.get("text_encoder"), text_encoder),
        "judge": shipped_name("judge", judge, None),
    }
    weights = assets_dir / f"{name}.safetensors"
    save_generator(
        run_dir, final, run_config, use_ema, weights, {key: names[key] for key in ("tokenizer", "text_encoder")}
    )
    pipe = load_motion_pipeline(weights, judge=names["judge"])  # evaluate what users get: the bf16 weights
    asked = evaluation_captions(captions)
    fixed = {key: SWEPT_WITH[key] for key in ("top_k", "temperature")}

    def scores(split: str, scale: float) -> dict[str, Any]:
        items = asked[split]
        motions = pipe([item["caption"] for item in items], cfg_scale=scale, seed=0, **fixed)
        judged = score_motions(
            pipe.judge, [motion.features for motion in motions], [item["segments"] for item in items]
        )
        return score_fields(judged)

    rows = [{"cfg_scale": scale, **scores("seen", scale)} for scale in cfg_scales]
    best = max(rows, key=lambda row: (row["everything"], row["actions"]))["cfg_scale"]
    evaluation = {
        "judge": names["judge"],
        "data": f"{captions} captions of seed {HELD_OUT_SEED} whose (action, value) pairs training saw, one motion "
        "each; at the best scale, as many captions of the held-out pairs",
        "sampling": "top_k 0, temperature 1, seed 0 (caption i drawn from seed i)",
        "best_cfg_scale": best,
        "by_cfg_scale": rows,
        "held_out_pairs_at_best_cfg_scale": scores("held_out", best),
    }
    card = generator_card(
        card_opening(name, MOTION_GENERATOR_KIND, run_config, data, metrics, use_ema),
        names,
        evaluation,
        [recorded.get("codes_command", ""), *train_commands],
        f"llamagen export motion-gpt {run_dir} --name {name} --data {json.dumps(data)} --tokenizer "
        f"{names['tokenizer']} --text-encoder {names['text_encoder']} --judge {names['judge']} --cfg-scales "
        f"{' '.join(f'{scale:g}' for scale in cfg_scales)} --captions {captions}",
        use_ema,
        notes,
    )
    return write_card(card, assets_dir)


def export_motion_text_encoder(
    run_dir: str | Path,
    name: str,
    data: str,
    train_commands: Sequence[str] | None = None,
    notes: str = "",
    assets_dir: Path = ASSETS_DIR,
    clips: int = 500,
) -> dict[str, Any]:
    """Write `assets_dir/NAME.safetensors` (the run's final motion CLIP in bf16) and its card, with
    caption-motion retrieval among `clips` held-out captioned clips and how often it prefers each clip's own
    parameter values (`motion.retrieval`), also on as many clips of the pairs training never showed."""
    from llamagen.data.motion import Motions
    from llamagen.motion.measures import HELD_OUT_SEED
    from llamagen.motion.retrieval import motion_caption_retrieval, parameter_choice
    from llamagen.motion.text import load_motion_text_encoder

    run_dir = Path(run_dir)
    final, metrics, run_config, train_commands = finished_run(run_dir, train_commands)
    weights = assets_dir / f"{name}.safetensors"
    save(load_motion_text_encoder(final), weights, weights_dtype=torch.bfloat16)
    shipped = load_motion_text_encoder(weights)
    seen, held_out = Motions(seed=HELD_OUT_SEED, captioned=True), Motions(seed=HELD_OUT_SEED, only_held_out_pairs=True)
    items = [seen[i] for i in range(clips)]
    evaluation = {
        "data": f"{clips} captioned clips of seed {HELD_OUT_SEED} (not the training stream)",
        **motion_caption_retrieval(shipped, items),
        "right_value": parameter_choice(shipped, items),
        "right_value_held_out_pairs": parameter_choice(shipped, [held_out[i] for i in range(clips)]),
    }
    card = encoder_card(name, "motion-clip", run_dir, run_config, metrics, data, evaluation, train_commands, notes)
    return write_card(card, assets_dir)
