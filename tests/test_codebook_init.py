"""The codebook started by k-means of the encoder's latents, and runs that start that way."""

import dataclasses

import pytest
import torch
from test_tokenizer_training import MODEL, TerminatedAt, crops, state_of, training

from llamagen.tokenizer import VQModel
from llamagen.tokenizer.quantizer import squared_distances
from llamagen.training.codebook_init import kmeans, latents_of
from llamagen.training.settings import TokenizerTrainingConfig
from llamagen.training.tokenizer import train_tokenizer

RAW = dataclasses.replace(MODEL, codebook_l2_norm=False)


class TerminatedAtSecondRead(TerminatedAt):
    """SIGTERM when sample 6 is read the second time: the k-means reads the first samples before training does."""

    def __init__(self):
        super().__init__(6)
        self.reads = 0

    def __getitem__(self, index: int) -> dict:
        self.reads += index == 6
        return super(TerminatedAt, self).__getitem__(index) if self.reads < 2 else super().__getitem__(index)


def test_kmeans_ends_at_the_means_of_its_clusters_and_of_as_many_points_returns_them():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(500, 3, generator=generator) + 4 * torch.randint(0, 3, (500, 1), generator=generator)
    centroids = kmeans(points, 6, torch.Generator().manual_seed(1), iterations=50)
    nearest = squared_distances(points, centroids).argmin(1)
    for cluster in range(6):  # converged: each centroid is the mean of the points nearest to it
        torch.testing.assert_close(centroids[cluster], points[nearest == cluster].mean(0), atol=1e-4, rtol=0)
    few = torch.randn(7, 3, generator=generator)
    exact = kmeans(few, 7, torch.Generator().manual_seed(2))
    assert sorted(map(tuple, exact.tolist())) == sorted(map(tuple, few.tolist()))
    with pytest.raises(ValueError, match="needs at least 8 points, got 7"):
        kmeans(few, 8, generator)


def test_a_raw_codebook_starts_where_the_latents_are_and_the_run_resumes_exactly(tmp_path):
    plain = VQModel(RAW)
    latents = latents_of(plain, crops(), 256, 2, seed=0)
    scale = latents.norm(dim=1).mean()
    assert plain.quantize.codebook().norm(dim=1).mean() < scale / 10  # the original's draw: +-1/64, far inside

    kmeans_start = training(6, codebook_init="kmeans")
    straight = train_tokenizer(RAW, kmeans_start, crops(), tmp_path / "straight", show_progress=False)
    norms = straight.trained.quantize.codebook().norm(dim=1)
    assert scale / 2 < norms.mean() < 2 * scale
    stopped = train_tokenizer(RAW, kmeans_start, TerminatedAtSecondRead(), tmp_path / "resumed", show_progress=False)
    assert stopped.step == 3
    resumed = train_tokenizer(RAW, kmeans_start, crops(), tmp_path / "resumed", resume=True, show_progress=False)
    for key, value in state_of(straight.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_an_unknown_codebook_start_is_refused():
    with pytest.raises(ValueError, match="codebook_init must be one of uniform, kmeans, got 'zeros'"):
        TokenizerTrainingConfig(codebook_init="zeros")
