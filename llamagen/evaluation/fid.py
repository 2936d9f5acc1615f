"""Fréchet distances between two sets of images (Heusel et al., 2017), in one of two feature spaces.

- Inception: torchvision's Inception-v3 (2048-dim pool features), from the user's local weight file
  (`inception_v3_google-0cc3c7bd.pth`). Its numbers track the usual FID but are not identical to
  torch-fidelity's or clean-fid's, which use a port of the original TensorFlow graph; for numbers to
  compare with papers, write the images out (`llamagen eval tokenizer --save-images DIR`) and run
  `fidelity --fid --input1 DIR/originals --input2 DIR/reconstructions` (torch-fidelity) on them.
- Random features (the substitute, when no weights are given): a small convolutional network with fixed
  random weights (seed 0), mean- and max-pooled to 512 numbers. Random convolutional features still
  separate textures and colours, so the distance falls as reconstructions improve, but its scale means
  nothing outside this project: compare tokenizers with it, never with published FIDs.
"""

from __future__ import annotations

import itertools
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from llamagen.checkpoints import load_state_dict_strictly, read_checkpoint


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two (N, D) feature sets."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N >= 2, D) feature sets of one width, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # fewer images than dimensions make singular covariances: expected
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(root).all():  # near-singular product: nudge both, as the reference code does
        offset = np.eye(a.shape[1]) * 1e-6
        root = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    root = root.real  # sqrtm of a product of PSD matrices has only round-off imaginary parts
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(root))


class RandomFeatures(nn.Module):
    """Four strided 3x3 convolutions with fixed random weights; mean and max over space -> 512 numbers."""

    name = "random-conv"

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        widths = (3, 32, 64, 128, 256)
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, 2, 1) for i, o in itertools.pairwise(widths))
        for conv in self.convs:  # He initialisation, drawn from our own generator so it never changes
            fan_in = conv.in_channels * 9
            conv.weight.data = torch.randn(conv.weight.shape, generator=generator) * (2 / fan_in) ** 0.5
            conv.bias.data.zero_()
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for conv in self.convs:
            x = F.relu(conv(x))
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)


class InceptionFeatures(nn.Module):
    """torchvision's Inception-v3 up to its 2048-dim average pool, on images resized to 299x299."""

    name = "inception-v3 (torchvision)"

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        from torchvision.models import inception_v3

        if not Path(weights).is_file():
            raise FileNotFoundError(f"no Inception-v3 weight file at {str(weights)!r}")
        # Google's weights expect inputs in [-1, 1], which is what images here are: no transform_input.
        self.network = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
        load_state_dict_strictly(
            self.network,
            read_checkpoint(weights).state_dict,
            f"{str(weights)!r} (torchvision's Inception-v3 expected)",
            "See llamagen.evaluation.fid for the file it needs.",
        )
        # forward() gives the pool features; the classifier stays at hand for class readings (Inception Score).
        self.classifier, self.network.fc = self.network.fc, nn.Identity()
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        return self.network(resized)


def image_features(extractor: nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, D) float64 features."""
    parts = [extractor(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)]
    return torch.cat(parts).double().numpy()
