"""Sample sets for the standard evaluation, written at any scale: what `llamagen sample` runs.

Image i of a set has its own seed (`image_seed`) and its own condition, both from i alone, and is drawn with its
own random generator (`Pipeline(seed=[...])`): its tokens do not depend on the batch it is drawn in. The set is
written in shards (`llamagen.evaluation.shards`: atomically, resumed after a stop, the set recorded), each drawn
in the same batches by whichever process draws it, so the set is the same, to the bit, whatever the number of
processes (another batch size keeps the tokens but may move a pixel by a level: the decoder's arithmetic
differs with the batch). The output is the ADM evaluator's format, an .npz whose `arr_0` holds the images as
uint8 (N, H, W, 3), with `labels` for class labels.

Images are resized, where asked, as the original's `sample_c2i_ddp.py` does for its 384-pixel models (bicubic,
no antialiasing) before they are rounded to uint8.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from llamagen.evaluation.shards import ShardPlan, finish, gather, save_npz, write_shards
from llamagen.files import write_atomically
from llamagen.images import tensor_to_uint8

# Seeds of images: the set's seed in the high 32 bits, the image's index in the low ones.
INDEX_BITS = 32


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` of a set drawn with `seed`: distinct for every (seed, index) pair."""
    if not 0 <= seed < 2 ** (64 - INDEX_BITS) or not 0 <= index < 2**INDEX_BITS:
        raise ValueError(f"seed must be in [0, 2**{64 - INDEX_BITS}) and index in [0, 2**{INDEX_BITS}), got {seed}, "
                         f"{index}")  # fmt: skip
    return (seed << INDEX_BITS) + index


@dataclass(frozen=True)
class SampleSet:
    """What a set is: each image's condition (class ids or captions, by index), the seed, the sampling options,
    the size the images are resized to (None: as drawn), and the images a shard holds."""

    class_labels: tuple[int, ...] | None
    prompts: tuple[str, ...] | None
    seed: int = 0
    sampling: tuple[tuple[str, object], ...] = ()
    resize: int | None = None
    shard_size: int = 1000

    def __post_init__(self):
        if (self.class_labels is None) == (self.prompts is None):
            raise ValueError("a sample set needs class labels or prompts, one of them")
        if len(self) < 1:
            raise ValueError("a sample set needs at least one image")
        image_seed(self.seed, len(self) - 1)

    def __len__(self) -> int:
        return len(self.class_labels if self.class_labels is not None else self.prompts)

    def conditions(self, indices: Sequence[int]) -> dict:
        """The pipeline's condition arguments for these images."""
        if self.class_labels is not None:
            return {"class_labels": [self.class_labels[i] for i in indices]}
        return {"prompts": [self.prompts[i] for i in indices]}

    def plan(self, model: str) -> ShardPlan:
        """The set's shards, recorded by its settings and a digest of its conditions (not the list)."""
        settings = asdict(self)
        conditions = settings.pop("class_labels") or settings.pop("prompts")
        settings.pop("prompts", None)
        shard_size = settings.pop("shard_size")
        digest = hashlib.sha256(json.dumps(list(conditions)).encode()).hexdigest()
        identity = {"model": model, "conditions_sha256": digest, **settings, "sampling": dict(self.sampling)}
        return ShardPlan(len(self), shard_size, identity)


def per_class(num_classes: int, images_per_class: int, **settings) -> SampleSet:
    """`images_per_class` images of each class, the classes interleaved (image i is of class i mod the number
    of classes), so that any first part of the set is balanced too."""
    if num_classes < 1 or images_per_class < 1:
        raise ValueError(f"per_class needs at least one class and one image each, got {num_classes}, "
                         f"{images_per_class}")  # fmt: skip
    labels = tuple(i % num_classes for i in range(num_classes * images_per_class))
    return SampleSet(class_labels=labels, prompts=None, **settings)


def _draw(pipe, spec: SampleSet, indices: Sequence[int], batch_size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) images of these indices, drawn `batch_size` at a time."""
    batches = []
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        output = pipe(**spec.conditions(batch), seed=[image_seed(spec.seed, i) for i in batch], **dict(spec.sampling))
        pixels = output.pixels
        if spec.resize is not None and pixels.shape[-1] != spec.resize:
            pixels = F.interpolate(pixels, size=(spec.resize, spec.resize), mode="bicubic")
        batches.append(tensor_to_uint8(pixels))
    return np.concatenate(batches)


def write_set(pipe, spec: SampleSet, out: Path, model: str, rank: int = 0, world: int = 1, batch_size: int = 32,
              png_dir: Path | None = None, progress: Callable[[int], None] | None = None) -> None:  # fmt: skip
    """This process's shards of the set (`rank` of `world`), after `check_shards` and `start_shards` of
    `spec.plan(model)`; with `png_dir`, each image also as a PNG."""

    def make(indices: Sequence[int]) -> dict[str, np.ndarray]:
        images = _draw(pipe, spec, indices, batch_size)
        if png_dir is not None:
            _write_pngs(png_dir, indices, images)
        return {"images": images}

    write_shards(spec.plan(model), out, make, rank, world, progress)


def _write_pngs(folder: Path, indices: Sequence[int], images: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index, image in zip(indices, images, strict=True):
        path = folder / f"{index:06d}.png"
        write_atomically(path, lambda temporary, image=image: Image.fromarray(image).save(temporary, format="png"))


def gather_set(spec: SampleSet, out: Path, model: str) -> np.ndarray:
    """The shards joined into the .npz at `out` (`arr_0`, and `labels` for class labels), the folder removed."""
    arrays = {"arr_0": gather(spec.plan(model), out)["images"]}
    if spec.class_labels is not None:
        arrays["labels"] = np.asarray(spec.class_labels, dtype=np.int64)
    write_atomically(out, lambda temporary: save_npz(temporary, **arrays))
    finish(out)
    return arrays["arr_0"]
