"""Training the motion judge (`llamagen.motion.judge`) on real clips; minutes on the CPU.

Fresh procedural clips every step (`Motions(seed)`, held-out pairs included: the judge must read those too),
judged on clips drawn with the held-out seed: per-frame accuracy of each head, and how often a whole clip is
read right (its actions in order, then every parameter). Like the image judges it keeps no checkpoints: a
stopped one is simply run again.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llamagen.checkpoints import save
from llamagen.data.motion import Motions
from llamagen.data.motion.windows import feature_statistics
from llamagen.files import write_text_atomically
from llamagen.motion.judge import (
    HEADS,
    NOT_APPLICABLE,
    MotionJudge,
    MotionJudgeConfig,
    judge_loss,
    padded_batch,
    read_motion,
    verdict,
)
from llamagen.motion.measures import HELD_OUT_SEED
from llamagen.training.settings import warmup_cosine


@dataclass
class MotionJudgeTraining:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    statistics_clips: int = 1024
    held_out_clips: int = 512


def train_motion_judge(config: MotionJudgeConfig, training: MotionJudgeTraining,
                       show_progress: bool = True) -> tuple[MotionJudge, dict[str, float]]:  # fmt: skip
    """A judge and its accuracies on held-out clips."""
    torch.manual_seed(training.seed)
    judge = MotionJudge(config)
    mean, std = feature_statistics(training.seed, training.statistics_clips)
    judge.feature_mean.copy_(mean)
    judge.feature_std.copy_(std)
    judge.train()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=training.lr, weight_decay=0.01)
    data = Motions(seed=training.seed)
    started = time.time()
    for step in range(training.steps):
        first = step * training.batch_size
        features, frames, labels = padded_batch([data[index] for index in range(first, first + training.batch_size)])
        for group in optimizer.param_groups:
            group["lr"] = training.lr * warmup_cosine(step, training.steps, training.steps // 20, 0.01)
        loss = judge_loss(judge(features, frames), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(judge.parameters(), 1.0)
        optimizer.step()
        if show_progress and (step + 1) % 100 == 0:
            print(f"step {step + 1:>5}  loss {loss.item():.4f}  {time.time() - started:.0f} s", flush=True)
    judge.eval()
    return judge, judge_accuracies(judge, training.held_out_clips)


@torch.no_grad()
def judge_accuracies(judge: MotionJudge, clips: int) -> dict[str, float]:
    """On `clips` held-out clips: each head's per-frame accuracy where it applies, the share of clips whose
    actions are read right, and of those whose actions and parameters all are."""
    data = Motions(seed=HELD_OUT_SEED)
    items = [data[index] for index in range(clips)]
    right, counted = torch.zeros(len(HEADS)), torch.zeros(len(HEADS))
    actions = everything = 0
    for start in range(0, clips, 64):
        batch = items[start : start + 64]
        features, frames, labels = padded_batch(batch)
        logits = judge(features, frames)
        for i, name in enumerate(HEADS):
            applies = labels[..., i] != NOT_APPLICABLE
            right[i] += (logits[name].argmax(-1) == labels[..., i])[applies].sum()
            counted[i] += applies.sum()
        for item in batch:
            read = verdict(item["segments"], read_motion(judge, item["features"]))
            actions += read.actions
            everything += read.everything
    return {**{f"frames_{name}": float(right[i] / counted[i]) for i, name in enumerate(HEADS)},
            "clips_actions": actions / clips, "clips_everything": everything / clips}  # fmt: skip


def save_motion_judge(judge: MotionJudge, training: MotionJudgeTraining, accuracy: dict[str, float], out: Path,
                      command: str, wall_time_minutes: float) -> None:  # fmt: skip
    """The weights (bf16) to `out` and the model card beside it."""
    card = {
        "name": out.stem,
        "kind": "motion-judge",
        "config": judge.config.to_dict(),
        "training": dataclasses.asdict(training),
        "data": f"procedural motion clips, fresh every step (seed {training.seed}), held-out pairs included",
        "held_out_accuracy": accuracy,
        "held_out_data": f"{training.held_out_clips} clips drawn with seed {HELD_OUT_SEED}",
        "wall_time_minutes": round(wall_time_minutes, 1),
        "reproduce": command,
    }
    save(judge, out, weights_dtype=torch.bfloat16)
    write_text_atomically(out.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
