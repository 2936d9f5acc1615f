"""The skeleton: 22 joints in SMPL's order (the order HumanML3D and T2M-GPT use), a kinematic tree, bone lengths
of an adult about 1.75 m tall, and forward kinematics.

Axes: y up, the body faces +z at rest, its left is +x; lengths in metres. A joint's local rotation turns the
bones below it, and is built from Euler angles as R = Ry(twist) Rz(abduction) Rx(flexion): with a limb hanging
down, a negative x angle swings it forward, a positive z angle swings it out to the left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JOINTS = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)  # fmt: skip
JOINT = {name: index for index, name in enumerate(JOINTS)}
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
FOOT_JOINTS = (JOINT["left_ankle"], JOINT["left_foot"], JOINT["right_ankle"], JOINT["right_foot"])

# Each joint's offset from its parent at rest (standing, arms hanging a little away from the body), for a
# body 1.75 m tall; the root is the pelvis. Left-side offsets; the right side mirrors them in x.
_LEFT_OFFSETS = {
    "left_hip": (0.09, -0.07, 0.0),
    "spine1": (0.0, 0.11, -0.01),
    "left_knee": (0.0, -0.39, 0.0),
    "spine2": (0.0, 0.13, 0.0),
    "left_ankle": (0.0, -0.41, 0.0),
    "spine3": (0.0, 0.06, 0.02),
    "left_foot": (0.0, -0.06, 0.13),  # the ball of the foot, ahead of and below the ankle
    "neck": (0.0, 0.21, -0.02),
    "left_collar": (0.07, 0.12, -0.01),
    "head": (0.0, 0.10, 0.04),
    "left_shoulder": (0.12, 0.02, 0.0),
    "left_elbow": (0.0, -0.27, 0.0),
    "left_wrist": (0.0, -0.25, 0.0),
}
# Height of the ball of the foot above the ground at rest: the joint sits inside the foot, not under it.
TOE_CLEARANCE = 0.03

LEG_JOINTS = frozenset(JOINT[f"{side}_{part}"] for side in ("left", "right") for part in ("knee", "ankle", "foot"))
ARM_JOINTS = frozenset(JOINT[f"{side}_{part}"] for side in ("left", "right") for part in ("elbow", "wrist"))


def _rest_offsets() -> np.ndarray:
    offsets = np.zeros((len(JOINTS), 3))
    for name, offset in _LEFT_OFFSETS.items():
        offsets[JOINT[name]] = offset
        if name.startswith("left_"):
            offsets[JOINT["right_" + name[5:]]] = (-offset[0], offset[1], offset[2])
    return offsets


REST_OFFSETS = _rest_offsets()


@dataclass(frozen=True)
class Body:
    """Proportions: an overall scale (1 = 1.75 m tall), and the legs' and arms' lengths relative to it."""

    scale: float = 1.0
    legs: float = 1.0
    arms: float = 1.0

    def offsets(self) -> np.ndarray:
        """Bone offsets (22, 3) for this body."""
        offsets = REST_OFFSETS * self.scale
        for joint in LEG_JOINTS:
            offsets[joint] *= self.legs
        for joint in ARM_JOINTS:
            offsets[joint] *= self.arms
        return offsets

    @property
    def leg_length(self) -> float:
        """Hip to ankle, the pendulum a step swings."""
        offsets = self.offsets()
        return float(-(offsets[JOINT["left_knee"], 1] + offsets[JOINT["left_ankle"], 1]))

    def sole_heights(self) -> np.ndarray:
        """Heights above the ground, standing at rest, of the foot joints in FOOT_JOINTS order."""
        ankle_above_toe = -self.offsets()[JOINT["left_foot"], 1]
        return np.array([ankle_above_toe, 0.0, ankle_above_toe, 0.0]) + TOE_CLEARANCE * self.scale


def random_body(rng: np.random.Generator) -> Body:
    """Heights from about 1.54 to 1.96 m; legs and arms each up to 5% longer or shorter than the average."""
    return Body(scale=float(rng.uniform(0.88, 1.12)), legs=float(rng.uniform(0.95, 1.05)),
                arms=float(rng.uniform(0.95, 1.05)))  # fmt: skip


def euler_rotations(angles: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from angles (..., 3) = (x, y, z) in radians: R = Ry(y) Rz(z) Rx(x),
    multiplied out."""
    (cx, cy, cz), (sx, sy, sz) = np.moveaxis(np.cos(angles), -1, 0), np.moveaxis(np.sin(angles), -1, 0)
    rows = [
        [cy * cz, sy * sx - cy * sz * cx, cy * sz * sx + sy * cx],
        [sz, cz * cx, -cz * sx],
        [-sy * cz, sy * sz * cx + cy * sx, cy * cx - sy * sz * sx],
    ]
    matrices = np.empty((*angles.shape[:-1], 3, 3))
    for i, row in enumerate(rows):
        for j, entry in enumerate(row):
            matrices[..., i, j] = entry
    return matrices


def yaw_rotations(yaw: np.ndarray) -> np.ndarray:
    """Rotations (..., 3, 3) about the vertical axis; a positive yaw turns the body to its left."""
    angles = np.zeros((*np.shape(yaw), 3))
    angles[..., 1] = yaw
    return euler_rotations(angles)


def forward_kinematics(offsets: np.ndarray, local: np.ndarray, root_position: np.ndarray) -> np.ndarray:
    """Joint positions (T, 22, 3) from bone offsets (22, 3), local rotations (T, 22, 3, 3) (the root's is its
    global rotation) and the root's positions (T, 3)."""
    positions = np.empty((len(local), len(JOINTS), 3))
    rotations = np.empty_like(local)
    positions[:, 0], rotations[:, 0] = root_position, local[:, 0]
    for joint in range(1, len(JOINTS)):
        parent = PARENTS[joint]
        positions[:, joint] = positions[:, parent] + rotations[:, parent] @ offsets[joint]
        rotations[:, joint] = rotations[:, parent] @ local[:, joint]
    return positions
