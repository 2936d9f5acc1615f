"""The motion judge: reads, frame by frame, which action a clip performs and with which parameters, so that a
generated motion can be scored against what its caption asked.

Two 1-D convolutions lift each frame's features; residual convolutions dilated 1, 2, 4, ... 32 frames give
every frame the context of 6 s around it (a squat's count and a walk's speed are properties of a stretch of
frames, not of one); and one linear head a label reads the action (or "none", where a clip holds its last
pose) and each parameter. (A recurrent layer would see the whole clip, but trains a hundred times slower on
a CPU.)
Reading a clip (`read_motion`) collapses the frames' actions into runs, drops runs shorter than
`MIN_RUN_FRAMES` (the blends between actions), and takes each run's parameters by majority over its frames.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llamagen.analysis.statistics import Estimate, proportion
from llamagen.data.motion import ACTIONS, FEATURES, PARAMETERS
from llamagen.motion.loading import load_saved_model

NONE = "none"
ACTION_LABELS = (*ACTIONS, NONE)


def _parameter_labels() -> dict[str, tuple]:
    """Every parameter any action has, and the values it takes over all of them."""
    labels: dict[str, tuple] = {}
    for domains in PARAMETERS.values():
        for name, values in domains.items():
            labels[name] = tuple(dict.fromkeys((*labels.get(name, ()), *values)))
    return labels


PARAMETER_LABELS = _parameter_labels()
HEADS = ("action", *PARAMETER_LABELS)
NOT_APPLICABLE = -1  # a frame's label for a parameter its action does not have (left out of the loss)
MIN_RUN_FRAMES = 6  # 0.3 s: shorter runs of one action are blends between two, not actions


def frame_labels(segments: list[dict], frames: int) -> np.ndarray:
    """(frames, len(HEADS)) int64: each frame's action index and parameter value indices (NOT_APPLICABLE where
    its action has no such parameter; frames after the last action are "none")."""
    labels = np.full((frames, len(HEADS)), NOT_APPLICABLE, dtype=np.int64)
    labels[:, 0] = ACTION_LABELS.index(NONE)
    for segment in segments:
        span = slice(segment["start"], min(frames, segment["start"] + segment["frames"]))
        labels[span, 0] = ACTION_LABELS.index(segment["action"])
        for name in PARAMETERS[segment["action"]]:
            labels[span, HEADS.index(name)] = PARAMETER_LABELS[name].index(segment[name])
    return labels


@dataclass
class MotionJudgeConfig:
    features: int = FEATURES
    width: int = 128
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32)

    def __post_init__(self) -> None:
        self.dilations = tuple(self.dilations)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "dilations": list(self.dilations)}


class MotionJudge(nn.Module):
    """features (B, T, 263) -> {head: logits (B, T, classes)}; normalises with the statistics it keeps."""

    checkpoint_kind = "motion-judge"

    def __init__(self, config: MotionJudgeConfig):
        super().__init__()
        self.config = config
        self.lift = nn.ModuleList([nn.Conv1d(config.features, config.width, 5, padding=2),
                                   nn.Conv1d(config.width, config.width, 5, padding=2)])  # fmt: skip
        self.context = nn.ModuleList([nn.Conv1d(config.width, config.width, 3, padding=d, dilation=d)
                                      for d in config.dilations])  # fmt: skip
        self.mix = nn.ModuleList([nn.Conv1d(config.width, config.width, 1) for _ in config.dilations])
        sizes = {"action": len(ACTION_LABELS), **{name: len(values) for name, values in PARAMETER_LABELS.items()}}
        self.heads = nn.ModuleDict({name: nn.Linear(config.width, size) for name, size in sizes.items()})
        self.register_buffer("feature_mean", torch.zeros(config.features))
        self.register_buffer("feature_std", torch.ones(config.features))

    def forward(self, features: torch.Tensor, frames: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`frames` (B,): each clip's real length, when the batch is padded after it. The padding is zeroed before
        each convolution, as a clip alone is, so that a clip reads the same in any batch."""
        x = ((features - self.feature_mean) / self.feature_std).transpose(1, 2)
        real = None if frames is None else (torch.arange(x.shape[-1]) < frames.unsqueeze(1)).unsqueeze(1)
        for convolution in self.lift:
            x = torch.relu(convolution(x if real is None else x * real))
        for dilated, mix in zip(self.context, self.mix, strict=True):
            x = x + mix(torch.relu(dilated(x if real is None else x * real)))
        x = x.transpose(1, 2)
        return {name: head(x) for name, head in self.heads.items()}


