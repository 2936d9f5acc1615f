"""Image codes extracted once, for generator training: the tokenizer runs over the data set a single time.

The original trains its generators on codes extracted offline, ten per ImageNet image: the image is
enlarged to 1.1x the training size and cut into the five crops of torchvision's `ten_crop` (four corners
and the centre) and their mirror images; each training sample then reads one of them at random. Here the
augmentation is a choice, because it is not always harmless: a mirrored digit is no digit, and a caption
that says "on the left" is wrong about a mirrored image.

A codes file is a safetensors file: `codes` (N, A, h, w) int16 (A augmentations per image), `labels` (N,)
for class-conditional data, and in its metadata the captions (JSON), the class names, the tokenizer that
made it and how.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from llamagen.files import write_atomically

# The original's `crop_range`: images are enlarged by this factor before the crops are cut.
CROP_ENLARGEMENT = 1.1
AUGMENTATIONS = {"none": 1, "flip": 2, "crops": 5, "ten-crop": 10}


def augmented_views(images: torch.Tensor, augment: str, size: int) -> torch.Tensor:
    """(B, 3, S, S) images -> (B, A, 3, size, size): the views a codes file holds for each image.

    For the crop modes the images come enlarged (S = round(size x CROP_ENLARGEMENT)).
    """
    if augment == "none":
        return images[:, None]
    if augment == "flip":
        return torch.stack([images, images.flip(-1)], dim=1)
    import torchvision.transforms.functional as TF  # here: importing torchvision takes a second and a half

    crops = TF.ten_crop(images, [size, size])  # five crops, then the same five of the mirror image
    return torch.stack(crops[: AUGMENTATIONS[augment]], dim=1)


def source_size(augment: str, size: int) -> int:
    """The side the data set must render at for `augment` to cut `size`-pixel views."""
    return round(size * CROP_ENLARGEMENT) if augment in ("crops", "ten-crop") else size


@torch.no_grad()
def extract_codes(
    tokenizer,
    dataset,
    out_path: str | os.PathLike,
    size: int,
    augment: str = "none",
    count: int | None = None,
    condition: str = "label",
    batch_size: int = 64,
    description: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> Path:
    """Tokenize the first `count` items of `dataset` (all, for a finite one) into a codes file, atomically.

    Items are the data sets' dicts; `condition` names the entry kept beside the codes: "label" (class
    ids) or "caption". `dataset` must render at `source_size(augment, size)`. `description` (the data
    spec, the tokenizer's name) goes into the metadata.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if condition not in ("label", "caption"):
        raise ValueError(f"condition must be 'label' or 'caption', got {condition!r}")
    count = len(dataset) if count is None else count
    if count < 1 or count > len(dataset):
        raise ValueError(f"cannot extract {count} images from a data set of {len(dataset)}")
    codes, conditions, skipped = [], [], 0
    device = tokenizer.device
    for start in tqdm(range(0, count, batch_size), disable=not show_progress, desc="extracting codes"):
        items = [dataset[i] for i in range(start, min(count, start + batch_size))]
        readable = [item for item in items if item is not None]
        skipped += len(items) - len(readable)
        if not readable:
            continue
        if condition not in readable[0]:
            raise ValueError(f"the data set's items have no {condition}s (they have {', '.join(readable[0])})")
        images = torch.stack([item["image"] for item in readable]).to(device)
        views = augmented_views(images, augment, size)  # (B, A, 3, size, size)
        batch, views_per_image = views.shape[:2]
        grid = tokenizer.tokenize(views.flatten(0, 1))  # (B x A, h, w)
        codes.append(grid.view(batch, views_per_image, *grid.shape[1:]).to(torch.int16).cpu())
        conditions += [item[condition] for item in readable]
    if not codes:
        raise ValueError("none of the images could be read: no codes to write")
    tensors = {"codes": torch.cat(codes)}
    if condition == "label":
        tensors["labels"] = torch.tensor(conditions, dtype=torch.int64)
    metadata = {
        "augment": augment,
        "image_size": str(size),
        "codebook_size": str(tokenizer.config.codebook_size),
        "skipped_images": str(skipped),
        "captions": json.dumps(conditions if condition == "caption" else []),
        "class_names": json.dumps(list(getattr(dataset, "class_names", ())) if condition == "label" else []),
        **{key: str(value) for key, value in (description or {}).items()},
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out_path, lambda temporary: save_file(tensors, temporary, metadata=metadata))
    return out_path


@dataclass
class CodesInfo:
    """What a codes file says about itself."""

    images: int
    views: int  # augmentations per image
    grid: int  # codes per side
    codebook_size: int
    class_names: list[str]
    conditioning: str  # "c2i" (class labels) or "t2i" (captions)
    metadata: dict[str, str]


class CodesDataset(torch.utils.data.Dataset):
    """Training items from a codes file: {"tokens": (h*w,) int64 raster order, "label" or "caption"}.

    Item k reads image k mod N in one of its views, drawn from (seed, k): epochs see other views.
    """

    shuffle_each_epoch = True

    def __init__(self, path: str | os.PathLike, seed: int = 0):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no codes file at {str(path)!r} (make one with `llamagen extract-codes`)")
        try:
            tensors = load_file(path)
            with safe_open(path, framework="pt") as file:
                metadata = file.metadata() or {}
        except Exception as error:
            raise ValueError(
                f"{str(path)!r} is not a codes file written by `llamagen extract-codes`: {error}"
            ) from error
        if "codes" not in tensors or tensors["codes"].dim() != 4:
            raise ValueError(f"{str(path)!r} holds no (N, views, h, w) 'codes' tensor: not a codes file")
        self.codes, self.labels, self.seed = tensors["codes"], tensors.get("labels"), seed
        self.captions = json.loads(metadata.get("captions", "[]"))
        n, views, grid, _ = self.codes.shape
        self.info = CodesInfo(
            images=n,
            views=views,
            grid=grid,
            codebook_size=int(metadata.get("codebook_size", 0)),
            class_names=json.loads(metadata.get("class_names", "[]")),
            conditioning="t2i" if self.captions else "c2i",
            metadata=metadata,
        )
        if self.labels is None and not self.captions:
            raise ValueError(f"{str(path)!r} has neither class labels nor captions: nothing to condition on")

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> dict:
        image = index % len(self.codes)
        view = int(np.random.default_rng([self.seed, index]).integers(self.info.views))
        item = {"tokens": self.codes[image, view].flatten().long()}
        if self.captions:
            item["caption"] = self.captions[image]
        else:
            item["label"] = int(self.labels[image])
        return item

    def tokens(self, batch: dict, device: torch.device) -> torch.Tensor:
        """A batch's (B, h*w) tokens on `device`."""
        return batch["tokens"].to(device)


class CodesOnTheFly(torch.utils.data.Dataset):
    """Images tokenized while the generator trains on them, instead of codes extracted beforehand: slower per
    step, but no codes file, and every epoch sees the data set's own augmentation (fresh photo crops).

    Items are {"image", "label" or "caption"}; the training step turns a batch's images into tokens with
    `tokens(batch, device)`.
    """

    def __init__(self, dataset, tokenizer, image_size: int, condition: str = "label", description=None):
        if condition not in ("label", "caption"):
            raise ValueError(f"condition must be 'label' or 'caption', got {condition!r}")
        factor = tokenizer.config.downsample_factor
        if image_size % factor:
            raise ValueError(f"image size {image_size} is not a multiple of the tokenizer's downsampling {factor}")
        self.dataset, self.tokenizer, self.condition = dataset, tokenizer.eval(), condition
        self.shuffle_each_epoch = getattr(dataset, "shuffle_each_epoch", True)
        self.info = CodesInfo(
            images=len(dataset),
            views=1,
            grid=image_size // factor,
            codebook_size=tokenizer.config.codebook_size,
            class_names=list(getattr(dataset, "class_names", ())) if condition == "label" else [],
            conditioning="c2i" if condition == "label" else "t2i",
            metadata={key: str(value) for key, value in (description or {}).items()},
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict | None:
        item = self.dataset[index]
        if item is None:
            return None
        if self.condition not in item:
            raise ValueError(f"the data set's items have no {self.condition}s (they have {', '.join(item)})")
        return {"image": item["image"], self.condition: item[self.condition]}

    @torch.no_grad()
    def tokens(self, batch: dict, device: torch.device) -> torch.Tensor:
        self.tokenizer.to(device)
        return self.tokenizer.tokenize(batch["image"].to(device)).flatten(1)
