"""The codebook study (paper Sec. 3.1, Table 2, at small scale): where a codebook collapses, into how many
dimensions, and whether the answer depends on the kind of data.

Small tokenizers (VQ-4-tiny, 16x16 images: 16 codes an image) that differ only in their codebook train for the
same steps on one kind of data: photo crops, rendered shapes or digits. Each variant changes one thing from the
base, the paper's choice (16,384 codes of 8 dimensions on the unit sphere, the original's uniform start, no
restarts): the dimension (2 ... 256), the size (1,024 ... 32,768), l2-normalisation off, off with the entries
started at k-means centroids of the latents (`codebook_init.py`: normalisation told apart from the start), and
dead-code restarts. Every (data, variant) runs with several seeds.

A run's row holds its usage, perplexity and PSNR on held-out images of its kind, its usage over training, and
the geometry (`analysis.geometry`) of its used codes (weighted by use) and of its encoder's latents on those
images: participation ratio and TwoNN dimension. Its folder keeps its codebook and a sample of the latents
(float16 .npy) and how often the held-out images use each code; `gather_points` collects one seed's used codes
and latents into one small file for the notebooks. Runs are recorded, resumed and shared out under torchrun
as `studies.run_study` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llamagen.analysis.geometry import pca_spectrum
from llamagen.evaluation.tokenizer import evaluate_tokenizer, held_out_images
from llamagen.files import write_atomically
from llamagen.images import pil_to_tensor
from llamagen.tokenizer import VQModel, vq_preset
from llamagen.tokenizer.quantizer import nearest_entries
from llamagen.training.export import read_metrics
from llamagen.training.settings import TokenizerTrainingConfig
from llamagen.training.studies import geometry_fields, resumable, run_schedule, run_study, save_array, save_float16
from llamagen.training.tokenizer import train_tokenizer

BASE = {"dim": 8, "size": 16384, "l2": True, "init": "uniform", "restarts": False}
VARIANTS: dict[str, dict] = {
    **{f"d{dim}": {"dim": dim} for dim in (2, 4, 8, 16, 32, 64, 256)},
    **{f"k{size}": {"size": size} for size in (1024, 4096, 8192, 32768)},
    "d8-raw": {"l2": False},
    "d8-raw-kmeans": {"l2": False, "init": "kmeans"},
    "d256-raw": {"dim": 256, "l2": False},
    "d256-raw-kmeans": {"dim": 256, "l2": False, "init": "kmeans"},
    "d8-restarts": {"restarts": True},
    "d256-restarts": {"dim": 256, "restarts": True},
}
DATA = ("photos", "shapes", "digits")
IMAGE_SIZE = 16
# Steps between dead-code restarts in the restart arms: the usage window (65,536 codes) fills in 128 steps of 32.
RESTART_EVERY = 200
LATENTS_KEPT = 4096  # of the held-out images', for the geometry and the notebooks
# Of those, in the notebooks' points file, a run keeps at most POINTS_LATENTS latents of at most
# POINTS_LATENT_VALUES values together: the 256-dimensional runs keep 256, whose latents would otherwise make up
# most of the file.
POINTS_LATENTS = 1024
POINTS_LATENT_VALUES = 2**16
EVAL_BATCH = 512  # held-out images reconstructed at a time: tiny images, so the time goes to each layer's call
CSV_FIELDS = (
    "data", "variant", "seed", "dim", "size", "l2", "init", "restarts", "usage_eval", "usage_train", "perplexity",
    "psnr", "codes_participation", "codes_two_nn", "latents_participation", "latents_two_nn",
)  # fmt: skip


@dataclass
class StudySettings:
    data: tuple[str, ...] = DATA
    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: tuple[int, ...] = (0, 1, 2)
    preset: str = "VQ-4-tiny"
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4

    def __post_init__(self) -> None:
        unknown = [name for name in self.variants if name not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        bad = [name for name in self.data if name not in DATA]
        if bad:
            raise ValueError(f"unknown data {', '.join(bad)}; choose from {', '.join(DATA)}")

    def training(self) -> dict:
        """What every run of one study shares; `data`, `variants` and `seeds` only choose which runs to add."""
        return {"preset": self.preset, "steps": self.steps, "batch_size": self.batch_size, "lr": self.lr}


def run_name(data: str, variant: str, seed: int) -> str:
    return f"{data}-{variant}-s{seed}"


def training_data(data: str, seed: int):
    """The 16x16 training images of one kind, for one seed."""
    if data == "photos":
        from llamagen.data.photos import PhotoCrops

        return PhotoCrops(size=IMAGE_SIZE, seed=seed)
    if data == "shapes":
        from llamagen.data.shapes import Shapes

        return Shapes(size=IMAGE_SIZE, seed=seed)
    from llamagen.data.digits import Digits

    return Digits("train", size=IMAGE_SIZE)


def study_codebooks(settings: StudySettings, out: str | Path, work_dir: str | Path, show_progress: bool = True) -> dict:
    """Train, evaluate and measure every (data, variant, seed) that `out` (JSON) does not hold yet, and add it
    there (`studies.run_study`: a study can be run a part at a time, and shared out under torchrun)."""
    runs = {run_name(data, variant, seed): (data, variant, seed) for data in settings.data
            for variant in settings.variants for seed in settings.seeds}  # fmt: skip
    held_out = _HeldOut()

    def train(name: str, folder: Path) -> dict | None:
        data, variant, seed = runs[name]
        return _run(settings, data, variant, seed, held_out.images(data), folder, show_progress)

    def describe_held_out(results: dict, row: dict) -> None:
        results.setdefault("evaluation", {})[row["data"]] = held_out.description(row["data"])

    return run_study(list(runs), train, out, work_dir, settings.training(), CSV_FIELDS, describe_held_out)


class _HeldOut:
    """Each kind's held-out images, read once, and what they are."""

    def __init__(self):
        self.read: dict[str, tuple[list, str]] = {}

    def images(self, data: str) -> list:
        return self._read(data)[0]

    def description(self, data: str) -> str:
        images, description = self._read(data)
        return f"{description} ({len(images)} images)"

    def _read(self, data: str) -> tuple[list, str]:
        if data not in self.read:
            self.read[data] = held_out_images("photo-tiles" if data == "photos" else data, IMAGE_SIZE)
        return self.read[data]