def judge_loss(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every head over the frames where it applies (labels (B, T, heads), -1 elsewhere)."""
    return sum(F.cross_entropy(logits[name].flatten(0, 1), labels[..., i].flatten(), ignore_index=NOT_APPLICABLE)
               for i, name in enumerate(HEADS))  # fmt: skip


@dataclass
class ReadAction:
    action: str
    params: dict
    start: int
    frames: int


@torch.no_grad()
def read_motion(judge: MotionJudge, features: torch.Tensor) -> list[ReadAction]:
    """The actions a clip (T, 263) performs, in order, with their parameters."""
    logits = judge(features.float().unsqueeze(0))
    predicted = {name: values[0].argmax(-1).numpy() for name, values in logits.items()}
    runs, start = [], 0
    actions = predicted["action"]
    for end in range(1, len(actions) + 1):
        if end == len(actions) or actions[end] != actions[start]:
            runs.append((int(actions[start]), start, end - start))
            start = end
    spans: list[list] = []  # [action, start, frames]
    for action, start, frames in runs:
        name = ACTION_LABELS[action]
        if name == NONE or frames < MIN_RUN_FRAMES:
            continue
        if spans and spans[-1][0] == name and start - (spans[-1][1] + spans[-1][2]) < MIN_RUN_FRAMES:
            spans[-1][2] = start + frames - spans[-1][1]  # one action, split by a blip
        else:
            spans.append([name, start, frames])
    read = []
    for name, start, frames in spans:  # each parameter voted over the whole of its action's frames
        params = {}
        for parameter in PARAMETERS[name]:
            votes = Counter(predicted[parameter][start : start + frames].tolist()).most_common(1)[0][0]
            params[parameter] = PARAMETER_LABELS[parameter][votes]
        read.append(ReadAction(name, params, start, frames))
    return read


@dataclass
class Verdict:
    actions: bool  # the actions asked, in order, and no other
    parameters: dict[str, bool]  # per parameter asked (action index: name), given the actions are right

    @property
    def everything(self) -> bool:
        return self.actions and all(self.parameters.values())


def verdict(asked: list[dict], read: list[ReadAction]) -> Verdict:
    """Whether a motion read as `read` does what `asked` (segments: action and parameters) asked."""
    right = [segment["action"] for segment in asked] == [action.action for action in read]
    parameters = {}
    for index, segment in enumerate(asked):
        for name in PARAMETERS[segment["action"]]:
            parameters[f"{index}:{name}"] = right and read[index].params[name] == segment[name]
    return Verdict(right, parameters)


@dataclass
class MotionScores:
    """How often generated motions do what their captions asked, each share with its Wilson 95% interval."""

    actions: Estimate  # the actions asked, in order, and no other
    everything: Estimate  # the actions and every parameter
    parameters: Estimate | None  # of the parameters asked of motions whose actions are right, the share right


def score_motions(judge: MotionJudge, motions: list[torch.Tensor], asked: list[list[dict]]) -> MotionScores:
    """Read each motion (T, 263) and hold it to the segments its caption asked; a motion of no frames does
    nothing it was asked."""
    if len(motions) != len(asked) or not motions:
        raise ValueError(f"need one list of asked actions a motion, got {len(asked)} for {len(motions)} motions")
    verdicts = [verdict(segments, read_motion(judge, motion) if len(motion) else [])
                for motion, segments in zip(motions, asked, strict=True)]  # fmt: skip
    right = [v for v in verdicts if v.actions]
    parameters = [value for v in right for value in v.parameters.values()]
    return MotionScores(
        proportion(len(right), len(verdicts)),
        proportion(sum(v.everything for v in verdicts), len(verdicts)),
        proportion(sum(parameters), len(parameters)) if parameters else None,
    )


def padded_batch(items: list[dict], frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Motion items -> (features (B, T, 263) zero-padded, lengths (B,), labels (B, T, heads) -1 on padding)."""
    longest = max(item["frames"] for item in items)
    frames = frames or longest
    if frames < longest:
        raise ValueError(f"a batch of {frames} frames cannot hold a clip of {longest}")
    features = torch.zeros(len(items), frames, FEATURES)
    labels = torch.full((len(items), frames, len(HEADS)), NOT_APPLICABLE, dtype=torch.long)
    for row, item in enumerate(items):
        length = item["frames"]
        features[row, :length] = item["features"]
        labels[row, :length] = torch.from_numpy(frame_labels(item["segments"], length))
    return features, torch.tensor([item["frames"] for item in items]), labels


def load_motion_judge(source: str | os.PathLike) -> MotionJudge:
    """A motion judge saved by `llamagen.save`, strictly loaded, in eval mode."""
    return load_saved_model(
        source, MotionJudge.checkpoint_kind, lambda config: MotionJudge(MotionJudgeConfig(**config))
    )
