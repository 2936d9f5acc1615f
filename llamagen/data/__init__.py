"""Data the project trains and demonstrates on, all available offline: rendered shapes, scikit-learn's digits,
crops of the photos scikit-image (and Gradio) ship, and your folders (`open_dataset`); captioned human motion
(`motion`); batches that depend only on (seed, step) (`batches.py`); codes for generator training
(`codes.py`)."""

from __future__ import annotations

import torch

DATA_SETS = ("photos", "photos+gradio", "shapes", "digits", "folder:PATH", "captions:FILE.jsonl")


def open_dataset(spec: str, size: int, seed: int = 0, **options) -> torch.utils.data.Dataset:
    """A training data set by name: photos (scikit-image's), photos+gradio (with Gradio's six), shapes, digits,
    folder:PATH (ImageNet layout), captions:FILE.jsonl."""
    kind, _, path = spec.partition(":")
    if kind in ("photos", "photos+gradio"):
        from llamagen.data.photos import PhotoCrops

        return PhotoCrops(size=size, seed=seed, photos=kind, **options)
    if kind == "shapes":
        from llamagen.data.shapes import Shapes

        return Shapes(size=size, seed=seed, **options)
    if kind == "digits":
        from llamagen.data.digits import Digits

        return Digits(size=size, **options)
    if kind in ("folder", "captions") and path:
        from llamagen.data.folders import CaptionedImages, ImageFolder

        return (ImageFolder if kind == "folder" else CaptionedImages)(path, size=size, seed=seed)
    raise ValueError(f"unknown data set {spec!r}; choose one of {', '.join(DATA_SETS)}")
