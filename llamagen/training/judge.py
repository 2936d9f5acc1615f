"""Training the judges (llamagen.evaluation.judges) on real images; minutes on the CPU.

Shapes: fresh rendered images every step (seed 0), judged on 2,000 drawn with another seed. Digits: the
1,500 training digits, each shifted by up to 2 pixels, judged on the 297 held out. A judge trains in
minutes, so its training keeps no checkpoints: a stopped one is simply run again.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llamagen.checkpoints import save
from llamagen.data.batches import sample_index
from llamagen.data.digits import TEST_IMAGES
from llamagen.evaluation.judges import (
    HELD_OUT_SEED,
    HELD_OUT_SHAPES,
    Judge,
    JudgeConfig,
    accuracies,
    held_out,
    judge_data,
    judge_loss,
    labelled,
)
from llamagen.files import write_text_atomically
from llamagen.training.settings import warmup_cosine

MAX_SHIFT = 2


@dataclass
class JudgeTraining:
    steps: int = 1_500
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


def shifted(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Moved by up to MAX_SHIFT pixels each way, the uncovered border black (the digits' background)."""
    dy, dx = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2)
    padded = torch.nn.functional.pad(image, (MAX_SHIFT,) * 4, value=-1.0)
    size = image.shape[-1]
    return padded[:, MAX_SHIFT - dy : MAX_SHIFT - dy + size, MAX_SHIFT - dx : MAX_SHIFT - dx + size]


DATA_DESCRIPTIONS = {
    "shapes": (
        "rendered shapes, fresh every step (seed 0)",
        f"{HELD_OUT_SHAPES:,} shapes drawn with seed {HELD_OUT_SEED}",
    ),
    "digits": (
        f"the 1,500 training digits of scikit-learn, shifted by up to {MAX_SHIFT} pixels",
        f"the {TEST_IMAGES} held-out digits",
    ),
}


def save_judge(
    judge: Judge,
    kind: str,
    training: JudgeTraining,
    accuracy: dict[str, float],
    out: Path,
    command: str,
    wall_time_minutes: float,
) -> None:
    """The weights (bf16) to `out` and the model card beside it (`out` with .json)."""
    trained_on, judged_on = DATA_DESCRIPTIONS[kind]
    card = {
        "name": out.stem,
        "kind": "judge",
        "config": judge.config.to_dict(),
        "training": dataclasses.asdict(training),
        "data": trained_on,
        "held_out_accuracy": accuracy,
        "held_out_data": judged_on,
        "wall_time_minutes": round(wall_time_minutes, 1),
        "reproduce": command,
    }
    save(judge, out, weights_dtype=torch.bfloat16)
    write_text_atomically(out.with_suffix(".json"), json.dumps(card, indent=2) + "\n")


def train_judge(kind: str, training: JudgeTraining, show_progress: bool = True) -> tuple[Judge, dict[str, float]]:
    """A judge for `kind` and its accuracy per attribute on held-out real images."""
    torch.manual_seed(training.seed)
    judge = Judge(JudgeConfig.preset(kind)).train()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=training.lr, weight_decay=0.01)
    data = judge_data(kind, train=True, seed=training.seed)
    started = time.time()
    for step in range(training.steps):
        first = step * training.batch_size
        items = [data[sample_index(data, g, training.seed)] for g in range(first, first + training.batch_size)]
        images, labels = labelled(items)
        if kind == "digits":
            rng = np.random.default_rng([training.seed, step])
            images = torch.stack([shifted(image, rng) for image in images])
        for group in optimizer.param_groups:
            group["lr"] = training.lr * warmup_cosine(step, training.steps, training.steps // 20, 0.01)
        loss = judge_loss(judge(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if show_progress and (step + 1) % 100 == 0:
            print(f"step {step + 1:>5}  loss {loss.item():.4f}  {time.time() - started:.0f} s", flush=True)
    judge.eval()
    return judge, accuracies(judge, *held_out(kind))
