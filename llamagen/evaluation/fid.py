"""Fréchet distances between two sets of images (Heusel et al., 2017), in one of two feature spaces.

- Inception-v3 (2048-dim pool features) from the user's local weight file: the FID port of the TensorFlow
  graph (`pt_inception-2015-12-05-6726825d.pth`, pytorch-fid's), whose numbers come close to the reference
  code's and the ADM evaluator's, or torchvision's weights (`inception_v3_google-0cc3c7bd.pth`), whose numbers
  track the usual FID without matching it (docs/evaluation.md says by how much each may differ).
- Random features (the substitute, when no weights are given): a small convolutional network with fixed
  random weights (seed 0), mean- and max-pooled to 512 numbers. Random convolutional features still
  separate textures and colours, so the distance falls as reconstructions improve, but its scale means
  nothing outside this project: compare tokenizers with it, never with published FIDs.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llamagen.checkpoints import load_state_dict_strictly, read_checkpoint


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two (N, D) feature sets."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N >= 2, D) feature sets of one width, got {a.shape} and {b.shape}")
    return frechet_distance_of(*gaussian_statistics(a), *gaussian_statistics(b))


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and covariance of (N, D) features: what FID keeps of a set."""
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance_of(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """The Fréchet distance of two Gaussians given by their means and covariances."""
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or sigma_a.shape != mu_a.shape * 2:
        raise ValueError(f"statistics of different widths: means {mu_a.shape}, {mu_b.shape}, covariances "
                         f"{sigma_a.shape}, {sigma_b.shape}")  # fmt: skip
    mean_term = ((mu_a - mu_b) ** 2).sum()
    return float(mean_term + np.trace(sigma_a) + np.trace(sigma_b) - 2 * _trace_of_root_of_product(sigma_a, sigma_b))


def _trace_of_root_of_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """Tr (S_a S_b)^(1/2) for covariances S_a, S_b: S_a S_b is similar to the symmetric S_a^(1/2) S_b S_a^(1/2),
    so the trace is the sum of the square roots of that matrix's eigenvalues. Two symmetric eigendecompositions
    instead of a general matrix square root (scipy's sqrtm, which the reference code uses): the same number,
    several times faster at 2048 dimensions, and exact where few images make the covariances singular (round-off
    below zero is clipped, where sqrtm would return complex values)."""
    values, vectors = np.linalg.eigh(sigma_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    return float(np.sqrt(np.linalg.eigvalsh(root_a @ sigma_b @ root_a).clip(min=0)).sum())


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
    """Inception-v3 up to its 2048-dim average pool, from a local weight file of either kind:

    - the FID port of the TensorFlow graph (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`): the network
      FID's reference code and the ADM evaluator run, with its own resizing and pixel scale
      (`inception_tf`); its numbers come close to theirs;
    - torchvision's (`inception_v3_google-0cc3c7bd.pth`): other weights and pooling, numbers of its own.

    Images come in [-1, 1]. `graph` says which network was loaded ("tensorflow" or "torchvision")."""

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        from torchvision.models import inception_v3

        from llamagen.evaluation.inception_tf import graph_inception, is_graph_port

        if not Path(weights).is_file():
            raise FileNotFoundError(f"no Inception-v3 weight file at {str(weights)!r}")
        state = read_checkpoint(weights).state_dict
        self.graph = "tensorflow" if is_graph_port(state) else "torchvision"
        if self.graph == "tensorflow":
            self.network = graph_inception()
        else:  # Google's weights expect inputs in [-1, 1], which is what images here are: no transform_input.
            self.network = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
        load_state_dict_strictly(
            self.network,
            state,
            f"{str(weights)!r} (the FID port of TensorFlow's Inception-v3 or torchvision's expected)",
            "See llamagen.evaluation.fid for the files it reads.",
        )
        self.name = f"inception-v3 ({self.graph})"
        # forward() gives the pool features; the classifier stays at hand for class readings (Inception Score).
        self.classifier, self.network.fc = self.network.fc, nn.Identity()
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.prepared(images))

    def prepared(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] as the network reads them: 299 x 299, on its own pixel scale."""
        if self.graph == "tensorflow":
            from llamagen.evaluation.inception_tf import resize_like_tensorflow1

            pixels = resize_like_tensorflow1((images.float() + 1) * 127.5)
            return (pixels - 128) / 128
        return F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)

    def class_logits(self, pool: torch.Tensor) -> torch.Tensor:
        """The classifier's logits from pool features; for the graph without its bias, as the ADM evaluator's
        Inception Score reads them."""
        if self.graph == "tensorflow":
            return pool @ self.classifier.weight.T
        return self.classifier(pool)


def image_features(extractor: nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, D) float64 features."""
    parts = [extractor(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)]
    return torch.cat(parts).double().numpy()
