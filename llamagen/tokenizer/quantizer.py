"""Vector quantizer with the paper's low-dimensional, l2-normalised codebook (Sec. 2.1, Table 2).

Latent vectors and codebook entries are both projected onto the unit sphere before the nearest
entry is chosen, so the distance is a cosine distance and every entry stays reachable: with
8-dim entries the 16384-entry codebook stays ~97% used, where 256-dim unnormalised entries
collapse to a fraction of that.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

USAGE_WINDOW = 65536  # codebook usage is measured over the last 65,536 code indices, as the original does
# Without a gradient, distances to the codebook are computed a chunk of rows at a time. On a CPU a chunk of
# about 4 MB stays in cache while it is reduced (64 rows of 16,384 codes: 3x faster than 4,096 rows); on an
# accelerator 4,096 rows only bound the memory.
_DISTANCE_CHUNK_BYTES_CPU = 4 << 20
_DISTANCE_CHUNK_ROWS = 4096


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # (B, D, h, w), straight-through gradient to the encoder
    codes: torch.Tensor  # (B, h, w) int64
    codebook_loss: torch.Tensor  # moves the codebook towards the encoder outputs
    commitment_loss: torch.Tensor  # keeps the encoder close to its codes (weighted by beta)
    entropy_loss: torch.Tensor  # optional: confident per-sample, diverse on average
    latent: torch.Tensor  # (B, h, w, D) float32: what was quantized (normalised when l2_norm is set)


@torch.no_grad()
def nearest_entries(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, D) vectors, (K, D) codebook -> (N,) int64 index of each vector's nearest entry (`squared_distances`),
    a bounded number of rows at a time."""
    return torch.cat([first_minimum(distances) for distances in chunked_distances(vectors, codebook)])


def chunked_distances(vectors: torch.Tensor, codebook: torch.Tensor) -> Iterator[torch.Tensor]:
    """`squared_distances(vectors, codebook)` a bounded number of rows at a time, the codebook's norms computed
    once."""
    codebook = codebook.float()
    entry_norms = codebook.pow(2).sum(1)
    for part in _distance_chunks(vectors, codebook):
        yield squared_distances(part, codebook, entry_norms)


def first_minimum(distances: torch.Tensor) -> torch.Tensor:
    """(N, K) -> (N,) int64 index of each row's smallest value, the first of equal ones: argmin's answer, which
    `min` gives three times faster on a CPU (argmin's CPU kernel compares one value at a time)."""
    return distances.min(1).indices


