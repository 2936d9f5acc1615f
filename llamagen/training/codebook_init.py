"""A codebook started from the encoder's own latents, by k-means, instead of the original's uniform draw.

The original draws its entries uniformly in +-1/K. Without l2-normalisation those start at a scale far from the
latents' (about 1/K against about 1), so most entries are never the nearest to any latent and collapse follows.
That would confound the question the codebook study asks: does normalisation keep a codebook used, or only the
entries' starting place? Starting every entry at a centroid of real latents puts them all where the latents are,
with or without normalisation.
"""

from __future__ import annotations

import torch

from llamagen.data.batches import step_loader
from llamagen.tokenizer import VQModel
from llamagen.tokenizer.quantizer import nearest_entries

KMEANS_ITERATIONS = 10
# Latents per entry that the k-means sees: enough that few clusters start empty.
LATENTS_PER_CODE = 4


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator, iterations: int = KMEANS_ITERATIONS):
    """(k, D) centroids of (N, D) points by Lloyd's iterations from k distinct points drawn at random; a cluster
    left empty takes a point drawn at random again."""
    if len(points) < k:
        raise ValueError(f"k-means of {k} clusters needs at least {k} points, got {len(points)}")
    points = points.float()
    centroids = points[torch.randperm(len(points), generator=generator)[:k]].clone()
    for _ in range(iterations):
        nearest = nearest_entries(points, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, points)
        counts = torch.bincount(nearest, minlength=k)
        empty = counts == 0
        centroids = sums / counts.clamp(min=1)[:, None]
        centroids[empty] = points[torch.randint(len(points), (int(empty.sum()),), generator=generator)]
    return centroids


@torch.no_grad()
def latents_of(model: VQModel, dataset, count: int, batch_size: int, seed: int) -> torch.Tensor:
    """(count, D) latents as the quantizer compares them, from the encoder's view of the batches that `dataset`
    gives for `seed` from step 0 on (reading them leaves the training's batches as they are: each is a pure
    function of the seed and its step)."""
    latents, total = [], 0
    for batch in step_loader(dataset, batch_size, 0, -(-count // batch_size), seed):  # at least a latent an image
        latents.append(model.latent_vectors(batch["image"]))
        total += len(latents[-1])
        if total >= count:
            break
    return torch.cat(latents)[:count]


@torch.no_grad()
def initialise_codebook(model: VQModel, dataset, batch_size: int, seed: int) -> None:
    """Set `model`'s codebook to the k-means centroids of its encoder's latents (normalised again for an l2
    codebook, whose entries live on the sphere)."""
    size = model.config.codebook_size
    # A generator of its own, so that the k-means draws nothing from the training's.
    generator = torch.Generator().manual_seed(seed)
    training = model.training
    model.eval()  # no dropout: it would draw from the training's generator
    latents = latents_of(model, dataset, LATENTS_PER_CODE * size, batch_size, seed).cpu()
    model.train(training)
    centroids = kmeans(latents, size, generator)
    if model.quantize.l2_norm:
        centroids = torch.nn.functional.normalize(centroids, dim=-1)
    model.quantize.embedding.weight.copy_(centroids.to(model.quantize.embedding.weight))
