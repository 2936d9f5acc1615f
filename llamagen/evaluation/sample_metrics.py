"""The standard measures of a sample set against a reference set: FID, sFID, Inception Score, precision, recall.

What the paper reports (Table 6, from the ADM evaluator of Dhariwal and Nichol, 2021), computed in torch:

- FID: the Fréchet distance between the two sets' pool features (Heusel et al., 2017);
- sFID (Nash et al., 2021): the same on spatial features, the first 7 channels of the 17x17 1x1 branch of
  Inception's mixed_6 block (torchvision's Mixed_6d), which keep where things are;
- Inception Score (Salimans et al., 2016): exp of the mean KL from the classifier's marginal over the set to each
  image's class distribution, averaged over splits of `IS_SPLIT` images as ADM does;
- precision and recall (Kynkäänniemi et al., 2019) with k = 3 in the pool features.

The features come from a reader: Inception-v3 from a local weight file (the FID port of the TensorFlow graph the
ADM evaluator runs, whose numbers come close to the evaluator's, or torchvision's, whose numbers are for comparing
runs here: docs/evaluation.md), or one of this project's judges (`shapes-judge`, `digits-judge`: their 256
features and their class readings), which know what the embedded models draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llamagen.evaluation.fid import frechet_distance, frechet_distance_of, gaussian_statistics
from llamagen.evaluation.set_measures import NEIGHBOURS, precision_recall

IS_SPLIT = 5000  # images per split of the Inception Score (ADM's)
SPATIAL_CHANNELS = 7  # of Inception's mixed_6 block, for sFID (ADM's)


@dataclass
class Readings:
    """What a reader sees in a set: pool features (N, D), spatial features (N, S) or None, class
    probabilities (N, C) or None."""

    pool: torch.Tensor
    spatial: torch.Tensor | None
    probabilities: torch.Tensor | None


def inception_score(probabilities: torch.Tensor, split: int = IS_SPLIT) -> float:
    """exp E_x KL(p(y|x) || p(y)), the marginal p(y) taken within each split of `split` images, averaged over
    the splits: 1 when every image reads alike, the number of classes when each reads one class for sure and the
    classes are equally common."""
    scores = []
    for start in range(0, len(probabilities), split):
        p = probabilities[start : start + split].double()
        marginal = p.mean(0, keepdim=True)
        kl = (p * (torch.log(p.clamp_min(1e-30)) - torch.log(marginal.clamp_min(1e-30)))).sum(1)
        scores.append(math.exp(float(kl.mean())))
    return float(np.mean(scores))


def compare(fake: Readings, real: Readings, k: int = NEIGHBOURS, statistics: dict | None = None) -> dict[str, float]:
    """The measures of a sample set's readings against a reference set's. `statistics`: the reference's FID
    statistics (`mu`, `sigma` and `mu_s`, `sigma_s`, as an ADM reference batch holds them, computed over more
    images than it carries) to use in place of the reference's readings; they must be of the reader's features."""
    fake_pool, real_pool = fake.pool.double().numpy(), real.pool.double().numpy()
    if statistics is None:
        results = {"fid": frechet_distance(fake_pool, real_pool)}
        if fake.spatial is not None and real.spatial is not None:
            results["sfid"] = frechet_distance(fake.spatial.double().numpy(), real.spatial.double().numpy())
    else:
        results = {"fid": frechet_distance_of(*gaussian_statistics(fake_pool), statistics["mu"], statistics["sigma"])}
        if fake.spatial is not None and "mu_s" in statistics:
            spatial = gaussian_statistics(fake.spatial.double().numpy())
            results["sfid"] = frechet_distance_of(*spatial, statistics["mu_s"], statistics["sigma_s"])
    if fake.probabilities is not None:
        results["inception_score"] = inception_score(fake.probabilities)
    results["precision"], results["recall"] = precision_recall(real.pool.float(), fake.pool.float(), k)
    results["images"], results["reference_images"] = len(fake.pool), len(real.pool)
    return results


class InceptionReader:
    """Inception-v3 from a local weight file (the FID port of the TensorFlow graph or torchvision's,
    `fid.InceptionFeatures`): 2048 pool features, the spatial features sFID reads, class probabilities."""

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu"):
        from llamagen.evaluation.fid import InceptionFeatures

        self.features = InceptionFeatures(weights).to(device)
        self.device = torch.device(device)
        self.name = self.features.name

    @property
    def graph(self) -> str:
        return self.features.graph

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> Readings:
        # ADM's "mixed_6/conv": the graph's seventh mixed block (torchvision's Mixed_6d), its 1x1 branch after
        # the ReLU, 17 x 17 x 192, of which the first 7 channels, flattened in TensorFlow's order (H, W, C) so
        # that a reference batch's statistics (mu_s, sigma_s) line up with them.
        captured = {}
        hook = self.features.network.Mixed_6d.branch1x1.register_forward_hook(
            lambda module, inputs, output: captured.update(
                spatial=output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
            )
        )
        try:
            pool = self.features(images.to(self.device))
        finally:
            hook.remove()
        probabilities = torch.softmax(self.features.class_logits(pool).double(), -1)
        return Readings(pool.float().cpu(), captured["spatial"].float().cpu(), probabilities.float().cpu())


class JudgeReader:
    """A judge of this project ("shapes" or "digits"): its 256 features, and its reading of the class the
    generators take (shapes: the shape and colour readings multiplied, as the heads read them apart, 40 classes;
    digits: the digit's); no spatial features."""

    def __init__(self, kind: str, device: str | torch.device = "cpu"):
        from llamagen.evaluation.generation import condition_labels
        from llamagen.evaluation.judges import load_judge

        self.name = f"{kind}-judge"
        self.judge = load_judge(self.name, device=device)
        self.device = torch.device(device)
        self.class_heads = list(condition_labels(kind, torch.zeros(1, dtype=torch.long)))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> Readings:
        features = self.judge.embed(images.to(self.device))
        joint = None
        for name in self.class_heads:
            p = torch.softmax(self.judge.heads[name](features).float(), -1)
            joint = p if joint is None else (joint[:, :, None] * p[:, None, :]).flatten(1)
        return Readings(features.float().cpu(), None, joint.cpu())


def read_set(reader, images: np.ndarray, batch_size: int = 64) -> Readings:
    """A reader's readings of uint8 (N, H, W, 3) images, `batch_size` at a time."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), as the ADM evaluator's arr_0; got {images.dtype} "
                         f"{images.shape}")  # fmt: skip
    parts = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        parts.append(reader(batch))
    return _joined(parts)


def _joined(parts: list[Readings]) -> Readings:
    return Readings(
        torch.cat([p.pool for p in parts]),
        None if parts[0].spatial is None else torch.cat([p.spatial for p in parts]),
        None if parts[0].probabilities is None else torch.cat([p.probabilities for p in parts]),
    )


def read_in_parts(reader, images: np.ndarray, processes, batch_size: int = 64) -> Readings:
    """The readings of every image, each process (`llamagen.training.distributed.Processes`) reading its
    consecutive part of the set and all of them gathered in order on every process."""
    bounds = [len(images) * rank // processes.world for rank in range(processes.world + 1)]
    part = images[bounds[processes.rank] : bounds[processes.rank + 1]]
    mine = read_set(reader, part, batch_size) if len(part) else None  # more processes than images: none to read
    return _joined([readings for readings in processes.gather(mine) if readings is not None])


def load_images(source: str | Path) -> np.ndarray:
    """uint8 (N, H, W, 3) images from an ADM-format .npz (`arr_0`) or a folder of image files of one size (at any
    depth, by path)."""
    from llamagen.data.folders import image_files
    from llamagen.images import load_image

    path = Path(source)
    if path.is_dir():
        images = [np.asarray(load_image(file)) for file in image_files(path)]
        if len({image.shape for image in images}) != 1:
            raise ValueError(f"the images in {str(path)!r} are not all of one size: resize them first")
        return np.stack(images)
    with _sample_batch(path) as loaded:
        return loaded["arr_0"]


def reference_statistics(source: str | Path) -> dict[str, np.ndarray] | None:
    """The FID statistics an ADM reference batch carries (`mu`, `sigma`, and `mu_s`, `sigma_s` for sFID, in the
    TensorFlow graph's features), or None for a folder or a batch without them."""
    path = Path(source)
    if path.is_dir():
        return None
    with _sample_batch(path) as loaded:
        if "mu" not in loaded.files or "sigma" not in loaded.files:
            return None
        return {name: loaded[name].astype(np.float64) for name in ("mu", "sigma", "mu_s", "sigma_s")
                if name in loaded.files}  # fmt: skip


def _sample_batch(path: Path):
    if path.suffix != ".npz":
        raise ValueError(f"{str(path)!r}: give an .npz with arr_0 (the ADM evaluator's format) or a folder of images")
    loaded = np.load(path)
    if "arr_0" not in loaded.files:
        loaded.close()
        raise ValueError(f"{str(path)!r} has no arr_0: not a sample batch in the ADM evaluator's format")
    return loaded
