"""Procedural actions: each turns its parameters into channels of motion, frame by frame at FPS.

An action sets joint angles (see `skeleton` for the axes and signs), the heading's rate of turn, and, for
the moments when no foot is on the ground, the body's speed and height of flight. Where a foot is on the
ground, `animate` moves the body so that the foot stays where it is: walking speed comes out of the legs'
swing, with no sliding feet. Timing wanders by a few percent within a clip (`_phase`), as a person's does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llamagen.data.motion.skeleton import JOINT, JOINTS, Body

FPS = 20
GRAVITY = 9.81

# The values each action's parameters take. `size` is an action's amplitude: a jump's height, a kick's,
# a squat's depth, a wave's sweep; `count` is how many times it is done.
PARAMETERS: dict[str, dict[str, tuple]] = {
    "walk": {"speed": ("slow", "normal", "fast"), "direction": ("forward", "backward")},
    "run": {"speed": ("slow", "fast")},
    "jump": {"size": ("small", "large"), "direction": ("in place", "forward"), "count": (1, 2, 3)},
    "wave": {"side": ("left", "right", "both"), "size": ("small", "large")},
    "squat": {"size": ("small", "large"), "speed": ("slow", "normal", "fast"), "count": (1, 2, 3)},
    "kick": {"side": ("left", "right"), "size": ("small", "large")},
    "turn": {"side": ("left", "right"), "angle": (90, 180)},
    "sit": {"speed": ("slow", "normal", "fast")},
}
ACTIONS = tuple(PARAMETERS)

REST_ARM_ABDUCTION = 0.12  # radians: the arms hang a little away from the body
REST_ELBOW = 0.15


@dataclass
class Channels:
    """One action's motion: angles (T, 22, 3) (the pelvis's entry tilts the whole body under its heading);
    yaw_rate (T,) in rad/s; flight_velocity (T, 2), the body's speed to its left and forward in m/s, and
    airborne (T,), its height above the ground in m, both used only while no foot is down."""

    angles: np.ndarray
    yaw_rate: np.ndarray
    flight_velocity: np.ndarray
    airborne: np.ndarray

    @classmethod
    def standing(cls, frames: int) -> Channels:
        channels = cls(np.zeros((frames, len(JOINTS), 3)), np.zeros(frames), np.zeros((frames, 2)), np.zeros(frames))
        for side in ("left", "right"):
            set_arm(channels.angles, side, forward=0.0, out=REST_ARM_ABDUCTION, elbow=REST_ELBOW)
        return channels

    def held(self, frames: int) -> Channels:
        """The last pose, kept still for `frames` frames."""
        return Channels(np.repeat(self.angles[-1:], frames, 0), np.zeros(frames), np.zeros((frames, 2)),
                        np.zeros(frames))  # fmt: skip

    def __len__(self) -> int:
        return len(self.yaw_rate)


def set_leg(angles: np.ndarray, side: str, hip, knee, ankle=None) -> None:
    """Flex a leg: hip > 0 swings the thigh forward, knee > 0 bends the shin back; by default the ankle keeps
    the foot level (its pitch the sum of the three: -hip + knee + ankle = 0)."""
    angles[:, JOINT[f"{side}_hip"], 0] = -hip
    angles[:, JOINT[f"{side}_knee"], 0] = knee
    angles[:, JOINT[f"{side}_ankle"], 0] = np.asarray(hip) - knee if ankle is None else ankle


def set_arm(angles: np.ndarray, side: str, forward, out, elbow, elbow_out=0.0) -> None:
    """Move an arm: forward > 0 raises it in front, out > 0 away from the body to its side, elbow > 0 bends the
    forearm forward, elbow_out > 0 turns the forearm further out in the plane of the raised arm."""
    sign = 1.0 if side == "left" else -1.0
    angles[:, JOINT[f"{side}_shoulder"], 0] = -np.asarray(forward)
    angles[:, JOINT[f"{side}_shoulder"], 2] = sign * np.asarray(out)
    angles[:, JOINT[f"{side}_elbow"], 0] = -np.asarray(elbow)
    angles[:, JOINT[f"{side}_elbow"], 2] = sign * np.asarray(elbow_out)


def keyframes(t: np.ndarray, times, values) -> np.ndarray:
    """Eased (half-cosine) interpolation through (times, values), held beyond the ends; values (K,) or (K, C)."""
    times, values = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    segment = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    u = np.clip((t - times[segment]) / (times[segment + 1] - times[segment]), 0.0, 1.0)
    eased = 0.5 - 0.5 * np.cos(np.pi * u)
    if values.ndim > 1:
        eased = eased[:, None]
    return values[segment] + (values[segment + 1] - values[segment]) * eased


def _seconds(frames: int) -> np.ndarray:
    return np.arange(frames) / FPS


def _frames(seconds: float) -> int:
    return max(2, round(seconds * FPS))


def _phase(frames: int, frequency: float, rng: np.random.Generator) -> np.ndarray:
    """Cycles completed at each frame, the rate wandering by up to about 12% around `frequency`."""
    t = _seconds(frames)
    amplitude, rate, offset = rng.uniform(0.02, 0.06, 2), rng.uniform(0.15, 0.5, 2), rng.uniform(0, 2 * np.pi, 2)
    wander = (amplitude / (2 * np.pi * rate) * np.sin(2 * np.pi * rate * t[:, None] + offset)).sum(axis=1)
    return frequency * (t + wander) + rng.uniform(0, 1)


def _stride(phase: np.ndarray, stance: float, amplitude: float, knee_stance: float, knee_swing: float):
    """A leg's hip and knee angles over its gait cycle: during stance (the first `stance` of the cycle) the
    thigh sweeps back at a constant rate, so the planted foot moves steadily under the body; in swing it
    returns forward with the knee bent to clear the ground."""
    u = np.mod(phase, 1.0)
    planted = u < stance
    s, w = u / stance, (u - stance) / (1 - stance)
    hip = np.where(planted, amplitude * (1 - 2 * s), -amplitude * np.cos(np.pi * np.clip(w, 0, 1)))
    knee = np.where(planted, knee_stance * np.sin(np.pi * s), knee_swing * np.sin(np.pi * np.clip(w, 0, 1)))
    return hip, knee


def _gait(frames, frequency, stance, amplitude, knee_stance, knee_swing, arm_swing, elbow, rng, backward=False):
    channels = Channels.standing(frames)
    phase = _phase(frames, frequency, rng)
    if backward:  # the cycle played in reverse: the planted foot moves forward under the body
        phase = -phase
    for side, offset in (("left", 0.0), ("right", 0.5)):
        hip, knee = _stride(phase + offset, stance, amplitude, knee_stance, knee_swing)
        set_leg(channels.angles, side, hip, knee)
        other = "right" if side == "left" else "left"
        set_arm(channels.angles, other, forward=arm_swing * hip, out=REST_ARM_ABDUCTION, elbow=elbow)
    return channels, phase


# Walking: (steps a minute, hip amplitude in radians); a gait cycle is two steps.
WALK = {"slow": (88, 0.45), "normal": (106, 0.58), "fast": (128, 0.68)}
RUN = {"slow": (150, 0.45, 1.4), "fast": (172, 0.58, 1.8)}  # and the knee's bend in swing
WALK_STANCE, RUN_STANCE = 0.62, 0.38  # the share of a cycle a foot is planted


def walk(params: dict, body: Body, rng: np.random.Generator) -> Channels:
    cadence, amplitude = WALK[params["speed"]]
    backward = params["direction"] == "backward"
    if backward:  # people step back shorter and slower
        cadence, amplitude = cadence * 0.85, amplitude * 0.7
    frames = _frames(rng.uniform(3.0, 6.0))
    channels, _ = _gait(frames, cadence / 120, WALK_STANCE, amplitude, 0.15, 1.0, 0.6, 0.25, rng, backward)
    return channels


def run(params: dict, body: Body, rng: np.random.Generator) -> Channels:
    cadence, amplitude, knee_swing = RUN[params["speed"]]
    frames = _frames(rng.uniform(2.5, 5.0))
    channels, phase = _gait(frames, cadence / 120, RUN_STANCE, amplitude, 0.5, knee_swing, 0.9, 1.5, rng)
    channels.angles[:, JOINT["spine1"], 0] = 0.12  # leaning into the run
    # Both feet are off the ground between one foot's push-off and the other's landing; across that flight
    # the body keeps the speed the planted foot gave it and rises and falls a few centimetres.
    speed = 2 * body.leg_length * np.sin(amplitude) * (cadence / 120) / RUN_STANCE
    half = np.mod(phase, 0.5)
    flight = half >= RUN_STANCE
    progress = np.clip((half - RUN_STANCE) / (0.5 - RUN_STANCE), 0, 1)
    channels.airborne = np.where(flight, 0.05 * body.scale * np.sin(np.pi * progress), 0.0)
    channels.flight_velocity[:, 1] = speed
    return channels


def jump(params: dict, body: Body, rng: np.random.Generator) -> Channels:
    height = body.scale * (rng.uniform(0.12, 0.18) if params["size"] == "small" else rng.uniform(0.35, 0.45))
    distance = rng.uniform(0.5, 0.9) * body.scale if params["direction"] == "forward" else 0.0
    bend = 0.9 if params["size"] == "small" else 1.4
    flight = 2 * np.sqrt(2 * height / GRAVITY)
    crouch, takeoff = 0.4, 0.65
    one = takeoff + flight + 0.6  # crouch, push off, fly, land and absorb, stand up
    frames = _frames(0.2 + params["count"] * one + 0.2)
    channels = Channels.standing(frames)
    t = _seconds(frames) - 0.2
    local = np.mod(t, one)
    # (time in a jump, knee, hip, arms forward): arms swing back in the crouch and up through the take-off
    keys = [(0, 0, 0, 0), (crouch, bend, 0.8 * bend, -0.6), (takeoff, 0.1, 0.05, 1.6),
            (takeoff + flight / 2, 0.35, 0.35, 1.4), (takeoff + flight, 0.15, 0.1, 1.0),
            (takeoff + flight + 0.2, 0.8 * bend, 0.6 * bend, 0.4), (one, 0, 0, 0)]  # fmt: skip
    knee, hip, arms = keyframes(local, [k[0] for k in keys], [k[1:] for k in keys]).T
    active = (t >= 0) & (t < params["count"] * one)
    knee, hip, arms = (np.where(active, channel, 0.0) for channel in (knee, hip, arms))
    for side in ("left", "right"):
        set_leg(channels.angles, side, hip, knee)
        set_arm(channels.angles, side, forward=arms, out=REST_ARM_ABDUCTION, elbow=REST_ELBOW + 0.2 * knee)
    airborne = active & (local > takeoff) & (local < takeoff + flight)
    s = (local - takeoff) / flight
    channels.airborne = np.where(airborne, 4 * height * s * (1 - s), 0.0)
    channels.flight_velocity[:, 1] = distance / flight
    return channels


def wave(params: dict, body: Body, rng: np.random.Generator) -> Channels:
    frequency, waves = rng.uniform(1.6, 2.4), int(rng.integers(3, 7))
    sweep = 0.25 if params["size"] == "small" else 0.55
    raised = waves / frequency
    frames = _frames(0.5 + raised + 0.5)
    channels = Channels.standing(frames)
    t = _seconds(frames)
    up = keyframes(t, [0, 0.5, 0.5 + raised, 1.0 + raised], [0, 1, 1, 0])
    swing = np.sin(2 * np.pi * _phase(frames, frequency, rng))
    sides = ("left", "right") if params["side"] == "both" else (params["side"],)
    for side in sides:  # the upper arm out and up, the forearm up, swinging side to side from the elbow
        out = REST_ARM_ABDUCTION + up * (1.9 - REST_ARM_ABDUCTION)
        set_arm(channels.angles, side, forward=0.2 * up, out=out, elbow=REST_ELBOW * (1 - up),
                elbow_out=up * (0.9 + sweep * swing))  # fmt: skip
    return channels


SQUAT = {"slow": 2.8, "normal": 2.0, "fast": 1.3}  # seconds a squat
SIT = {"slow": 2.2, "normal": 1.5, "fast": 0.9}  # seconds to sit down


def squat(params: dict, body: Body, rng: np.random.Generator) -> Channels:
    knee_bottom, hip_bottom = (1.0, 0.7) if params["size"] == "small" else (2.2, 1.6)
    one = SQUAT[params["speed"]] * rng.uniform(0.9, 1.1)
    frames = _frames(params["count"] * one + 0.3)
    channels = Channels.standing(frames)
    t = _seconds(frames)
    depth = keyframes(np.mod(t, one), [0, 0.45 * one, 0.55 * one, one], [0, 1, 1, 0])
    depth = np.where(t < params["count"] * one, depth, 0.0)
    set_leg(channels.angles, "left", hip_bottom * depth, knee_bottom * depth)
    set_leg(channels.angles, "right", hip_bottom * depth, knee_bottom * depth)
    channels.angles[:, JOINT["spine1"], 0] = 0.35 * hip_bottom * depth  # the chest forward, for balance
    for side in ("left", "right"):
        set_arm(channels.angles, side, forward=1.4 * depth, out=REST_ARM_ABDUCTION, elbow=REST_ELBOW)
    return channels


def kick(params: dict, body: Body, rng: np.random.Generator) -> Channels:
    peak = 0.75 if params["size"] == "small" else 1.35
    one = rng.uniform(1.2, 1.5)
    frames = _frames(0.3 + one + 0.4)
    channels = Channels.standing(frames)
    t = _seconds(frames) - 0.3
    # (time, hip, knee): draw the leg back with the knee bent, snap it forward and straight, fold it, put it down
    keys = [(0, 0, 0), (0.3 * one, -0.25, 1.2), (0.5 * one, peak, 0.1), (0.75 * one, 0.5 * peak, 1.0), (one, 0, 0)]
    hip, knee = keyframes(t, [k[0] for k in keys], [k[1:] for k in keys]).T
    standing = 1 - np.abs(2 * keyframes(t, [0, one], [0, 1]) - 1)  # 0 before and after the kick, 1 at its height
    kicking, other = params["side"], "right" if params["side"] == "left" else "left"
    set_leg(channels.angles, kicking, hip, knee, ankle=0.3 * standing)  # the toes pointed
    set_leg(channels.angles, other, 0.1 * standing, 0.15 * standing)
    set_arm(channels.angles, other, forward=0.6 * standing, out=REST_ARM_ABDUCTION + 0.3 * standing, elbow=0.4)
    set_arm(channels.angles, kicking, forward=0.0, out=REST_ARM_ABDUCTION + 0.35 * standing, elbow=0.3)
    return channels


def turn(params: dict, body: Body, rng: np.random.Generator) -> Channels:
    angle = np.radians(params["angle"]) * (1 if params["side"] == "left" else -1)
    duration = rng.uniform(1.2, 1.8) if params["angle"] == 90 else rng.uniform(1.8, 2.6)
    frames = _frames(duration)
    channels = Channels.standing(frames)
    t = _seconds(frames)
    channels.yaw_rate = angle / duration * (1 - np.cos(2 * np.pi * t / duration))  # integrates to `angle`
    # stepping on the spot: each foot lifts in turn while the body turns, the planted one swivelling
    phase = _phase(frames, 0.9, rng)
    envelope = np.sin(np.pi * t / duration)
    for side, offset in (("left", 0.0), ("right", 0.5)):
        lift = 0.18 * envelope * np.clip(np.sin(2 * np.pi * (phase + offset)), 0, None)
        set_leg(channels.angles, side, lift, 2.2 * lift)
    return channels


def sit(params: dict, body: Body, rng: np.random.Generator) -> Channels:
    down = SIT[params["speed"]] * rng.uniform(0.9, 1.1)
    frames = _frames(down + rng.uniform(1.5, 3.0))
    channels = Channels.standing(frames)
    t = _seconds(frames)
    seated = keyframes(t, [0, down], [0, 1])
    lean = keyframes(t, [0, 0.6 * down, down], [0, 0.45, 0.1])  # the chest forward while lowering, then upright
    set_leg(channels.angles, "left", 1.5 * seated, 1.5 * seated)
    set_leg(channels.angles, "right", 1.5 * seated, 1.5 * seated)
    channels.angles[:, JOINT["spine1"], 0] = lean
    for side in ("left", "right"):  # hands come to rest on the thighs
        set_arm(channels.angles, side, forward=0.5 * seated, out=REST_ARM_ABDUCTION, elbow=REST_ELBOW + 0.6 * seated)
    return channels


PERFORM: dict[str, Callable[[dict, Body, np.random.Generator], Channels]] = {
    "walk": walk, "run": run, "jump": jump, "wave": wave, "squat": squat, "kick": kick, "turn": turn, "sit": sit,
}  # fmt: skip