def _distance_chunks(vectors: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`vectors` split into the chunks of rows whose distances to `codebook` are computed at once."""
    if vectors.device.type == "cpu":
        return vectors.split(max(1, _DISTANCE_CHUNK_BYTES_CPU // (4 * len(codebook))))
    return vectors.split(_DISTANCE_CHUNK_ROWS)


def squared_distances(z: torch.Tensor, codebook: torch.Tensor, entry_norms: torch.Tensor | None = None) -> torch.Tensor:
    """(N, D) x (K, D) -> (N, K) squared Euclidean distances, expanded as |z|^2 + |e|^2 - 2 z.e in float32
    (`entry_norms`: the codebook's |e|^2, where the caller has them).

    The expanded form, rather than torch.cdist, keeps the arg-min identical to the original's in near ties.
    """
    z, codebook = z.float(), codebook.float()
    with torch.autocast(z.device.type, enabled=False):  # under bf16 autocast the matmul would drop to bf16
        norms = z.pow(2).sum(1, keepdim=True) + (codebook.pow(2).sum(1) if entry_norms is None else entry_norms)
        # Then - 2 z.e, subtracted by the product as it writes into the norms (two passes less over the (N, K)
        # distances than a product and a subtraction): its sums are the same, so every distance is the same to
        # the bit.
        return norms.addmm_(2 * z, codebook.t(), alpha=-1)


def entropy_loss(affinity: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Per-sample entropy minus the entropy of the average assignment (from MaskGIT, kept by LlamaGen).

    Low when each vector picks one code decisively and the batch as a whole spreads over many codes.
    """
    logits = affinity.reshape(-1, affinity.shape[-1]) / temperature
    probs = logits.softmax(-1)
    sample_entropy = -(probs * (logits + 1e-5).log_softmax(-1)).sum(-1).mean()
    mean_probs = probs.mean(0)
    batch_entropy = -(mean_probs * (mean_probs + 1e-5).log()).sum()
    return sample_entropy - batch_entropy


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        codebook_size: int,
        embed_dim: int,
        commit_loss_beta: float,
        entropy_loss_ratio: float,
        l2_norm: bool,
        show_usage: bool,
    ):
        super().__init__()
        self.codebook_size = codebook_size
        self.embed_dim = embed_dim
        self.commit_loss_beta = commit_loss_beta
        self.entropy_loss_ratio = entropy_loss_ratio
        self.l2_norm = l2_norm
        # The codebook starts uniform in +-1/K, on the sphere when l2_norm is set. A skeleton built on the meta
        # device (to check a checkpoint's shapes) has no values to start: computing on meta tensors imports
        # torch._dynamo, a second of every command that loads a tokenizer.
        self.embedding = nn.Embedding(codebook_size, embed_dim, _weight=torch.empty(codebook_size, embed_dim))
        if not self.embedding.weight.is_meta:
            with torch.no_grad():
                # nn.Embedding's own normal draw, overwritten at once, is kept: it is part of the random stream
                # that seeded models, and the commands on the embedded models' cards, were made from.
                self.embedding.reset_parameters()
                self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
                if l2_norm:
                    self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        if show_usage:
            # Integer, so that a bf16 model still counts exactly (published files store floats, which load
            # into it unchanged); -1 marks a slot that has not seen a code yet.
            self.register_buffer("codebook_used", torch.full((USAGE_WINDOW,), -1, dtype=torch.long))
        else:
            self.codebook_used = None

    def codebook(self) -> torch.Tensor:
        """(K, D) entries as the quantizer compares them: on the unit sphere when l2_norm is set."""
        weight = self.embedding.weight
        return F.normalize(weight.float(), dim=-1) if self.l2_norm else weight.float()

    def compared(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latent -> (B, h, w, D) float32: the vectors as compared with the codes (normalised when
        l2_norm is set)."""
        z = z.float().permute(0, 2, 3, 1)
        return F.normalize(z, dim=-1) if self.l2_norm else z

    @torch.no_grad()
    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latent -> (B, h, w) int64 index of the nearest codebook entry."""
        codes = nearest_entries(self.compared(z).reshape(-1, self.embed_dim), self.codebook())
        return codes.reshape(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, D, h, w) float32 quantized latent."""
        return self.codebook()[codes].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        z_prepared = self.compared(z)  # (B, h, w, D)
        flat = z_prepared.reshape(-1, self.embed_dim)
        codebook = self.codebook()
        distances = squared_distances(flat, codebook)  # (B*h*w, K)
        codes = first_minimum(distances)
        z_q = codebook[codes].view_as(z_prepared)

        codebook_loss = (z_q - z_prepared.detach()).pow(2).mean()
        commitment_loss = self.commit_loss_beta * (z_q.detach() - z_prepared).pow(2).mean()
        if self.training and self.entropy_loss_ratio > 0:
            entropy = self.entropy_loss_ratio * entropy_loss(-distances)
        else:
            entropy = z_q.new_zeros(())
        if self.training and self.codebook_used is not None:
            self._record_usage(codes)

        z_q = z_prepared + (z_q - z_prepared).detach()  # straight-through estimator
        return QuantizerOutput(
            quantized=z_q.permute(0, 3, 1, 2).contiguous(),
            codes=codes.view(z_prepared.shape[:3]),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            entropy_loss=entropy,
            latent=z_prepared.detach(),
        )

    @torch.no_grad()
    def _record_usage(self, codes: torch.Tensor) -> None:
        """Shift the newest codes into the fixed-size usage window (oldest fall out first)."""
        recent = codes.flatten()[-USAGE_WINDOW:].to(self.codebook_used.dtype)
        self.codebook_used.copy_(torch.cat([self.codebook_used[recent.numel() :], recent]))

    @torch.no_grad()
    def restart_dead_codes(self, latent: torch.Tensor, generator: torch.Generator,
                           used: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Move every entry the usage window (or `used`, a window of recent codes kept by the caller, -1 where
        not yet filled) has not seen onto a latent vector that its code represents badly; returns a (K,) mask
        of the moved entries. Nothing moves until the window is full.

        Not part of the original objective: an option against collapse at small scale (see the
        tokenizer-training docs). Among the 4 x (dead entries) latent vectors farthest from their
        codes, each dead entry takes a different one at random, so new entries go where the codebook is
        thinnest.
        """
        dead = torch.zeros(self.codebook_size, dtype=torch.bool, device=latent.device)
        window = self.codebook_used if used is None else used
        if window is None or (window < 0).any():
            return dead
        dead[:] = True
        dead[window.to(latent.device)] = False
        count = int(dead.sum())
        if count == 0:
            return dead
        flat, codebook = latent.reshape(-1, self.embed_dim).float(), self.codebook()
        errors = torch.cat([distances.amin(1) for distances in chunked_distances(flat, codebook)])
        worst = errors.topk(min(len(flat), 4 * count)).indices
        if count <= len(worst):  # distinct latents, so that no two entries land on the same one
            choice = torch.randperm(len(worst), generator=generator, device=generator.device)[:count]
        else:
            choice = torch.randint(len(worst), (count,), generator=generator, device=generator.device)
        picks = worst[choice.to(worst.device)]
        self.embedding.weight[dead] = flat[picks].to(self.embedding.weight.dtype)
        return dead

    def usage(self) -> float:
        """Fraction of the codebook seen in the usage window: the paper's codebook usage (Table 2)."""
        if self.codebook_used is None:
            raise ValueError("this tokenizer does not track codebook usage (codebook_show_usage=False)")
        seen = self.codebook_used[self.codebook_used >= 0]
        return torch.unique(seen).numel() / self.codebook_size
