"""What the motion models train on: fixed-length windows of clips' features (the tokenizer), whole captioned
clips padded to one length (the CLIP), and the features' statistics."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from llamagen.data.motion import MAX_FRAMES, Motions

WINDOW = 60  # feature frames a window: 3 s, 15 tokens; the shortest clip has 63
# A feature that does not vary (the rotation of a joint with no child) is divided by this, not by zero.
STD_FLOOR = 1e-2


class MotionWindows(torch.utils.data.Dataset):
    """Item k: `frames` consecutive feature vectors of clip k of `Motions(seed)`, from a start drawn from
    (seed, k); dicts of features (frames, 263) float32."""

    shuffle_each_epoch: ClassVar[bool] = False  # each index is already a fresh random draw

    def __init__(self, seed: int = 0, frames: int = WINDOW, length: int = 1_000_000):
        self.clips, self.seed, self.frames, self.length = Motions(seed=seed, length=length), seed, frames, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        features = self.clips[index]["features"]
        if len(features) < self.frames:
            raise ValueError(f"clip {index} has {len(features)} feature frames, fewer than the window's {self.frames}")
        start = int(np.random.default_rng([self.seed, index, 1]).integers(len(features) - self.frames + 1))
        return {"features": features[start : start + self.frames]}


class PaddedClips(torch.utils.data.Dataset):
    """Item k: clip k of `Motions(seed, captioned=captioned)`, its features zero-padded to the longest clip's
    MAX_FRAMES - 1; dicts of features, frames (the real ones) and caption."""

    shuffle_each_epoch: ClassVar[bool] = False

    def __init__(self, seed: int = 0, captioned: bool = True, length: int = 1_000_000):
        self.clips, self.length = Motions(seed=seed, length=length, captioned=captioned), length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        item = self.clips[index]
        features = torch.zeros(MAX_FRAMES - 1, item["features"].shape[1])
        features[: item["frames"]] = item["features"]
        return {"features": features, "frames": item["frames"], "caption": item["caption"]}


def feature_statistics(seed: int, clips: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (floored at STD_FLOOR) of each feature over every frame of the first `clips`
    clips of `Motions(seed)`: what a tokenizer normalises with."""
    data = Motions(seed=seed)
    frames = torch.cat([data[index]["features"].double() for index in range(clips)])
    return frames.mean(0).float(), frames.std(0).clamp_min(STD_FLOOR).float()
