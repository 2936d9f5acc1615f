"""The motion judge: per-frame labels from a clip's actions, a reading that recovers the actions and their
parameters from the frames' labels, padding that changes nothing, and a trained judge that can be saved."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llamagen.checkpoints import embedded_card
from llamagen.data.motion import Motions
from llamagen.motion.judge import (
    ACTION_LABELS,
    HEADS,
    MIN_RUN_FRAMES,
    NONE,
    NOT_APPLICABLE,
    PARAMETER_LABELS,
    MotionJudge,
    MotionJudgeConfig,
    frame_labels,
    load_motion_judge,
    padded_batch,
    read_motion,
    verdict,
)
from llamagen.training.motion_judge import (
    MotionJudgeTraining,
    judge_accuracies,
    save_motion_judge,
    train_motion_judge,
)


class Oracle(nn.Module):
    """Logits that put each frame at the labels given, as a perfect judge would."""

    def __init__(self, labels):
        super().__init__()
        self.labels = torch.as_tensor(labels)

    def forward(self, features, frames=None):
        sizes = {"action": len(ACTION_LABELS), **{name: len(values) for name, values in PARAMETER_LABELS.items()}}
        return {name: torch.nn.functional.one_hot(self.labels[:, i].clamp_min(0), sizes[name]).float()[None]
                for i, name in enumerate(HEADS)}  # fmt: skip


def clip_with_actions(count: int, seed: int = 4) -> dict:
    data = Motions(seed=seed)
    return next(item for item in (data[i] for i in range(200)) if len(item["segments"]) == count)


def test_frame_labels_follow_the_segments():
    segments = [{"action": "walk", "speed": "fast", "direction": "backward", "start": 0, "frames": 5},
                {"action": "turn", "side": "left", "angle": 180, "start": 5, "frames": 3}]  # fmt: skip
    labels = frame_labels(segments, 10)
    assert labels.shape == (10, len(HEADS))
    assert [ACTION_LABELS[a] for a in labels[:, 0]] == ["walk"] * 5 + ["turn"] * 3 + ["none"] * 2
    speed, side = HEADS.index("speed"), HEADS.index("side")
    assert (labels[:5, speed] == PARAMETER_LABELS["speed"].index("fast")).all()
    assert (labels[5:, speed] == NOT_APPLICABLE).all() and (labels[5:8, side] == 0).all()


def test_a_perfect_reading_recovers_the_actions_and_a_wrong_one_is_caught():
    item = clip_with_actions(3)
    labels = frame_labels(item["segments"], item["frames"])
    read = read_motion(Oracle(labels), item["features"])
    # the features have a frame fewer than the positions the segments count (velocities look a frame ahead)
    expected = [(s["action"], s["start"], min(s["frames"], item["frames"] - s["start"])) for s in item["segments"]]
    assert [(r.action, r.start, r.frames) for r in read] == expected
    assert verdict(item["segments"], read).everything
    blip = labels.copy()
    middle = item["segments"][0]["start"] + item["segments"][0]["frames"] // 2
    blip[middle : middle + 3, 0] = ACTION_LABELS.index("kick") if item["segments"][0]["action"] != "kick" else 0
    assert verdict(item["segments"], read_motion(Oracle(blip), item["features"])).everything  # a blip is not an action
    # A blip that splits an action leaves one action, its parameters voted over all of its frames: here the
    # piece before the blip reads another value, outvoted by the rest.
    first = item["segments"][0]
    name = next(iter(k for k in first if k not in ("action", "start", "frames")))
    column, values = HEADS.index(name), PARAMETER_LABELS[name]
    split = labels.copy()
    cut = first["start"] + MIN_RUN_FRAMES
    split[cut : cut + 2, 0] = ACTION_LABELS.index(NONE)
    split[first["start"] : cut, column] = (values.index(first[name]) + 1) % len(values)
    assert first["frames"] > 3 * MIN_RUN_FRAMES
    merged = read_motion(Oracle(split), item["features"])
    assert [(r.action, r.start) for r in merged] == [(a, start) for a, start, _ in expected]
    assert merged[0].params[name] == first[name] and verdict(item["segments"], merged).everything
    swapped = [dict(item["segments"][1], start=0), dict(item["segments"][0], start=1)]
    if swapped[0]["action"] != swapped[1]["action"]:
        assert not verdict(swapped, read).actions
    changed = [dict(s) for s in item["segments"]]
    name = next(iter(k for k in changed[0] if k not in ("action", "start", "frames")))
    values = PARAMETER_LABELS[name]
    changed[0][name] = values[(values.index(changed[0][name]) + 1) % len(values)]
    judged = verdict(changed, read)
    assert judged.actions and not judged.parameters[f"0:{name}"] and not judged.everything


def test_padding_a_batch_changes_no_clip_reading():
    torch.manual_seed(0)
    judge = MotionJudge(MotionJudgeConfig(width=16, dilations=(1, 4))).eval()
    items = [Motions(seed=2)[i] for i in range(3)]
    features, frames, labels = padded_batch(items)
    longest = max(item["frames"] for item in items)
    assert features.shape[1] == longest and (labels[0, frames[0] :] == -1).all()
    with pytest.raises(ValueError, match=f"a batch of {longest - 1} frames cannot hold a clip of {longest}"):
        padded_batch(items, longest - 1)
    with torch.no_grad():
        batched = judge(features, frames)
        for row, item in enumerate(items):
            alone = judge(item["features"].unsqueeze(0))
            for name in HEADS:
                torch.testing.assert_close(batched[name][row, : item["frames"]], alone[name][0], atol=1e-5, rtol=1e-4)


def test_a_trained_judge_is_saved_with_its_card_and_loads(tmp_path):
    training = MotionJudgeTraining(steps=3, batch_size=4, statistics_clips=8, held_out_clips=4)
    judge, accuracy = train_motion_judge(MotionJudgeConfig(width=16, dilations=(1, 4)), training, show_progress=False)
    assert set(accuracy) == {*(f"frames_{h}" for h in HEADS), "clips_actions", "clips_everything"}
    assert all(0 <= value <= 1 for value in accuracy.values())
    save_motion_judge(judge, training, accuracy, tmp_path / "judge.safetensors", "llamagen ...", 0.1)
    loaded = load_motion_judge(tmp_path / "judge.safetensors")
    features = Motions(seed=3)[0]["features"].unsqueeze(0)
    with torch.no_grad():
        for parameter in judge.parameters():  # the weights are stored in bf16, the statistics as they are
            parameter.copy_(parameter.bfloat16().float())
        torch.testing.assert_close(loaded(features)["action"], judge(features)["action"])


def test_the_shipped_motion_judge_reads_held_out_clips_as_its_card_says():
    card = embedded_card("motion-judge")
    accuracy = judge_accuracies(load_motion_judge("motion-judge"), 64)
    for name in HEADS:  # per frame, over 64 clips' thousands of frames
        assert accuracy[f"frames_{name}"] == pytest.approx(card["held_out_accuracy"][f"frames_{name}"], abs=0.05)
    assert accuracy["clips_actions"] >= 0.95 and accuracy["clips_everything"] >= 0.9
