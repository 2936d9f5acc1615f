"""Sample sets for the standard evaluation, written at any scale: what `llamagen sample` runs.

Image i of a set has its own seed (`image_seed`) and its own condition, both from i alone, and is drawn with its
own random generator (`Pipeline(seed=[...])`): its tokens do not depend on the batch it is drawn in. The set is
cut into shards of `SampleSet.shard_size` images, each drawn in the same batches by whichever process draws it,
so the set is the same, to the bit, whatever the number of processes (another batch size keeps the tokens but
may move a pixel by a level: the decoder's arithmetic differs with the batch). Process r of W writes shards
r, r + W, ..., each atomically
into a folder beside the output, and skips a shard already there, so a killed run resumes where it stopped. The
folder records what the set is (model, conditions, seed, sampling): a run that would mix two sets in it is
refused. The first process then gathers the shards into the ADM evaluator's format, an .npz whose `arr_0` holds
the images as uint8 (N, H, W, 3), with `labels` for class labels, and removes the folder.

Images are resized, where asked, as the original's `sample_c2i_ddp.py` does for its 384-pixel models (bicubic,
no antialiasing) before they are rounded to uint8.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch.nn.functional as F

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
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {self.shard_size}")
        image_seed(self.seed, len(self) - 1)

    def __len__(self) -> int:
        return len(self.class_labels if self.class_labels is not None else self.prompts)

    @property
    def shards(self) -> int:
        return -(-len(self) // self.shard_size)

    def shard_indices(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, len(self)))

    def conditions(self, indices: Sequence[int]) -> dict:
        """The pipeline's condition arguments for these images."""
        if self.class_labels is not None:
            return {"class_labels": [self.class_labels[i] for i in indices]}
        return {"prompts": [self.prompts[i] for i in indices]}

    def identity(self, model: str) -> dict:
        """What a shard folder records: the set's settings and a digest of its conditions (not the list)."""
        settings = asdict(self)
        conditions = settings.pop("class_labels") or settings.pop("prompts")
        settings.pop("prompts", None)
        digest = hashlib.sha256(json.dumps(list(conditions)).encode()).hexdigest()
        return {"model": model, "images": len(self), "conditions_sha256": digest, **settings,
                "sampling": dict(self.sampling)}  # fmt: skip


def per_class(num_classes: int, images_per_class: int, **settings) -> SampleSet:
    """`images_per_class` images of each class, the classes interleaved (image i is of class i mod the number
    of classes), so that any first part of the set is balanced too."""
    if num_classes < 1 or images_per_class < 1:
        raise ValueError(f"per_class needs at least one class and one image each, got {num_classes}, "
                         f"{images_per_class}")  # fmt: skip
    labels = tuple(i % num_classes for i in range(num_classes * images_per_class))
    return SampleSet(class_labels=labels, prompts=None, **settings)


def shard_folder(out: Path) -> Path:
    return out.with_name(out.name + ".shards")


def _shard_path(folder: Path, shard: int) -> Path:
    return folder / f"shard_{shard:06d}.npz"


def check_shards(spec: SampleSet, out: Path, model: str) -> None:
    """Refuse a shard folder beside `out` that holds another set (any process may check, before any work)."""
    record = shard_folder(out) / "set.json"
    if not record.is_file():
        return
    found, identity = json.loads(record.read_text()), _identity(spec, model)
    if found != identity:
        changed = sorted(key for key in identity.keys() | found.keys() if found.get(key) != identity.get(key))
        raise ValueError(f"{str(record.parent)!r} holds shards of another sample set ({', '.join(changed)} differ): "
                         "remove it, or write this set elsewhere")  # fmt: skip


def start_shards(spec: SampleSet, out: Path, model: str) -> None:
    """The shard folder beside `out`, made and told what set it holds (one process, after `check_shards`)."""
    folder = shard_folder(out)
    if (folder / "set.json").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_identity(spec, model), indent=1)
    write_atomically(folder / "set.json", lambda temporary: Path(temporary).write_text(text))


def _identity(spec: SampleSet, model: str) -> dict:
    return json.loads(json.dumps(spec.identity(model)))  # as JSON reads it back (lists, not tuples)


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


def write_shards(pipe, spec: SampleSet, out: Path, rank: int = 0, world: int = 1, batch_size: int = 32,
                 png_dir: Path | None = None, progress: Callable[[int], None] | None = None) -> None:  # fmt: skip
    """This process's shards of the set (`rank` of `world`) into the folder `start_shards` made, each written
    atomically; shards already there are kept. `progress(images)` after each shard drawn here."""
    folder = shard_folder(out)
    for shard in range(rank, spec.shards, world):
        path = _shard_path(folder, shard)
        if path.is_file():
            continue
        indices = spec.shard_indices(shard)
        images = _draw(pipe, spec, indices, batch_size)
        write_atomically(path, lambda temporary, images=images, indices=indices: _save_npz(
            temporary, images=images, indices=np.asarray(indices)))  # fmt: skip
        if png_dir is not None:
            _write_pngs(png_dir, indices, images)
        if progress is not None:
            progress(len(indices))


def _save_npz(temporary, **arrays) -> None:
    with open(temporary, "wb") as file:
        np.savez(file, **arrays)


def _write_pngs(folder: Path, indices: Sequence[int], images: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index, image in zip(indices, images, strict=True):
        path = folder / f"{index:06d}.png"
        write_atomically(path, lambda temporary, image=image: Image.fromarray(image).save(temporary, format="png"))


def gather(spec: SampleSet, out: Path) -> np.ndarray:
    """The set's shards joined, in order, into the .npz at `out` (`arr_0`, and `labels` for class labels);
    then the shard folder removed. Refused while a shard is missing."""
    folder = shard_folder(out)
    missing = [shard for shard in range(spec.shards) if not _shard_path(folder, shard).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {spec.shards} shards of {str(out)!r} are not written yet "
                                f"(the first: {missing[0]}): run the command again to finish them")  # fmt: skip
    parts = []
    for shard in range(spec.shards):
        with np.load(_shard_path(folder, shard)) as loaded:
            if not np.array_equal(loaded["indices"], np.asarray(spec.shard_indices(shard))):
                raise ValueError(f"shard {shard} of {str(out)!r} holds other images than its place in the set")
            parts.append(loaded["images"])
    images = np.concatenate(parts)
    arrays = {"arr_0": images}
    if spec.class_labels is not None:
        arrays["labels"] = np.asarray(spec.class_labels, dtype=np.int64)
    write_atomically(out, lambda temporary: _save_npz(temporary, **arrays))
    shutil.rmtree(folder)
    return images
