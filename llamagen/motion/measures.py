"""How well a motion tokenizer keeps a clip: joint position and velocity errors, and how it uses its codes.

Errors are measured on joints, not features: both the clip's features and their reconstruction are turned
into positions (`feature_positions`, the root's path integrated as T2M-GPT does), so an error in the root's
velocity shows as the drift it causes. MPJPE is the mean over frames and joints of the distance between
true and reconstructed joints, in millimetres; the velocity error the same for the joints' velocities, in
millimetres a second. Two parts of it are reported apart, since a small error in each frame's turn or step
grows along a clip into tens of centimetres of path and can hide how well the body itself is kept: the pose MPJPE (the
reconstruction's joints placed on the true path and heading) and the root's path error (the distance between
the true and the reconstructed root, frame by frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from llamagen.data.motion import FPS, Motions, feature_positions
from llamagen.data.motion.features import PATH_FEATURES
from llamagen.metrics import code_perplexity
from llamagen.motion.tokenizer import MotionVQ

HELD_OUT_SEED = 1_000_003  # the evaluation clips' seed: no training run draws from it
HELD_OUT_CLIPS = 256


def held_out_clips(count: int = HELD_OUT_CLIPS) -> list[torch.Tensor]:
    """The evaluation clips' features, (T - 1, 263) each."""
    clips = Motions(seed=HELD_OUT_SEED)
    return [clips[index]["features"] for index in range(count)]


class JointErrors(NamedTuple):
    mpjpe_mm: float
    velocity_error_mm_s: float
    pose_mpjpe_mm: float  # the reconstructed body on the true path and heading
    root_error_mm: float  # the root's path alone


def joint_errors(true_features: np.ndarray, reconstructed: np.ndarray) -> JointErrors:
    """The errors of one clip's reconstruction, in mm and mm/s (module docstring)."""
    true, again = feature_positions(true_features), feature_positions(reconstructed)
    on_true_path = np.array(reconstructed, dtype=np.float64, copy=True)
    on_true_path[:, PATH_FEATURES] = true_features[:, PATH_FEATURES]
    posed = feature_positions(on_true_path)
    return JointErrors(
        mpjpe_mm=_mean_distance(true, again),
        velocity_error_mm_s=_mean_distance(np.diff(true, axis=0), np.diff(again, axis=0)) * FPS,
        pose_mpjpe_mm=_mean_distance(true, posed),
        root_error_mm=_mean_distance(true[:, 0], again[:, 0]),
    )


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Euclidean distance between (..., 3) points in metres, in millimetres."""
    return float(np.linalg.norm(a - b, axis=-1).mean() * 1000)


def code_statistics(counts: torch.Tensor) -> tuple[float, float]:
    """(usage: the share of the codebook used at least once, perplexity: exp of the codes' entropy)."""
    return float((counts > 0).double().mean()), code_perplexity(counts)


@dataclass
class MotionEvaluation:
    mpjpe_mm: float
    velocity_error_mm_s: float
    pose_mpjpe_mm: float
    root_error_mm: float
    usage: float
    perplexity: float
    counts: torch.Tensor  # (K,) how often the clips use each code
    latents: torch.Tensor  # (N, D) the compared latents of every token


@torch.no_grad()
def evaluate_motion_tokenizer(model: MotionVQ, clips: list[torch.Tensor]) -> MotionEvaluation:
    """Tokenize and detokenize each clip (cut to a multiple of the frames a token) and measure."""
    model.eval()
    step = model.config.frames_per_token
    counts = torch.zeros(model.config.codebook_size, dtype=torch.long)
    errors, latents = [], []
    for features in clips:
        features = features[: len(features) // step * step].float().unsqueeze(0)
        normalised = model.normalise(features)
        reconstruction, quantized = model(normalised)
        errors.append(joint_errors(features[0].numpy(), model.denormalise(reconstruction)[0].numpy()))
        counts += torch.bincount(quantized.codes.flatten(), minlength=len(counts))
        latents.append(quantized.compared[0])
    usage, perplexity = code_statistics(counts)
    means = JointErrors(*np.mean(errors, axis=0).tolist())
    return MotionEvaluation(**means._asdict(), usage=usage, perplexity=perplexity, counts=counts,
                            latents=torch.cat(latents))  # fmt: skip
