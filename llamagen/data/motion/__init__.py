"""Motion: a procedural data set of human motion clips with captions, as HumanML3D gives text-to-motion models.

A 22-joint skeleton (`skeleton`) plays one to three procedural actions (`actions`: walk, run, jump, wave,
squat, kick, turn, sit, each with parameters), blended into a clip of 64-196 frames at 20 frames a second
(`clips`); `features` computes HumanML3D's 263 numbers a frame from it, and `captions` says what it does.
Every clip is a pure function of (seed, index): no files, no download, and its ground truth known exactly.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from llamagen.data.motion.actions import ACTIONS, FPS, PARAMETERS
from llamagen.data.motion.captions import describe
from llamagen.data.motion.clips import MAX_FRAMES, MIN_FRAMES, Segment, animate, draw_segments, perform
from llamagen.data.motion.features import FEATURES, feature_positions, motion_features
from llamagen.data.motion.skeleton import JOINTS, PARENTS, random_body

# (action, parameter value) pairs that no captioned training clip shows, though each value appears with other
# actions: generating them from their captions measures composition.
HELD_OUT_PAIRS = frozenset({("walk", "fast"), ("kick", "left"), ("jump", "large"), ("squat", "slow")})

__all__ = [
    "ACTIONS", "FEATURES", "FPS", "HELD_OUT_PAIRS", "JOINTS", "MAX_FRAMES", "MIN_FRAMES", "PARAMETERS", "PARENTS",
    "Motions", "feature_positions", "motion_features",
]  # fmt: skip


def holds_out(segments: list[Segment]) -> bool:
    return any(segment.pairs() & HELD_OUT_PAIRS for segment in segments)


class Motions(torch.utils.data.Dataset):
    """Random clips; clip `k` is a pure function of (`seed`, `k`) for any k >= 0.

    With `captioned`, no clip contains a held-out pair, as text-to-motion training needs; with
    `only_held_out_pairs`, every clip contains one. Items are dicts: features (T - 1, 263) float32, positions
    (T, 22, 3) float32 in metres, frames (T - 1, the feature count), caption, actions (the actions' names,
    comma-separated), segments (each action's parameters and frames) and body (its proportions).
    """

    shuffle_each_epoch: ClassVar[bool] = False  # each index is already a fresh random draw

    def __init__(self, seed: int = 0, length: int = 1_000_000, captioned: bool = False,
                 only_held_out_pairs: bool = False):  # fmt: skip
        if captioned and only_held_out_pairs:
            raise ValueError("captioned leaves the held-out pairs out; only_held_out_pairs draws nothing else")
        self.seed, self.length = seed, length
        self.captioned, self.only_held_out_pairs = captioned, only_held_out_pairs

    def __len__(self) -> int:
        return self.length

    def _accept(self, segments: list[Segment]) -> bool:
        held_out = holds_out(segments)
        return not (self.captioned and held_out) and (held_out or not self.only_held_out_pairs)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        body = random_body(rng)
        while True:  # the actions that fit in the clip decide whether it is accepted
            segments, channels = perform(draw_segments(rng), body, rng)
            if self._accept(segments):
                break
        motion = animate(channels, body)
        features = motion_features(motion.positions, motion.rotations, motion.heading, body.sole_heights())
        return {
            "features": torch.from_numpy(features.astype(np.float32)),
            "positions": torch.from_numpy(motion.positions.astype(np.float32)),
            "frames": len(features),
            "caption": describe(segments, rng),
            "actions": ",".join(segment.action for segment in segments),
            "segments": [{"action": s.action, **s.params, "start": s.start, "frames": s.frames} for s in segments],
            "body": {"scale": body.scale, "legs": body.legs, "arms": body.arms},
        }
