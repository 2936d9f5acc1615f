"""The three ways the motion study quantizes a sequence of latent vectors (B, D, T) into codes (B, T).

- `SphereQuantizer`: LlamaGen's (paper Sec. 2.1): few dimensions, latents and entries on the unit sphere,
  entries learned by the codebook loss. It is the image tokenizer's `VectorQuantizer` over a 1-D sequence.
- `EMAResetQuantizer`: T2M-GPT's (Zhang et al. 2023, Sec. 3.1): many dimensions (512), Euclidean nearest
  entry, entries moved by an exponential moving average of the latents they take, and an entry that no
  latent has taken lately moved onto a latent of the batch.
- `FSQuantizer`: finite scalar quantization (Mentzer et al. 2023): each of a few dimensions bounded and rounded
  to one of L_i levels; the codebook is the grid of all level combinations, nothing is learned, nothing dies.

Each returns a `Quantized`: the quantized latents (straight-through gradients), the codes, its own loss, and
the vectors it compared (for the geometry of the used codes and latents).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llamagen.tokenizer.quantizer import VectorQuantizer, first_minimum, nearest_entries, squared_distances

# FSQ's recommended levels for a codebook of about 2^bits entries (Mentzer et al. 2023, Table 1; 2^9 is
# 8 x 8 x 8).
FSQ_LEVELS = {8: (8, 6, 5), 9: (8, 8, 8), 10: (8, 5, 5, 5), 12: (7, 5, 5, 5, 5), 14: (8, 8, 8, 6, 5),
              16: (8, 8, 8, 5, 5, 5)}  # fmt: skip


@dataclass
class Quantized:
    quantized: torch.Tensor  # (B, D, T): what the decoder reads, with the straight-through gradient
    codes: torch.Tensor  # (B, T) int64
    loss: torch.Tensor  # the quantizer's own training terms (0 for FSQ)
    compared: torch.Tensor  # (B, T, D) float32, detached: the latents as compared with the entries


class SphereQuantizer(nn.Module):
    """LlamaGen's quantizer over a sequence: `VectorQuantizer` with each latent a 1 x T image."""

    def __init__(self, codebook_size: int, dim: int, commit_beta: float = 0.25, l2_norm: bool = True):
        super().__init__()
        self.inner = VectorQuantizer(codebook_size, dim, commit_beta, 0.0, l2_norm, show_usage=False)
        self.codebook_size = codebook_size

    def codebook(self) -> torch.Tensor:
        return self.inner.codebook()

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.inner.lookup(codes.unsqueeze(1)).squeeze(2)

    def forward(self, z: torch.Tensor) -> Quantized:
        out = self.inner(z.unsqueeze(2))
        return Quantized(out.quantized.squeeze(2), out.codes.squeeze(1), out.codebook_loss + out.commitment_loss,
                         out.latent.squeeze(1))  # fmt: skip


