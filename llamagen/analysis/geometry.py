"""How many dimensions a codebook and the latents it quantizes fill.

Two answers, which differ for curved sets:

- linear: the PCA spectrum (the variance along each principal axis) and its participation ratio,
  (sum of the variances)^2 / (sum of their squares): how many axes carry the variance, counted as if evenly;
- intrinsic: TwoNN (Facco, d'Errico, Rodriguez and Laio, Sci. Rep. 7, 12140, 2017). On a d-dimensional
  manifold the ratio mu of a point's second to first nearest-neighbour distance follows a Pareto law,
  P(mu > x) = x^-d, whatever the density; d is the slope of -log(1 - F(mu)) against log(mu), fitted through the
  origin over all but the largest tenth of the ratios (the paper's choice: the tail holds the points whose
  neighbours lie across a gap).

Points on the 3-sphere in 4 dimensions need 4 axes (participation ratio 4) and have dimension 3.

Each measure takes optional weights (how often each code is used), so that a rarely used code counts as little
as it is used. The projection test asks what a tokenizer keeps when its codes and latents are flattened onto
their top-k principal axes: the share of positions that keep their code, and the reconstruction's PSNR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from llamagen.analysis.codebook import codebook_vectors, count_tiles, nearest_neighbours
from llamagen.images import pil_to_tensor, tensor_to_uint8
from llamagen.metrics import psnr
from llamagen.tokenizer.model import VQModel
from llamagen.tokenizer.quantizer import nearest_entries
from llamagen.tokenizer.reconstruction import pad_to_multiple

# The share of the largest neighbour-distance ratios that the TwoNN fit leaves out (Facco et al.'s 10%).
TWO_NN_DISCARD = 0.1
NEIGHBOUR_DISTANCES_AT_A_TIME = 1 << 25
# A point whose nearest neighbour is at least this many times closer than its second has a near twin.
NEAR_TWIN_RATIO = 10.0


@dataclass(frozen=True)
class PrincipalAxes:
    mean: torch.Tensor  # (D,)
    axes: torch.Tensor  # (D, D), one axis a row, the largest variance first
    variances: torch.Tensor  # (D,), along each axis

    def project(self, points: torch.Tensor, k: int) -> torch.Tensor:
        """(N, D) points flattened onto the first k axes (through the mean), still in D dimensions."""
        kept = self.axes[:k].to(points.dtype)
        mean = self.mean.to(points.dtype)
        return mean + (points - mean) @ kept.T @ kept


def _weights(points: torch.Tensor, weights: torch.Tensor | np.ndarray | None) -> torch.Tensor:
    if weights is None:
        return torch.ones(len(points), dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.shape != (len(points),) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(
            f"weights must be {len(points)} non-negative numbers, not all 0, got shape {tuple(weights.shape)}"
        )
    return weights


def principal_axes(points: torch.Tensor, weights: torch.Tensor | np.ndarray | None = None) -> PrincipalAxes:
    """The (weighted) mean, principal axes and variances of (N, D) points."""
    if points.dim() != 2 or len(points) < 2:
        raise ValueError(f"points must be an (N, D) tensor with N >= 2, got shape {tuple(points.shape)}")
    w = _weights(points, weights)
    x = points.double()
    mean = (w[:, None] * x).sum(0) / w.sum()
    centred = (x - mean) * (w / w.sum()).sqrt()[:, None]
    _, singular, axes = torch.linalg.svd(centred, full_matrices=False)
    variances = torch.zeros(x.shape[1], dtype=torch.float64)
    variances[: len(singular)] = singular**2
    if len(axes) < x.shape[1]:  # fewer points than dimensions: the rest of the axes carry nothing
        rest = torch.linalg.qr(torch.cat([axes.T, torch.eye(x.shape[1], dtype=torch.float64)], 1))[0][:, len(axes) :]
        axes = torch.cat([axes, rest.T])
    return PrincipalAxes(mean, axes, variances)


def pca_spectrum(points: torch.Tensor, weights: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """(D,) the share of the variance along each principal axis, largest first (sums to 1)."""
    variances = principal_axes(points, weights).variances
    return (variances / variances.sum()).numpy()


def participation_ratio(spectrum: np.ndarray | Sequence[float]) -> float:
    """(sum of variances)^2 / sum of their squares: D for an isotropic cloud, 1 for a line."""
    spectrum = np.asarray(spectrum, dtype=np.float64)
    return float(spectrum.sum() ** 2 / (spectrum**2).sum())


def _two_nearest(points: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each point's distances to its nearest and second nearest other point."""
    # Itself, then its two nearest; a few tens of millions of distances at a time.
    _, distances = nearest_neighbours(points.double(), 3, chunk=max(1, NEIGHBOUR_DISTANCES_AT_A_TIME // len(points)))
    return distances[:, 1], distances[:, 2]


def two_nn_dimension(points: torch.Tensor, weights: torch.Tensor | np.ndarray | None = None) -> float:
    """TwoNN's intrinsic dimension of (N, D) points (module docstring). Points that coincide with another (a
    first neighbour at distance 0) are left out: their ratio is undefined."""
    w = _weights(points, weights).numpy()
    first, second = _two_nearest(points)
    usable = (first > 0) & (w > 0)
    if usable.sum() < 3:
        raise ValueError(f"TwoNN needs at least 3 distinct points with weight, got {int(usable.sum())}")
    ratios, w = second[usable] / first[usable], w[usable]
    order = np.argsort(ratios)
    ratios, w = ratios[order], w[order]
    # The empirical distribution, each ratio at the middle of its own weight so that the last stays below 1.
    cumulative = (np.cumsum(w) - w / 2) / w.sum()
    kept = cumulative <= 1 - TWO_NN_DISCARD
    x, y = np.log(ratios[kept]), -np.log1p(-cumulative[kept])
    if not (x > 1e-6).any():  # equal up to rounding
        raise ValueError("TwoNN is undefined where every point's two nearest neighbours are equally far (a grid)")
    return float((w[kept] * x * y).sum() / (w[kept] * x * x).sum())


def near_twin_share(
    points: torch.Tensor, weights: torch.Tensor | np.ndarray | None = None, ratio: float = NEAR_TWIN_RATIO
) -> float:
    """The (weighted) share of points whose nearest neighbour is at least `ratio` times closer than their second
    (or coincides with them): points in near pairs. On a d-dimensional set TwoNN's Pareto law puts this share at
    ratio^-d (1e-3 for d = 3 at a ratio of 10); a share far above that says the set holds pairs much closer than
    its spacing, and TwoNN, which reads the ratios, then measures the pairs rather than the set's dimension."""
    w = _weights(points, weights).numpy()
    first, second = _two_nearest(points)
    twinned = second >= ratio * first
    return float(w[twinned].sum() / w.sum())


def two_nn_spread(
    points: torch.Tensor, weights: torch.Tensor | np.ndarray | None = None, halves: int = 20, seed: int = 0
) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of TwoNN's dimension over `halves` random halves of the points: how much
    the estimate moves with the sample (a half's spread is wider than the whole set's, by about the square root
    of 2, so it errs on the side of caution)."""
    w = _weights(points, weights)
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(halves):
        half = torch.randperm(len(points), generator=generator)[: len(points) // 2]
        estimates.append(two_nn_dimension(points[half], w[half]))
    low, high = np.percentile(estimates, [2.5, 97.5])
    return float(low), float(high)


@torch.no_grad()
def encoder_latents(tokenizer: VQModel, images, per_image: int | None = None, seed: int = 0) -> torch.Tensor:
    """(N, D) float32: the encoder's latents before quantization, as the quantizer compares them (on the unit
    sphere for an l2 tokenizer), over PIL images (tiled as `code_counts` tiles them); `per_image` positions of
    each image drawn at random (seed `seed`), or all of them."""
    generator = torch.Generator().manual_seed(seed)
    drawn = []
    for image in images:
        rows = torch.cat([_latents(tokenizer, tile) for tile in count_tiles(image)])
        if per_image is not None and per_image < len(rows):
            rows = rows[torch.randperm(len(rows), generator=generator)[:per_image]]
        drawn.append(rows)
    return torch.cat(drawn)


def _latents(tokenizer: VQModel, image) -> torch.Tensor:
    return tokenizer.latent_vectors(pad_to_multiple(pil_to_tensor(image), tokenizer.downsample_factor)).cpu()


@dataclass(frozen=True)
class ProjectionRow:
    k: int
    codes_kept: float  # share of positions whose nearest code is the same as in the full space
    psnr: float  # mean over images, dB, of the reconstruction decoded from the flattened codes


def usage_axes(tokenizer: VQModel, images) -> PrincipalAxes:
    """The principal axes of the codes that `images` use, each code weighted by its use."""
    return _axes_of_use(tokenizer, [nearest_entries(_latents(tokenizer, image), codebook_vectors(tokenizer))
                                    for image in images])  # fmt: skip


def _axes_of_use(tokenizer: VQModel, codes: list[torch.Tensor]) -> PrincipalAxes:
    usage = torch.bincount(torch.cat(codes), minlength=tokenizer.config.codebook_size)
    used = usage > 0
    return principal_axes(codebook_vectors(tokenizer)[used], usage[used])


@torch.no_grad()
def flattened_decode(
    tokenizer: VQModel, image, axes: PrincipalAxes, k: int, latents: torch.Tensor | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """`image` tokenized with codes and latents flattened onto the first k of `axes` (back on the unit sphere for
    an l2 tokenizer), and the flattened codes decoded: its (positions,) codes and (H, W, 3) uint8 pixels.
    `latents`: the image's encoder latents where the caller has them already (the encoder is not run again)."""
    dimensions = tokenizer.config.codebook_embed_dim
    if not 0 <= k <= dimensions:
        raise ValueError(f"each k must be in 0..{dimensions}, got {k}")
    on_sphere = tokenizer.quantize.l2_norm
    latents = _latents(tokenizer, image) if latents is None else latents
    codebook = _flattened(axes, codebook_vectors(tokenizer), k, on_sphere)
    codes = nearest_entries(_flattened(axes, latents, k, on_sphere), codebook)
    factor = tokenizer.downsample_factor
    rows, columns = -(-image.height // factor), -(-image.width // factor)
    quantized = codebook[codes].reshape(1, rows, columns, -1).permute(0, 3, 1, 2).to(tokenizer.device)
    decoded = tokenizer.decode(quantized)[..., : image.height, : image.width]
    return codes, tensor_to_uint8(decoded)[0]


@torch.no_grad()
def projection_test(
    tokenizer: VQModel, images, ks: Sequence[int], axes: PrincipalAxes | None = None
) -> list[ProjectionRow]:
    """For each k: every image tokenized and decoded with codes and latents flattened onto the first k principal
    axes (by default `usage_axes` on the images); the share of positions that keep their code and the mean PSNR.
    k = D changes nothing."""
    images = list(images)
    latents = [_latents(tokenizer, image) for image in images]  # encoded once, flattened for every k
    full_codes = [nearest_entries(vectors, codebook_vectors(tokenizer)) for vectors in latents]
    axes = axes if axes is not None else _axes_of_use(tokenizer, full_codes)
    rows = []
    for k in ks:
        kept, scores = 0, []
        for image, vectors, codes in zip(images, latents, full_codes, strict=True):
            new_codes, pixels = flattened_decode(tokenizer, image, axes, k, vectors)
            kept += int((new_codes == codes).sum())
            scores.append(float(psnr(np.array(image)[None], pixels[None], data_range=255.0)[0]))
        rows.append(ProjectionRow(k, kept / sum(len(codes) for codes in full_codes), float(np.mean(scores))))
    return rows


def assignments_kept(codes: torch.Tensor, latents: torch.Tensor, ks: Sequence[int], on_sphere: bool,
                     uses: torch.Tensor | np.ndarray | None = None) -> list[float]:  # fmt: skip
    """The projection test's code assignments on stored points, without the tokenizer (a study's used codes and
    latents): for each k, the share of latents whose nearest code is the same after codes and latents are
    flattened onto the first k principal axes of the codes (weighted by `uses`), back on the unit sphere where
    the codebook is l2-normalised. Codes that coincide (as stored, in float16) count as one, their uses summed:
    which of two equal codes a latent picks is no change of assignment."""
    codes, inverse = torch.unique(codes.double(), dim=0, return_inverse=True)
    if uses is not None:
        uses = torch.zeros(len(codes), dtype=torch.float64).index_add_(0, inverse, torch.as_tensor(uses).double())
    latents = latents.double()
    if on_sphere:  # float16 storage moves them off the sphere by 1e-4, as far as neighbouring codes lie apart
        codes, latents = F.normalize(codes, dim=-1), F.normalize(latents, dim=-1)
    axes = principal_axes(codes, uses)
    full = _nearest_precisely(latents, codes)
    kept = []
    for k in ks:
        if not 0 <= k <= codes.shape[1]:
            raise ValueError(f"each k must be in 0..{codes.shape[1]}, got {k}")
        flat = _nearest_precisely(_flattened(axes, latents, k, on_sphere), _flattened(axes, codes, k, on_sphere))
        kept.append(float((flat == full).double().mean()))
    return kept


def _nearest_precisely(points: torch.Tensor, codes: torch.Tensor, rows: int = 1024) -> torch.Tensor:
    """Each point's nearest code in float64, by |c|^2 - 2 p.c: 10,000 codes on a circle lie 6e-4 apart, closer
    than the quantizer's float32 distances can tell apart."""
    squared = (codes.double() ** 2).sum(1)
    return torch.cat([(squared - 2 * part.double() @ codes.double().T).argmin(1) for part in points.split(rows)])


def _flattened(axes: PrincipalAxes, points: torch.Tensor, k: int, on_sphere: bool) -> torch.Tensor:
    flat = axes.project(points.double(), k).to(points.dtype)
    return F.normalize(flat, dim=-1) if on_sphere else flat
