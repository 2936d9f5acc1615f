"""The codebook as a set of points: usage on some images, a 2-D map, neighbours, and what each code draws.

The paper's tokenizer keeps its 16,384 codes in 8 dimensions on the unit sphere (Sec. 2.1), so the codes the
quantizer compares are the l2-normalised rows; everything here reads `quantizer.codebook()`, the vectors as
the quantizer sees them.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from llamagen.files import write_atomically
from llamagen.tokenizer.model import VQModel
from llamagen.tokenizer.reconstruction import tokenize_image

PROJECTIONS = ("pca", "umap")
UMAP_NEIGHBOURS = 15  # umap-learn's default


def codebook_vectors(tokenizer: VQModel) -> torch.Tensor:
    """(K, D) float32 on the CPU: the codebook entries as the quantizer compares them."""
    return tokenizer.quantize.codebook().detach().float().cpu()


# Larger images are counted tile by tile: the encoder's attention spans all of an image's positions, so its cost
# grows with their square (a 1411-pixel photo took 21 s whole at downsample 8, 11 s in 512-pixel tiles), and the
# tokenizers here train on far smaller crops than a whole large photo.
COUNT_TILE = 512


@torch.no_grad()
def code_counts(tokenizer: VQModel, images) -> torch.Tensor:
    """(K,) int64: how often each code is chosen over PIL images (any sizes; each image, or each tile of at most
    COUNT_TILE x COUNT_TILE pixels of a larger one, is padded to the grid)."""
    counts = torch.zeros(tokenizer.config.codebook_size, dtype=torch.long)
    for image in images:
        for tile in count_tiles(image):
            counts += torch.bincount(tokenize_image(tokenizer, tile).flatten(), minlength=counts.numel())
    return counts


def count_tiles(image):
    """The image whole, or its tiles of at most COUNT_TILE x COUNT_TILE pixels, row by row."""
    for top in range(0, image.height, COUNT_TILE):
        for left in range(0, image.width, COUNT_TILE):
            yield image.crop((left, top, min(left + COUNT_TILE, image.width), min(top + COUNT_TILE, image.height)))


def project_2d(vectors: torch.Tensor, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(K, D) -> (K, 2) float32: principal components, or UMAP (umap-learn) over the exact neighbour graph."""
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; choose one of {', '.join(PROJECTIONS)}")
    points = vectors.double()
    if method == "pca":
        centred = points - points.mean(0)
        _, _, components = torch.linalg.svd(centred, full_matrices=False)
        return (centred @ components[:2].T).float().numpy()
    import umap  # an optional dependency, for the notebooks

    # UMAP finds neighbours approximately (pynndescent) for more than 4,096 points, compiling its search with
    # numba on every start (about 40 s for a 16,384-code codebook on two cores); the exact graph costs a second.
    neighbours = min(UMAP_NEIGHBOURS, len(points) - 1)
    indices, distances = nearest_neighbours(points, neighbours)
    with warnings.catch_warnings():
        # A fixed seed makes UMAP single-threaded, and it says so every time; and a graph given to it cannot place
        # new points later (`transform`), which nothing here does.
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        warnings.filterwarnings("ignore", message="precomputed_knn", category=UserWarning)
        projection = umap.UMAP(
            n_components=2, n_neighbors=neighbours, random_state=seed, precomputed_knn=(indices, distances, None)
        )
        projected = projection.fit_transform(points.numpy())
    return projected.astype(np.float32)


def codebook_digest(tokenizer: VQModel) -> str:
    """SHA-256 of the codebook's entries as stored (float32 holds bf16 weights exactly, so either dtype gives the
    same): names the codebook that a stored picture of it was computed from."""
    return hashlib.sha256(tokenizer.quantize.embedding.weight.detach().float().cpu().numpy().tobytes()).hexdigest()


def save_projection(tokenizer: VQModel, path: str | Path, method: str = "umap", seed: int = 0) -> None:
    """Store `project_2d` of the codebook (float16 points) with the digest of the codebook it maps."""
    points = project_2d(codebook_vectors(tokenizer), method, seed).astype(np.float16)
    stored = {"points": points, "codebook": codebook_digest(tokenizer), "method": method, "seed": seed}

    def write(temporary: str) -> None:
        with open(temporary, "wb") as file:  # np.savez would add ".npz" to a file name without it
            np.savez(file, **stored)

    write_atomically(Path(path), write)


def stored_projection(tokenizer: VQModel, path: str | Path, method: str = "umap", seed: int = 0) -> np.ndarray | None:
    """The (K, 2) float32 points `save_projection` stored for this very codebook, method and seed; None where the
    file is missing or was made for other weights (a retrained tokenizer), so that a stale map is never shown."""
    if not Path(path).is_file():
        return None
    with np.load(path) as stored:
        made_for = (str(stored["codebook"]), str(stored["method"]), int(stored["seed"]))
        if made_for != (codebook_digest(tokenizer), method, seed):
            return None
        return stored["points"].astype(np.float32)


def nearest_neighbours(points: torch.Tensor, count: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(K, D) -> the (K, count) indices and Euclidean distances of each point's nearest points, itself first
    (the form UMAP's `precomputed_knn` takes), by exact search in chunks of rows."""
    indices, distances = [], []
    for start in range(0, len(points), chunk):
        rows = points[start : start + chunk]
        # Differences, not the expanded |a|^2 + |b|^2 - 2ab, which rounds a point's distance to itself above 0.
        nearest = torch.cdist(rows, points, compute_mode="donot_use_mm_for_euclid_dist").topk(count, largest=False)
        indices.append(nearest.indices)
        distances.append(nearest.values)
    return torch.cat(indices).numpy(), torch.cat(distances).numpy()


def nearest_codes(tokenizer: VQModel, code: int, count: int) -> list[int]:
    """The `count` codes closest to `code` in the codebook (Euclidean, as the quantizer measures), nearest first."""
    vectors = codebook_vectors(tokenizer)
    check_code(tokenizer, code)
    if not 1 <= count < len(vectors):
        raise ValueError(f"count must be in 1..{len(vectors) - 1}, got {count}")
    distances = (vectors - vectors[code]).pow(2).sum(1)
    distances[code] = float("inf")
    return distances.topk(count, largest=False).indices.tolist()


def check_code(tokenizer: VQModel, code: int) -> None:
    size = tokenizer.config.codebook_size
    if not 0 <= code < size:
        raise ValueError(f"code {code} is outside the codebook (0..{size - 1})")


@torch.no_grad()
def code_patches(tokenizer: VQModel, codes: Sequence[int], tiles: int = 3) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1]: for each code, a `tiles` x `tiles` grid of it alone, decoded in one batch; what
    each code draws on its own."""
    for code in codes:
        check_code(tokenizer, code)
    grids = torch.tensor(list(codes), dtype=torch.long, device=tokenizer.device).view(-1, 1, 1).expand(-1, tiles, tiles)
    return tokenizer.detokenize(grids).float().clamp(-1, 1).cpu()
