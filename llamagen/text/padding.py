"""Left padding of caption features: the generator's prefix ends with the caption's last real token."""

from __future__ import annotations

import torch


def left_align(features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) right-padded features with (B,) real lengths -> (features with each row's real tokens moved
    to the end and zeros before them, (B, L) bool mask of the real tokens).

    The generator predicts the first image token from the last prefix position, so that position must hold
    a real token: the original moves T5's valid tokens to the end of the 120 for the same reason.
    """
    length = features.shape[1]
    lengths = lengths.to(features.device)
    positions = torch.arange(length, device=features.device)
    source = (positions[None, :] - (length - lengths)[:, None]) % length
    shifted = features.gather(1, source[..., None].expand(-1, -1, features.shape[-1]))
    mask = positions[None, :] >= (length - lengths)[:, None]
    return shifted * mask[..., None], mask