class EMAResetQuantizer(nn.Module):
    """T2M-GPT's quantizer. The entries start as latents of the first batch; each training step moves an entry to
    the running mean (decay `decay`) of the latents it took, and an entry whose running count of latents falls
    below one to a random latent of the batch, its running mean restarting there. The encoder is held to its codes
    by `commit_beta`."""

    def __init__(self, codebook_size: int, dim: int, commit_beta: float = 0.02, decay: float = 0.99):
        super().__init__()
        self.codebook_size, self.dim, self.commit_beta, self.decay = codebook_size, dim, commit_beta, decay
        self.register_buffer("entries", torch.zeros(codebook_size, dim))
        self.register_buffer("entry_sums", torch.zeros(codebook_size, dim))
        self.register_buffer("entry_counts", torch.zeros(codebook_size))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def codebook(self) -> torch.Tensor:
        return self.entries.float()

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook()[codes].transpose(1, 2)

    def _random_latents(self, flat: torch.Tensor) -> torch.Tensor:
        """`codebook_size` latents of the batch in random order (repeated when the batch has fewer)."""
        repeats = math.ceil(self.codebook_size / len(flat))
        pool = flat.repeat(repeats, 1) if repeats > 1 else flat
        return pool[torch.randperm(len(pool), device=flat.device)[: self.codebook_size]]

    @torch.no_grad()
    def _start(self, flat: torch.Tensor) -> None:
        """The entries start as latents of the first batch, each with a running count of one."""
        self.entries.copy_(self._random_latents(flat))
        self.entry_sums.copy_(self.entries)
        self.entry_counts.fill_(1.0)
        self.started.fill_(True)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        taken = F.one_hot(codes, self.codebook_size).float()  # (N, K)
        self.entry_sums.mul_(self.decay).add_(taken.t() @ flat, alpha=1 - self.decay)
        self.entry_counts.mul_(self.decay).add_(taken.sum(0), alpha=1 - self.decay)
        alive = (self.entry_counts >= 1.0).unsqueeze(1)
        means = self.entry_sums / self.entry_counts.clamp_min(1e-6).unsqueeze(1)
        self.entries.copy_(torch.where(alive, means, self._random_latents(flat)))
        # A moved entry's running mean starts again where it now is (T2M-GPT keeps the old sums, which pull a
        # moved entry back towards where it died until they decay).
        self.entry_sums.copy_(torch.where(alive, self.entry_sums, self.entries))
        self.entry_counts.copy_(torch.where(alive[:, 0], self.entry_counts, torch.ones_like(self.entry_counts)))

    def forward(self, z: torch.Tensor) -> Quantized:
        compared = z.float().transpose(1, 2)  # (B, T, D)
        flat = compared.reshape(-1, self.dim)
        if self.training:
            with torch.no_grad():
                if not self.started:  # the first batch starts the entries before any code is chosen
                    self._start(flat)
                codes = first_minimum(squared_distances(flat, self.codebook()))
                self._update(flat, codes)
        else:
            codes = nearest_entries(flat, self.codebook())
        chosen = self.codebook()[codes].view_as(compared)
        loss = self.commit_beta * F.mse_loss(compared, chosen.detach())
        quantized = compared + (chosen - compared).detach()
        return Quantized(quantized.transpose(1, 2), codes.view(compared.shape[:2]), loss, compared.detach())


class FSQuantizer(nn.Module):
    """Finite scalar quantization with `levels` per dimension: a code is a point of the grid, read as a
    mixed-radix number. Each dimension is bounded by tanh to (-L/2, L/2) (shifted by a half for even L, so that
    rounding gives exactly L values) and rounded with a straight-through gradient; the grid is scaled to
    [-1, 1] for the decoder."""

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ needs at least one dimension of at least 2 levels, got {levels}")
        self.levels_list = tuple(int(level) for level in levels)
        self.register_buffer("levels", torch.tensor(self.levels_list), persistent=False)
        self.register_buffer("radix", torch.cumprod(torch.tensor((1, *self.levels_list[:-1])), 0), persistent=False)
        self.codebook_size = math.prod(self.levels_list)

    def _bounded(self, z: torch.Tensor) -> torch.Tensor:
        half_width = (self.levels - 1) * (1 - 1e-3) / 2
        offset = (self.levels % 2 == 0) * 0.5
        shift = torch.atanh(offset / half_width)
        return torch.tanh(z + shift) * half_width - offset

    def _scaled(self, grid: torch.Tensor) -> torch.Tensor:
        return grid / (self.levels // 2)

    def codebook(self) -> torch.Tensor:
        """Every code's point, scaled as the decoder reads it: (prod(levels), len(levels))."""
        return self.lookup(torch.arange(self.codebook_size, device=self.levels.device).unsqueeze(0))[0].t()

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        digits = (codes.unsqueeze(-1) // self.radix) % self.levels - self.levels // 2  # (B, T, D)
        return self._scaled(digits.float()).transpose(1, 2)

    def forward(self, z: torch.Tensor) -> Quantized:
        compared = self._bounded(z.float().transpose(1, 2))
        rounded = compared + (compared.round() - compared).detach()
        codes = ((rounded.detach().round().long() + self.levels // 2) * self.radix).sum(-1)
        return Quantized(self._scaled(rounded).transpose(1, 2), codes, z.new_zeros((), dtype=torch.float32),
                         self._scaled(compared).detach())  # fmt: skip
