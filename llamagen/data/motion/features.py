"""Per-frame motion features in the layout HumanML3D defines and T2M-GPT trains on (263 numbers for 22 joints).

Everything but the root's height is seen from the body's own heading at that frame, so a feature vector does
not change when the whole clip is turned or moved. A clip of T frames gives T - 1 feature vectors, since the
velocities of frame t look at frame t + 1. Lengths are in metres; velocities are per frame (1/20 s).

| slice     | size | what                                                                        |
|-----------|------|-----------------------------------------------------------------------------|
| 0         | 1    | turn of the heading to the next frame (radians, positive to the left)       |
| 1:3       | 2    | the root's move to the next frame, to its left (x) and forward (z)          |
| 3         | 1    | the root's height                                                           |
| 4:67      | 63   | joints 1-21 from the root: x and z from the root, y from the ground         |
| 67:193    | 126  | joints 1-21's rotations relative to their parents, 6-D (two matrix columns) |
| 193:259   | 66   | all 22 joints' moves to the next frame                                      |
| 259:263   | 4    | foot contacts: left ankle, left foot, right ankle, right foot (0 or 1)      |
"""

from __future__ import annotations

import numpy as np

from llamagen.data.motion.skeleton import FOOT_JOINTS, JOINTS, yaw_rotations

J = len(JOINTS)
FEATURE_SLICES = {
    "heading_velocity": slice(0, 1),
    "root_velocity": slice(1, 3),
    "root_height": slice(3, 4),
    "positions": slice(4, 4 + (J - 1) * 3),
    "rotations": slice(4 + (J - 1) * 3, 4 + (J - 1) * 9),
    "velocities": slice(4 + (J - 1) * 9, 4 + (J - 1) * 9 + J * 3),
    "contacts": slice(4 + (J - 1) * 9 + J * 3, 8 + (J - 1) * 9 + J * 3),
}
FEATURES = FEATURE_SLICES["contacts"].stop  # 263
# Each frame's turn and the root's move: the features a clip's heading and path are summed from, so that a small
# error in them grows along the clip.
PATH_FEATURES = slice(FEATURE_SLICES["heading_velocity"].start, FEATURE_SLICES["root_velocity"].stop)
# A foot joint is in contact when it is within 5 cm of its standing height and moves under 0.4 m/s
# (HumanML3D thresholds speed alone; the height test keeps a foot that hovers still from counting).
CONTACT_HEIGHT, CONTACT_SPEED = 0.05, 0.02


def _to_heading(vectors: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Vectors (T, ..., 3) seen from the heading at each frame."""
    inverse = np.swapaxes(yaw_rotations(heading), -1, -2)
    return np.einsum("tij,t...j->t...i", inverse, vectors)


def motion_features(positions: np.ndarray, rotations: np.ndarray, heading: np.ndarray,
                    sole_heights: np.ndarray) -> np.ndarray:  # fmt: skip
    """Features (T - 1, 263) of a clip: positions (T, 22, 3), local rotations (T, 22, 3, 3), heading (T,),
    and the standing heights (4,) of the foot joints, in FOOT_JOINTS order."""
    if positions.shape[1:] != (J, 3) or len(positions) < 2:
        raise ValueError(f"positions must be (T >= 2, {J}, 3), got {positions.shape}")
    now, heading_now = positions[:-1], heading[:-1]
    moves = _to_heading(positions[1:] - now, heading_now)
    from_root = now[:, 1:] - now[:, :1] * np.array([1.0, 0.0, 1.0])  # height stays measured from the ground
    feet = positions[:-1, FOOT_JOINTS]
    contacts = (feet[..., 1] - sole_heights < CONTACT_HEIGHT) & (
        np.linalg.norm(moves[:, FOOT_JOINTS], axis=-1) < CONTACT_SPEED
    )
    parts = [
        (heading[1:] - heading_now)[:, None],
        moves[:, 0, [0, 2]],
        now[:, 0, 1:2],
        _to_heading(from_root, heading_now).reshape(len(now), -1),
        np.concatenate([rotations[:-1, 1:, :, 0], rotations[:-1, 1:, :, 1]], axis=-1).reshape(len(now), -1),
        moves.reshape(len(now), -1),
        contacts.astype(np.float64),
    ]
    return np.concatenate(parts, axis=1)


def feature_positions(features: np.ndarray) -> np.ndarray:
    """Joint positions (T, 22, 3) from features (T, 263), starting at the origin facing +z: the heading and the
    root's path integrated from their velocities, the joints placed around the root (as T2M-GPT recovers
    motion from the root and the joint positions, not from the rotations)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != FEATURES:
        raise ValueError(f"features must be (T, {FEATURES}), got {features.shape}")
    frames = len(features)
    heading = np.concatenate([[0.0], np.cumsum(features[:-1, 0])])
    moves = np.zeros((frames, 3))
    moves[:, [0, 2]] = features[:, FEATURE_SLICES["root_velocity"]]
    world_moves = np.einsum("tij,tj->ti", yaw_rotations(heading), moves)
    root = np.concatenate([np.zeros((1, 3)), np.cumsum(world_moves[:-1], axis=0)])
    root[:, 1] = features[:, 3]
    joints = features[:, FEATURE_SLICES["positions"]].reshape(frames, J - 1, 3)
    joints = np.einsum("tij,tkj->tki", yaw_rotations(heading), joints) + root[:, None] * np.array([1.0, 0.0, 1.0])
    return np.concatenate([root[:, None], joints], axis=1)