def _run(settings: StudySettings, data: str, variant: str, seed: int, images, run_dir: Path, show_progress: bool):
    choice = {**BASE, **VARIANTS[variant]}
    config = vq_preset(
        settings.preset, codebook_size=choice["size"], codebook_embed_dim=choice["dim"], codebook_l2_norm=choice["l2"]
    )
    training = TokenizerTrainingConfig(
        **run_schedule(settings.steps, seed),
        batch_size=settings.batch_size,
        lr=settings.lr,
        codebook_init=choice["init"],
        restart_dead_codes_every=RESTART_EVERY if choice["restarts"] else None,
    )
    outcome = train_tokenizer(config, training, training_data(data, seed), run_dir, resume=resumable(run_dir),
                              show_progress=show_progress, alone=True)  # fmt: skip
    if not outcome.finished:
        return None
    # The trained weights, not their EMA, which trails far behind in a short run.
    tokenizer = outcome.trained
    evaluation = evaluate_tokenizer(tokenizer, images, batch_size=EVAL_BATCH)
    counts, latents = _codes_and_latents(tokenizer, images, seed)
    codebook = tokenizer.quantize.codebook().detach().cpu()
    save_float16(run_dir / "codebook.npy", codebook)
    save_float16(run_dir / "latents.npy", latents)
    save_array(run_dir / "uses.npy", counts.numpy().astype(np.int32))
    used = counts > 0
    return {
        "data": data,
        "variant": variant,
        "seed": seed,
        **choice,
        "usage_eval": evaluation.codebook_usage,
        "usage_train": tokenizer.codebook_usage(),
        "perplexity": evaluation.perplexity,
        "psnr": evaluation.psnr,
        **geometry_fields("codes", codebook[used], counts[used]),
        **geometry_fields("latents", latents, None),
        "codes_spectrum": pca_spectrum(codebook[used], counts[used]).tolist() if used.sum() > 1 else None,
        "latents_spectrum": pca_spectrum(latents).tolist(),
        "usage_over_steps": [[m["step"], m["usage"]] for m in read_metrics(run_dir)],
    }


def gather_points(results: dict, work_dir: str | Path, out: str | Path, seed: int = 0,
                  latents: int = POINTS_LATENTS) -> list[str]:  # fmt: skip
    """For the notebooks, in one compressed .npz: each recorded run of `seed`, its used codes (float16,
    `{run}/codes`), how often the held-out images use each (`{run}/uses`) and the first `latents` of its kept
    latents, fewer where they would hold more than POINTS_LATENT_VALUES values (`{run}/latents`), read from the
    runs' folders. A run whose folder is gone keeps what an existing `out` holds of it, so that the file grows
    with a study run on several machines. Returns the runs gathered."""
    stored = _stored_points(Path(out))
    arrays, gathered = {}, []
    for name, row in results["runs"].items():
        if row["seed"] != seed:
            continue
        folder = Path(work_dir) / name
        if folder.is_dir():
            uses = np.load(folder / "uses.npy")
            arrays[f"{name}/codes"] = np.load(folder / "codebook.npy")[uses > 0]
            arrays[f"{name}/uses"] = uses[uses > 0]
            kept = np.load(folder / "latents.npy")
            arrays[f"{name}/latents"] = kept[: min(latents, POINTS_LATENT_VALUES // kept.shape[1])]
        elif f"{name}/codes" in stored:
            arrays.update({f"{name}/{part}": stored[f"{name}/{part}"] for part in ("codes", "uses", "latents")})
        else:
            raise FileNotFoundError(f"run {name} has no folder in {work_dir} and no points in {out}")
        gathered.append(name)

    def write(temporary: str) -> None:
        with open(temporary, "wb") as file:
            np.savez_compressed(file, **arrays)

    write_atomically(Path(out), write)
    return gathered


def _stored_points(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as stored:
        return {key: stored[key] for key in stored.files}


@torch.no_grad()
def _codes_and_latents(tokenizer: VQModel, images, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How often the held-out images use each code, and `LATENTS_KEPT` of their latents drawn at random."""
    counts = torch.zeros(tokenizer.config.codebook_size, dtype=torch.long)
    latents = []
    for start in range(0, len(images), EVAL_BATCH):
        pixels = torch.cat([pil_to_tensor(image) for image in images[start : start + EVAL_BATCH]])
        vectors = tokenizer.latent_vectors(pixels)
        counts += torch.bincount(nearest_entries(vectors, tokenizer.quantize.codebook()).cpu(), minlength=len(counts))
        latents.append(vectors.cpu())
    latents = torch.cat(latents)
    drawn = torch.randperm(len(latents), generator=torch.Generator().manual_seed(seed))[:LATENTS_KEPT]
    return counts, latents[drawn]
