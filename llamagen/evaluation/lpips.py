"""LPIPS (Zhang et al., 2018): the perceptual distance the original adds to its tokenizer loss.

The distance compares VGG16 activations at five depths: each is normalised over channels, their squared
difference weighted per channel by a learned non-negative 1x1 layer, averaged over space and summed
over depths. Its weights cannot be downloaded here, so the user supplies two files:
- torchvision's ImageNet VGG16 (`vgg16-397923af.pth`, keys `features.N.weight`; the classifier's keys,
  if present, are ignored), and
- LPIPS's linear layers for VGG (`vgg.pth` of the `lpips` package, keys `lin0.model.1.weight` ... `lin4`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from llamagen.checkpoints import load_state_dict_strictly, read_checkpoint

# Indices, in torchvision's vgg16().features, of the ReLUs LPIPS reads: relu1_2, relu2_2, relu3_3, relu4_3,
# relu5_3, and their channel counts.
TAPS = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's input scaling: images in [-1, 1] are shifted and scaled to what its VGG was trained on.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """A frozen perceptual distance: forward(a, b) -> (B,) for images in [-1, 1]."""

    def __init__(self):
        super().__init__()
        from torchvision.models import vgg16

        self.features = vgg16(weights=None).features[: TAPS[-1] + 1]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always in evaluation mode, even inside a model being trained

    def _activations(self, images: torch.Tensor) -> list[torch.Tensor]:
        x, taken = (images - self.shift) / self.scale, []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                taken.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return taken

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS compares two (B, 3, H, W) batches, got {tuple(a.shape)} and {tuple(b.shape)}")
        distance = a.new_zeros(a.shape[0])
        for lin, fa, fb in zip(self.lins, self._activations(a), self._activations(b), strict=True):
            distance = distance + lin((fa - fb).pow(2)).mean((1, 2, 3))
        return distance


def load_lpips(vgg_weights: str | os.PathLike, lin_weights: str | os.PathLike) -> LPIPS:
    """LPIPS from the user's two weight files (see the module docstring), checked key by key."""
    model = LPIPS()
    vgg = _read(vgg_weights)
    features = {k.removeprefix("features."): v for k, v in vgg.items() if k.startswith("features.")}
    hint = "See llamagen.evaluation.lpips for the two files LPIPS needs."
    load_state_dict_strictly(model.features, features, f"{str(vgg_weights)!r} (torchvision's VGG16 expected)", hint)
    lins = {k.replace(".model.1.", ".").replace("lin", "", 1): v for k, v in _read(lin_weights).items()}
    load_state_dict_strictly(model.lins, lins, f"{str(lin_weights)!r} (LPIPS's vgg.pth expected)", hint)
    if any((lin.weight < 0).any() for lin in model.lins):
        raise ValueError(f"{str(lin_weights)!r}: LPIPS's linear weights are non-negative; these are not")
    return model


def _read(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no LPIPS weight file at {str(path)!r} (see llamagen.evaluation.lpips)")
    return read_checkpoint(path).state_dict
