"""A CLIP of captions and motions: its text tower is the text-to-motion generator's caption encoder.

As `shapes-clip` for images: open_clip's text transformer, trained contrastively against an encoder of the
other modality, here a motion tower (`MotionTower`: the judge's kind of dilated convolutions over a clip's
normalised features, averaged over its real frames, projected to the joint embedding). The class is the
image CLIPs' `ClipTextEncoder` with the motion tower in place of the image tower, so the generator's training
and sampling read captions from it exactly as from `shapes-clip`; `embed_motions` takes the image tower's part.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llamagen.data.motion import FEATURES
from llamagen.motion.loading import load_saved_model
from llamagen.text.clip import ClipConfig, ClipTextEncoder

# open_clip's CLIP insists on an image tower; this smallest one is built and at once replaced by the motion tower.
_PLACEHOLDER_VISION = {"image_size": 8, "patch_size": 8, "width": 8, "layers": 1, "head_width": 8}
MOTION_CLIP: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"width": 128, "dilations": [1, 2, 4, 8, 16, 32]},  # the motion tower's
    # Captions of three actions run to about 35 BPE tokens; 48 leave room for the start and end markers.
    "text_cfg": {"context_length": 48, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}


class MotionTower(nn.Module):
    """(B, T, 263) features and (B,) lengths -> (B, embed_dim): dilated convolutions, masked mean over frames."""

    def __init__(self, embed_dim: int, width: int, dilations: list[int]):
        super().__init__()
        self.lift = nn.Conv1d(FEATURES, width, 5, padding=2)
        self.context = nn.ModuleList([nn.Conv1d(width, width, 3, padding=d, dilation=d) for d in dilations])
        self.project = nn.Linear(width, embed_dim)
        self.register_buffer("feature_mean", torch.zeros(FEATURES))
        self.register_buffer("feature_std", torch.ones(FEATURES))

    def forward(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        real = (torch.arange(features.shape[1], device=features.device) < frames.unsqueeze(1)).unsqueeze(1)
        x = ((features - self.feature_mean) / self.feature_std).transpose(1, 2) * real
        x = torch.relu(self.lift(x))
        for convolution in self.context:
            x = x + torch.relu(convolution(x * real))
        pooled = (x * real).sum(-1) / frames.unsqueeze(1).to(x.dtype)
        return self.project(pooled)


class MotionTextEncoder(ClipTextEncoder):
    checkpoint_kind = "motion-clip"

    @classmethod
    def from_config(cls, config: ClipConfig, source: str = "") -> MotionTextEncoder:
        import open_clip

        model = open_clip.CLIP(embed_dim=config.embed_dim, vision_cfg=_PLACEHOLDER_VISION, text_cfg=config.text_cfg)
        model.visual = MotionTower(config.embed_dim, **config.vision_cfg)
        return cls(model, config, source)

    def embed_motions(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 263) zero-padded after each clip's `frames` -> (B, embed_dim) unit-length embeddings."""
        return F.normalize(self.model.visual(features.to(self.device), frames.to(self.device)), dim=-1)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        raise TypeError("a motion CLIP embeds motions (embed_motions), not images")


def load_motion_text_encoder(source: str | os.PathLike) -> MotionTextEncoder:
    """A motion CLIP saved by `llamagen.save`, strictly loaded, in eval mode, frozen."""

    def build(config: dict) -> MotionTextEncoder:
        return MotionTextEncoder.from_config(ClipConfig.from_dict(config), str(source))

    return load_saved_model(source, MotionTextEncoder.checkpoint_kind, build).requires_grad_(False)
