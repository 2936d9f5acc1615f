"""How well a motion tokenizer keeps a clip: joint position and velocity errors, and how it uses its codes.

Errors are measured on joints, not features: both the clip's features and their reconstruction are turned
into positions (`feature_positions`, the root's path integrated as T2M-GPT does), so an error in the root's
velocity shows as the drift it causes. MPJPE is the mean over frames and joints of the distance between
true and reconstructed joints, in millimetres; the velocity error the same for the joints' velocities, in
millimetres a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llamagen.data.motion import FPS, Motions, feature_positions
from llamagen.metrics import code_perplexity
from llamagen.motion.tokenizer import MotionVQ

HELD_OUT_SEED = 1_000_003  # the evaluation clips' seed: no training run draws from it
HELD_OUT_CLIPS = 256


def held_out_clips(count: int = HELD_OUT_CLIPS) -> list[torch.Tensor]:
    """The evaluation clips' features, (T - 1, 263) each."""
    clips = Motions(seed=HELD_OUT_SEED)
    return [clips[index]["features"] for index in range(count)]


def joint_errors(true_features: np.ndarray, reconstructed: np.ndarray) -> tuple[float, float]:
    """(MPJPE in mm, joint velocity error in mm/s) of one clip's reconstruction."""
    true, again = feature_positions(true_features), feature_positions(reconstructed)
    position = np.linalg.norm(true - again, axis=-1).mean()
    velocity = np.linalg.norm(np.diff(true, axis=0) - np.diff(again, axis=0), axis=-1).mean() * FPS
    return float(position * 1000), float(velocity * 1000)


def code_statistics(counts: torch.Tensor) -> tuple[float, float]:
    """(usage: the share of the codebook used at least once, perplexity: exp of the codes' entropy)."""
    return float((counts > 0).double().mean()), code_perplexity(counts)


@dataclass
class MotionEvaluation:
    mpjpe_mm: float
    velocity_error_mm_s: float
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
    positions, velocities, latents = [], [], []
    for features in clips:
        features = features[: len(features) // step * step].float().unsqueeze(0)
        normalised = model.normalise(features)
        reconstruction, quantized = model(normalised)
        error = joint_errors(features[0].numpy(), model.denormalise(reconstruction)[0].numpy())
        positions.append(error[0])
        velocities.append(error[1])
        counts += torch.bincount(quantized.codes.flatten(), minlength=len(counts))
        latents.append(quantized.compared[0])
    usage, perplexity = code_statistics(counts)
    return MotionEvaluation(float(np.mean(positions)), float(np.mean(velocities)), usage, perplexity, counts,
                            torch.cat(latents))  # fmt: skip
