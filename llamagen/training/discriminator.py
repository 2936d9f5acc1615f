"""The adversarial part of the tokenizer's objective (paper Sec. 2.1): a PatchGAN with hinge losses.

PatchGAN (Isola et al., 2017, pix2pix): strided 4x4 convolutions down to a map of logits, one per
overlapping patch, so the discriminator judges local texture, which L2 and perceptual losses blur.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, layers + 1):
            wider = channels * min(2**n, 8)
            stride = 2 if n < layers else 1  # the last block keeps the resolution
            modules += [nn.Conv2d(width, wider, 4, stride, 1, bias=False), nn.BatchNorm2d(wider), nn.LeakyReLU(0.2)]
            width = wider
        modules.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.layers = nn.Sequential(*modules)
        self.min_size = 2 ** (layers + 2)  # halved `layers` times, then two 4x4 convolutions need 2 pixels
        for module in self.modules():  # the DCGAN initialisation pix2pix uses
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 1, h, w) logits, positive for 'real'."""
        if min(images.shape[-2:]) < self.min_size:
            raise ValueError(
                f"the PatchGAN needs images of at least {self.min_size} pixels a side, got {tuple(images.shape[-2:])}"
            )
        return self.layers(images)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Pushes real logits above +1 and fake ones below -1 (averaged over the two)."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The tokenizer's adversarial loss: raise the discriminator's logits on its reconstructions."""
    return -fake_logits.mean()
