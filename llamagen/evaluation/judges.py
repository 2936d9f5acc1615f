"""Judges: small classifiers, trained on real images, that score what the models make.

A judge reads one image and names its attributes: for shapes, the shape, colour, size, position and
background; for digits, the digit. Its penultimate features (256 numbers) are also the space in which
the FID of generated images is measured. A judge is only as good as its accuracy on real held-out
images, which its model card reports.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from llamagen.configs import ModelConfig
from llamagen.data.digits import Digits
from llamagen.data.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Shapes

HELD_OUT_SEED = 1_000  # training draws shapes with seed 0
HELD_OUT_SHAPES = 2_000


def _shapes_heads() -> dict[str, int]:
    return {
        "shape": len(SHAPES),
        "colour": len(COLOURS),
        "size": len(SIZES),
        "position": len(POSITIONS),
        "background": len(BACKGROUNDS),
    }


@dataclass
class JudgeConfig(ModelConfig):
    image_size: int = 64
    heads: dict[str, int] = field(default_factory=dict)  # attribute -> number of values
    width: int = 32
    feature_dim: int = 256

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "shapes": {"image_size": 64, "heads": _shapes_heads()},
        "digits": {"image_size": 32, "heads": {"digit": 10}},
    }
    PRESET_KIND: ClassVar[str] = "judge"

    def __post_init__(self) -> None:
        self.require_positive_ints("image_size", "width", "feature_dim")
        if not self.heads or any(not isinstance(n, int) or n < 2 for n in self.heads.values()):
            raise ValueError(f"a judge needs attributes with at least 2 values each, got {self.heads}")


class Judge(nn.Module):
    """Four strided convolution stages, a 4x4 grid of features (position matters), a head per attribute."""

    checkpoint_kind = "judge"

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        w = config.width
        widths = (w, w, 2 * w, 4 * w, 4 * w)
        layers: list[nn.Module] = [nn.Conv2d(3, w, 3, 1, 1), nn.GroupNorm(8, w), nn.SiLU()]
        for a, b in itertools.pairwise(widths):
            layers += [nn.Conv2d(a, b, 3, 2, 1), nn.GroupNorm(8, b), nn.SiLU()]
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.features = nn.Sequential(nn.Linear(16 * widths[-1], config.feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(config.feature_dim, n) for name, n in config.heads.items()})

    def _check(self, images: torch.Tensor) -> None:
        expected = (3, self.config.image_size, self.config.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"the judge reads (B, {', '.join(map(str, expected))}) images, got {tuple(images.shape)}")

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, feature_dim): the space FIDs are measured in."""
        self._check(images)
        return self.features(self.trunk(images))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute."""
        features = self.embed(images)
        return {name: head(features) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: logits.argmax(-1) for name, logits in self(images).items()}


def judge_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(F.cross_entropy(logits[name], labels[name]) for name in logits)


def accuracies(judge: Judge, images: torch.Tensor, labels: dict[str, torch.Tensor], batch_size: int = 256) -> dict:
    """Fraction right per attribute, and of images with every attribute right ("all")."""
    was_training = judge.training
    judge.eval()
    right = {name: 0 for name in judge.config.heads}
    all_right = 0
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        predicted = judge.predict(chunk)
        every = torch.ones(len(chunk), dtype=torch.bool)
        for name, values in predicted.items():
            hits = values.cpu() == labels[name][start : start + batch_size]
            right[name] += int(hits.sum())
            every &= hits
        all_right += int(every.sum())
    judge.train(was_training)
    return {**{name: count / len(images) for name, count in right.items()}, "all": all_right / len(images)}


def judge_data(kind: str, train: bool, seed: int = 0) -> torch.utils.data.Dataset:
    if kind == "shapes":
        return Shapes(seed=seed if train else HELD_OUT_SEED, length=10**9 if train else HELD_OUT_SHAPES)
    if kind == "digits":
        return Digits("train" if train else "test")
    raise ValueError(f"no judge for {kind!r}; choose shapes or digits")


def labelled(items: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images (B, 3, S, S) and labels {attribute: (B,)} of shapes or digits items."""
    if "attribute_ids" in items[0]:
        names = items[0]["attribute_ids"]
        labels = {name: torch.tensor([item["attribute_ids"][name] for item in items]) for name in names}
    else:
        labels = {"digit": torch.tensor([item["label"] for item in items])}
    return torch.stack([item["image"] for item in items]), labels


def held_out(kind: str, count: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The held-out real images of `kind` and their labels: all of them, or the first `count`."""
    data = judge_data(kind, train=False)
    return labelled([data[i] for i in range(len(data) if count is None else min(count, len(data)))])


@torch.no_grad()
def judge_reconstructions(tokenizer, kind: str, count: int | None = None) -> dict[str, float]:
    """The judge's accuracy on the held-out real images (all, or the first `count`) after a round trip through
    `tokenizer`: whether what the images show survives tokenization."""
    images, labels = held_out(kind, count)
    judge = load_judge(f"{kind}-judge", device=tokenizer.device)
    rounds = [
        tokenizer.detokenize(tokenizer.tokenize(images[i : i + 64].to(tokenizer.device)))
        for i in range(0, len(images), 64)
    ]
    return accuracies(judge, torch.cat(rounds).float().clamp(-1, 1).cpu(), labels)


def load_judge(source, device=None) -> Judge:
    """A judge from a `.safetensors` file of the project or an embedded name ('shapes-judge', 'digits-judge')."""
    from llamagen.checkpoints import load_into, read_model_checkpoint

    path, contents = read_model_checkpoint(source, kind="judge")
    if contents.config is None:
        raise ValueError(f"{str(path)!r} carries no judge config: it is not a judge saved by this project")
    judge_config = JudgeConfig.from_dict(contents.config)
    return load_into(lambda: Judge(judge_config), contents, path, device, None)
