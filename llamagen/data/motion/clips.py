"""Clips: a sequence of one to three actions, blended into one another, played by a body.

`animate` turns the actions' channels into joint positions: forward kinematics from the joint angles, the
body lowered until its lowest foot touches the ground (raised again by the channels' flight), and moved
across the ground so that every foot on it stays put. A clip starts at the origin, facing +z.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from llamagen.data.motion.actions import ACTIONS, FPS, PARAMETERS, PERFORM, Channels
from llamagen.data.motion.skeleton import FOOT_JOINTS, Body, euler_rotations, forward_kinematics, yaw_rotations

MIN_FRAMES, MAX_FRAMES = 64, 196  # 3.2 to 9.8 seconds, HumanML3D's range of clip lengths
BLEND_FRAMES = 8  # one action eases into the next over 0.4 s
# A foot joint within this height (times the body's scale) of where it stands at rest is on the ground.
GROUND_TOLERANCE = 0.01


@dataclass(frozen=True)
class Segment:
    """One action of a clip with its parameters, and the frames it occupies, [start, start + frames)."""

    action: str
    params: dict
    start: int = 0
    frames: int = 0

    def pairs(self) -> set[tuple[str, object]]:
        """(action, parameter value) pairs, the units composition is tested on."""
        return {(self.action, value) for value in self.params.values()}


@dataclass
class Motion:
    """A played clip: positions (T, 22, 3) in metres; rotations (T, 22, 3, 3), each joint's relative to its
    parent (the pelvis's: its tilt under the heading); heading (T,), the yaw in radians."""

    positions: np.ndarray
    rotations: np.ndarray
    heading: np.ndarray


def draw_segments(rng: np.random.Generator) -> list[Segment]:
    """One to three actions, each with random parameters. No action follows itself (two squats in a row would
    read as one longer squat, to a judge as to a viewer), and sitting down ends a clip (no action stands up)."""
    segments = []
    for _ in range(int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))):
        if segments and segments[-1].action == "sit":
            break
        choices = [action for action in ACTIONS if not segments or action != segments[-1].action]
        action = choices[rng.integers(len(choices))]
        params = {name: values[rng.integers(len(values))] for name, values in PARAMETERS[action].items()}
        segments.append(Segment(action, params))
    return segments


def perform(segments: list[Segment], body: Body, rng: np.random.Generator) -> tuple[list[Segment], Channels]:
    """The segments' channels, end to end and blended at the joins; segments that would take the clip past
    MAX_FRAMES are left out, and a clip shorter than MIN_FRAMES ends holding its last pose."""
    played, parts, total = [], [], 0
    for segment in segments:
        channels = PERFORM[segment.action](segment.params, body, rng)
        if played and total + len(channels) > MAX_FRAMES:
            break
        played.append(Segment(segment.action, segment.params, total, len(channels)))
        parts.append(channels)
        total += len(channels)
    if total < MIN_FRAMES:
        parts.append(parts[-1].held(MIN_FRAMES - total))
    return played, _blend(parts)


def _blend(parts: list[Channels]) -> Channels:
    """Concatenate, easing each join over BLEND_FRAMES: across a join, a mix of the action before (held at its
    last frame) and the one after (held at its first), the weight moving from one to the other."""
    fields = ("angles", "yaw_rate", "flight_velocity", "airborne")
    joined = {name: np.concatenate([getattr(part, name) for part in parts]) for name in fields}
    start = 0
    for before, after in itertools.pairwise(parts):
        join = start + len(before)
        lo, hi = max(start, join - BLEND_FRAMES // 2), min(join + len(after), join + BLEND_FRAMES // 2)
        weight = (np.arange(lo, hi) - lo + 0.5) / (hi - lo)
        for name in fields:
            held_before = np.concatenate(
                [getattr(before, name)[lo - start :], np.repeat(getattr(before, name)[-1:], hi - join, 0)]
            )
            held_after = np.concatenate(
                [np.repeat(getattr(after, name)[:1], join - lo, 0), getattr(after, name)[: hi - join]]
            )
            w = weight.reshape(-1, *([1] * (held_before.ndim - 1)))
            joined[name][lo:hi] = (1 - w) * held_before + w * held_after
        start = join
    return Channels(**joined)


def animate(channels: Channels, body: Body) -> Motion:
    """Play channels on a body: see the module's docstring."""
    frames = len(channels)
    heading = np.concatenate([[0.0], np.cumsum(channels.yaw_rate[:-1]) / FPS])
    rotations = euler_rotations(channels.angles)
    rotations[:, 0] = yaw_rotations(heading) @ rotations[:, 0]
    relative = forward_kinematics(body.offsets(), rotations, np.zeros((frames, 3)))
    soles = body.sole_heights()
    feet = relative[:, FOOT_JOINTS, 1] - soles  # how far each foot joint is above where it stands at rest
    height = -feet.min(axis=1) + channels.airborne
    grounded = feet + height[:, None] < GROUND_TOLERANCE * body.scale
    # Frame to frame, the body moves by minus what its planted feet moved (their mean), or in flight as the
    # channels say.
    planted = grounded[1:] & grounded[:-1]
    moved = relative[1:, FOOT_JOINTS] - relative[:-1, FOOT_JOINTS]
    count = planted.sum(axis=1, keepdims=True)
    standing_step = -(moved * planted[..., None]).sum(axis=1) / np.maximum(count, 1)
    velocity = np.stack([channels.flight_velocity[:-1, 0], np.zeros(frames - 1), channels.flight_velocity[:-1, 1]], 1)
    flying_step = np.einsum("tij,tj->ti", yaw_rotations(heading[:-1]), velocity) / FPS
    step = np.where(count > 0, standing_step, flying_step)
    root = np.zeros((frames, 3))
    root[1:, [0, 2]] = np.cumsum(step[:, [0, 2]], axis=0)
    root[:, 1] = height
    return Motion(relative + root[:, None], rotations, heading)
