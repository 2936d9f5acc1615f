"""A folder of images through a tokenizer, at any scale: what `llamagen reconstruct --folder` runs.

The paper's rFID (Table 3) reads the 50,000 ImageNet validation images at 256x256 and their reconstructions.
Every image file under the folder (sorted by path) is resized on its shorter side and centre-cropped to the
size asked (bicubic), tokenized and decoded; the set is written in shards (`llamagen.evaluation.shards`:
atomically, resumed after a stop, under any number of processes). The output `.npz` holds the reconstructions
as `arr_0` (uint8 NHWC, the ADM evaluator's format) with each image's `psnr` and `ssim`; the originals, as the
tokenizer saw them, go to a second file beside it (`ORIGINALS_SUFFIX`), the reference that
`llamagen eval samples` compares the reconstructions with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from llamagen.evaluation.shards import ShardPlan, finish, gather, save_npz, write_shards
from llamagen.files import write_atomically
from llamagen.images import load_image, to_rgb
from llamagen.tokenizer.reconstruction import reconstruct_batch

ORIGINALS_SUFFIX = ".originals.npz"


def originals_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".npz") + ORIGINALS_SUFFIX)


def plan(files: Sequence[Path], folder: Path, tokenizer: str, size: int, shard_size: int) -> ShardPlan:
    """The set's shards, recorded by the tokenizer, the size and a digest of the files' paths in the folder."""
    names = [str(path.relative_to(folder)) for path in files]
    digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()
    return ShardPlan(len(files), shard_size, {"tokenizer": tokenizer, "size": size, "files_sha256": digest})


def fitted(image: Image.Image, size: int) -> Image.Image:
    """`image` resized on its shorter side to `size` and centre-cropped to a square (bicubic)."""
    return ImageOps.fit(to_rgb(image), (size, size), Image.Resampling.BICUBIC)


def write_reconstructions(tokenizer, files: Sequence[Path], shards: ShardPlan, out: Path, size: int, rank: int = 0,
                          world: int = 1, batch_size: int = 32,
                          progress: Callable[[int], None] | None = None) -> None:  # fmt: skip
    """This process's shards (`rank` of `world`), after `check_shards` and `start_shards` of `shards`."""

    def make(indices: Sequence[int]) -> dict[str, np.ndarray]:
        results = []
        for start in range(0, len(indices), batch_size):
            batch = [fitted(load_image(files[i]), size) for i in indices[start : start + batch_size]]
            results += reconstruct_batch(tokenizer, batch)
        return {
            "reconstructions": np.stack([np.asarray(result.reconstruction) for result in results]),
            "originals": np.stack([np.asarray(result.original) for result in results]),
            "psnr": np.asarray([result.psnr for result in results]),
            "ssim": np.asarray([result.ssim for result in results]),
        }

    write_shards(shards, out, make, rank, world, progress)


def gather_reconstructions(shards: ShardPlan, out: Path) -> dict[str, np.ndarray]:
    """The shards joined: the reconstructions (with PSNR and SSIM) at `out`, the originals beside it."""
    arrays = gather(shards, out)
    write_atomically(originals_path(out), lambda temporary: save_npz(temporary, arr_0=arrays["originals"]))
    write_atomically(out, lambda temporary: save_npz(temporary, arr_0=arrays["reconstructions"], psnr=arrays["psnr"],
                                                     ssim=arrays["ssim"]))  # fmt: skip
    finish(out)
    return arrays
