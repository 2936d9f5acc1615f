"""The motion data set: clips that are pure functions of their index, bodies that keep their bones, features
that give the clip back, feet that stay planted, actions that do what their captions say."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from llamagen.data.motion import (
    FEATURES,
    FPS,
    HELD_OUT_PAIRS,
    JOINTS,
    MAX_FRAMES,
    MIN_FRAMES,
    PARAMETERS,
    PARENTS,
    Motions,
    feature_positions,
    motion_features,
)
from llamagen.data.motion.captions import phrase
from llamagen.data.motion.clips import Segment, animate, draw_segments, perform
from llamagen.data.motion.features import FEATURE_SLICES
from llamagen.data.motion.skeleton import FOOT_JOINTS, JOINT, Body, yaw_rotations


def play(action: str, body: Body | None = None, seed: int = 0, **params):
    """One action alone: its motion and features."""
    body = body or Body()
    _, channels = perform([Segment(action, params)], body, np.random.default_rng(seed))
    motion = animate(channels, body)
    return motion, motion_features(motion.positions, motion.rotations, motion.heading, body.sole_heights())


@pytest.fixture(scope="module")
def clips():
    data = Motions(seed=5)
    return [data[index] for index in range(60)]


def test_clips_are_a_pure_function_of_seed_and_index(clips):
    again = Motions(seed=5)[7]
    assert np.array_equal(again["features"], clips[7]["features"]) and again["caption"] == clips[7]["caption"]
    other = Motions(seed=6)[7]
    assert other["features"].shape != clips[7]["features"].shape or not np.allclose(
        other["features"], clips[7]["features"]
    )


def test_clip_shapes_lengths_and_layout(clips):
    assert len(JOINTS) == len(PARENTS) == 22 and FEATURES == 263 and FPS == 20
    assert FEATURE_SLICES["contacts"].stop == 263
    for item in clips:
        frames = item["frames"]
        assert MIN_FRAMES <= frames + 1 <= MAX_FRAMES
        assert item["features"].shape == (frames, 263) and item["positions"].shape == (frames + 1, 22, 3)
        assert item["features"].dtype == item["positions"].dtype
        ends = [segment["start"] + segment["frames"] for segment in item["segments"]]
        assert [segment["start"] for segment in item["segments"]] == [0, *ends[:-1]] and ends[-1] <= frames + 1


def test_bones_keep_their_lengths_through_every_clip(clips):
    for item in clips[:20]:
        positions = item["positions"].numpy().astype(np.float64)
        body = Body(**item["body"])
        lengths = np.linalg.norm(positions[:, 1:] - positions[:, list(PARENTS[1:])], axis=-1)
        expected = np.linalg.norm(body.offsets()[1:], axis=-1)
        np.testing.assert_allclose(lengths, np.broadcast_to(expected, lengths.shape), atol=1e-5)


def test_features_give_the_positions_back(clips):
    for item in clips:
        recovered = feature_positions(item["features"].numpy())
        np.testing.assert_allclose(recovered, item["positions"].numpy()[:-1], atol=1e-4)


def test_features_do_not_change_when_the_clip_is_turned_and_moved():
    motion, features = play("walk", speed="normal", direction="forward")
    turn = 0.7
    turned = motion.positions @ yaw_rotations(np.array(turn)).T + np.array([3.0, 0.0, -2.0])
    again = motion_features(turned, motion.rotations, motion.heading + turn, Body().sole_heights())
    np.testing.assert_allclose(again, features, atol=1e-9)


def test_feet_stay_on_the_ground_and_planted_feet_do_not_slide(clips):
    for item in clips:
        positions, features = item["positions"].numpy(), item["features"].numpy()
        assert positions[:, FOOT_JOINTS, 1].min() > 0.015  # the feet's joints sit inside the feet, above ground
        # turning on the spot swivels the planted feet about the body, so only frames without a turn count
        contacts = (features[:, FEATURE_SLICES["contacts"]] > 0) & (features[:, :1] == 0)
        moves = features[:, FEATURE_SLICES["velocities"]].reshape(-1, 22, 3)[:, FOOT_JOINTS][..., [0, 2]]
        # blends between actions and double support may let a planted foot slip a little, never walk away
        assert np.linalg.norm(moves, axis=-1)[contacts].mean() < 0.002  # 4 cm/s


def test_no_joint_moves_faster_than_a_person_can(clips):
    for item in clips:
        speeds = np.linalg.norm(np.diff(item["positions"].numpy(), axis=0), axis=-1) * FPS
        assert speeds[:, [JOINT["pelvis"], JOINT["head"]]].max() < 7.5  # m/s: a run's pace, never a teleport
        assert speeds.max() < 15.0  # a kicking foot's speed


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_walks_go_their_way_faster_with_their_speed(direction):
    speeds = []
    for speed in ("slow", "normal", "fast"):
        motion, features = play("walk", speed=speed, direction=direction)
        seconds = len(motion.positions) / FPS
        speeds.append(motion.positions[-1, 0, 2] / seconds)
        assert (features[:, FEATURE_SLICES["contacts"]].sum(axis=1) == 0).mean() < 0.1  # a foot nearly always down
        assert abs(motion.positions[-1, 0, 0]) < 0.2  # straight ahead
    speeds = np.array(speeds) * (1 if direction == "forward" else -1)
    assert np.all(np.diff(speeds) > 0.15) and speeds[0] > 0.3
    if direction == "forward":  # 0.8 to 1.7 m/s, as people walk
        assert speeds[0] > 0.6 and speeds[-1] < 2.0


def test_running_is_faster_than_walking_and_leaves_the_ground():
    walk, _ = play("walk", speed="fast", direction="forward")
    for speed in ("slow", "fast"):
        motion, features = play("run", speed=speed)
        assert motion.positions[-1, 0, 2] / len(motion.positions) > walk.positions[-1, 0, 2] / len(walk.positions)
        assert (features[:, FEATURE_SLICES["contacts"]].sum(axis=1) == 0).mean() > 0.2  # flight phases


def test_jumps_rise_by_their_size_and_go_where_they_are_told():
    rises, reaches = {}, {}
    for size, direction in itertools.product(("small", "large"), ("in place", "forward")):
        motion, features = play("jump", size=size, direction=direction, count=2)
        feet = motion.positions[:, FOOT_JOINTS, 1].min(axis=1)
        rises[size] = feet.max() - feet[0]
        reaches[direction] = motion.positions[-1, 0, 2]
        airborne = (features[:, FEATURE_SLICES["contacts"]].sum(axis=1) == 0).astype(int)
        assert np.count_nonzero(np.diff(airborne) == 1) == 2  # two take-offs
    assert 0.08 < rises["small"] < 0.25 < 0.3 < rises["large"] < 0.55
    assert abs(reaches["in place"]) < 0.15 and reaches["forward"] > 0.8


def test_waves_raise_the_named_hands_above_the_head():
    for side in ("left", "right", "both"):
        motion, _ = play("wave", side=side, size="large")
        above = {hand: (motion.positions[:, JOINT[f"{hand}_wrist"], 1] - motion.positions[:, JOINT["head"], 1]).max()
                 for hand in ("left", "right")}  # fmt: skip
        for hand in ("left", "right"):
            assert (above[hand] > 0.05) == (side in (hand, "both"))
    small, _ = play("wave", side="right", size="small")
    large, _ = play("wave", side="right", size="large")
    sweep = {
        name: np.ptp(motion.positions[20:-20, JOINT["right_wrist"], 0])
        for name, motion in (("small", small), ("large", large))
    }
    assert sweep["large"] > 1.5 * sweep["small"]


def test_squats_lower_the_body_by_their_depth_and_count():
    lows = {}
    for size in ("small", "large"):
        motion, _ = play("squat", size=size, speed="normal", count=3)
        pelvis = motion.positions[:, 0, 1]
        lows[size] = pelvis[0] - pelvis.min()
        minima = (pelvis[1:-1] < pelvis[:-2]) & (pelvis[1:-1] <= pelvis[2:]) & (pelvis[1:-1] < pelvis[0] - 0.05)
        assert 3 <= np.count_nonzero(minima) <= 6  # three squats; a held bottom may hold two equal frames
        feet = motion.positions[:, FOOT_JOINTS][..., [0, 2]]
        assert np.abs(feet - feet[:1]).max() < 1e-6  # the feet stay where they are
    assert lows["small"] < 0.2 < 0.35 < lows["large"]
    slow, _ = play("squat", size="large", speed="slow", count=3)
    fast, _ = play("squat", size="large", speed="fast", count=3)
    assert len(slow.positions) > 1.6 * len(fast.positions)


@pytest.mark.parametrize("side", ["left", "right"])
def test_kicks_raise_the_named_foot_forward_while_the_other_stands(side):
    other = "right" if side == "left" else "left"
    heights = {}
    for size in ("small", "large"):
        motion, _ = play("kick", side=side, size=size)
        foot, pelvis = motion.positions[:, JOINT[f"{side}_foot"]], motion.positions[:, 0]
        heights[size] = foot[:, 1].max()
        assert (foot[:, 2] - pelvis[:, 2]).max() > 0.5
        assert motion.positions[:, JOINT[f"{other}_foot"], 1].max() < 0.06
    assert heights["small"] < 0.45 < 0.6 < heights["large"]


@pytest.mark.parametrize(("side", "angle"), [("left", 90), ("right", 90), ("left", 180), ("right", 180)])
def test_turns_end_facing_the_named_way(side, angle):
    motion, _ = play("turn", side=side, angle=angle)
    assert np.degrees(motion.heading[-1]) == pytest.approx(angle if side == "left" else -angle, abs=1.0)
    hips = motion.positions[-1, JOINT["left_hip"]] - motion.positions[-1, JOINT["right_hip"]]
    facing = np.cross(hips, [0.0, 1.0, 0.0])  # the body's left crossed with up points where it faces
    expected = yaw_rotations(np.radians(angle if side == "left" else -angle)) @ np.array([0.0, 0.0, 1.0])
    assert facing @ expected / np.linalg.norm(facing) > 0.98
    assert np.linalg.norm(motion.positions[-1, 0, [0, 2]]) < 0.3  # on the spot


def test_sitting_lowers_the_body_to_a_seat_and_ends_the_clip():
    for speed in ("slow", "fast"):
        motion, _ = play("sit", speed=speed)
        assert 0.5 < motion.positions[-1, 0, 1] < 0.7 < 0.9 < motion.positions[0, 0, 1]
    rng = np.random.default_rng(0)
    for _ in range(300):
        actions = [segment.action for segment in draw_segments(rng)]
        assert "sit" not in actions[:-1]
        assert all(before != after for before, after in itertools.pairwise(actions))  # none follows itself


def test_each_caption_phrase_names_one_set_of_parameters():
    """Read back, a phrase tells its parameters: no two parameter sets share a phrase."""
    for action, domains in PARAMETERS.items():
        owner = {}
        for values in itertools.product(*domains.values()):
            params = dict(zip(domains, values, strict=True))
            rng = np.random.default_rng(0)
            for _ in range(40):
                text = phrase(Segment(action, params), rng)
                assert owner.setdefault(text, values) == values, (action, text)


def test_captions_tell_the_actions_in_order(clips):
    for item in clips:
        words = {"walk": "walks", "run": ("runs", "jogs"), "jump": ("jump",), "wave": "waves", "squat": "squat",
                 "kick": "kick", "turn": ("turns", "turn"), "sit": "sits"}  # fmt: skip
        position = 0
        for segment in item["segments"]:
            found = min(
                (
                    i
                    for i in (item["caption"].find(w, position) for w in np.atleast_1d(words[segment["action"]]))
                    if i >= 0
                ),
                default=-1,
            )
            assert found >= 0, (item["caption"], segment)
            position = found + 1


def test_held_out_pairs_are_left_out_of_captioned_clips_and_can_be_composed():
    def pairs(item):
        return {(segment["action"], value) for segment in item["segments"] for value in segment.values()}

    captioned = Motions(seed=1, captioned=True)
    held_out = Motions(seed=1, only_held_out_pairs=True)
    for index in range(150):
        assert not pairs(captioned[index]) & HELD_OUT_PAIRS
        assert pairs(held_out[index]) & HELD_OUT_PAIRS
    for action, value in HELD_OUT_PAIRS:  # each held-out value is seen with another action
        assert any(value in values for other, d in PARAMETERS.items() if other != action for values in d.values())
    with pytest.raises(ValueError, match="held-out"):
        Motions(captioned=True, only_held_out_pairs=True)


def test_bad_features_are_refused():
    with pytest.raises(ValueError, match=r"\(T, 263\)"):
        feature_positions(np.zeros((10, 262)))
    with pytest.raises(ValueError, match="positions must be"):
        motion_features(np.zeros((1, 22, 3)), np.zeros((1, 22, 3, 3)), np.zeros(1), np.zeros(4))


def test_the_animation_draws_each_clip_s_bones_frame_by_frame(clips):
    """Every frame of the animation holds each clip's bones as the picture plane sees them, the body centred; a
    shorter clip holds its last pose; the left limbs are drawn in the left colour."""
    from llamagen.data.motion.drawing import COLOURS, SIDE, TRACES_PER_PANEL, VIEW_FORWARD, VIEW_LEFT, motion_animation

    long, short = clips[0]["positions"].numpy(), clips[1]["positions"].numpy()[:40]
    figure = motion_animation({"long": long, "short": short})
    assert len(figure.frames) == len(long) > len(short)
    assert len(figure.frames[0].data) == 2 * TRACES_PER_PANEL
    left_knee, left_hip = JOINT["left_knee"], JOINT["left_hip"]
    assert SIDE[left_knee] == "left"
    for t in (0, 17, len(long) - 1):
        for panel, positions in enumerate((long, short)):
            pose = positions[min(t, len(positions) - 1)]
            screen_x = VIEW_FORWARD * pose[:, 2] + VIEW_LEFT * pose[:, 0]
            left = figure.frames[t].data[panel * TRACES_PER_PANEL]  # the panel's first trace: the left limbs
            assert left.line.color == "rgb({},{},{})".format(*COLOURS["left"])
            xs, ys = list(left.x), list(left.y)
            # The thigh: a segment from the hip to the knee, x relative to the pelvis, y the height.
            knee = (screen_x[left_knee] - screen_x[0], pose[left_knee, 1])
            start = next(i for i in range(0, len(xs), 3) if (xs[i + 1], ys[i + 1]) == pytest.approx(knee))
            assert (xs[start], ys[start]) == pytest.approx((screen_x[left_hip] - screen_x[0], pose[left_hip, 1]))
    assert list(figure.layout.sliders[0].steps[-1].args[0]) == [str(len(long) - 1)]
