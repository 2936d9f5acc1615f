"""Shapes: a procedural data set of one coloured object on a plain background, with its ground truth.

Every image is a pure function of (seed, index), so the data set needs no files and no download, and its
attributes are known exactly: what the embedded generators are conditioned on, and what their samples are
judged against. A class is a (shape, colour) pair, 40 in all, named like "red star"; a caption describes the
object in one of several phrasings and sometimes leaves out its size, position or background.

Anti-aliasing: each image is drawn at `SUPERSAMPLE` times its size and reduced by averaging boxes, so an
edge pixel holds the fraction of its area the object covers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (50, 180, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 80, 220),
    "purple": (150, 60, 200),
    "pink": (240, 120, 180),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
BACKGROUNDS = {"black": (15, 15, 15), "gray": (128, 128, 128), "white": (240, 240, 240)}

# Class id = shape index x 8 + colour index: "red circle" is 0, "pink cross" is 39.
CLASS_NAMES = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)
# (shape, colour) pairs no caption in text-to-image training shows, so that composition can be measured.
HELD_OUT_PAIRS = frozenset(
    {("star", "green"), ("circle", "purple"), ("triangle", "cyan"), ("cross", "orange"), ("square", "pink")}
)

SUPERSAMPLE = 4
# Radius of the object's circumscribed circle, as a fraction of the image side, by size.
RADIUS = {"small": 0.09, "large": 0.15}
# Centres of the 3x3 grid's cells (fractions of the side), and how far a centre may wander from its cell's.
CELL_CENTRES = (1 / 6, 1 / 2, 5 / 6)
CENTRE_JITTER = 0.02

_POSITION_PHRASES = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}


@dataclass(frozen=True)
class ShapeAttributes:
    shape: str
    colour: str
    size: str
    position: str
    background: str

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, tuple(COLOURS)),
            ("size", self.size, SIZES),
            ("position", self.position, POSITIONS),
            ("background", self.background, tuple(BACKGROUNDS)),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {field} {value!r}; choose one of {', '.join(allowed)}")

    def indices(self) -> dict[str, int]:
        """Each attribute as the index of its value (the labels a judge learns)."""
        return {
            "shape": SHAPES.index(self.shape),
            "colour": tuple(COLOURS).index(self.colour),
            "size": SIZES.index(self.size),
            "position": POSITIONS.index(self.position),
            "background": tuple(BACKGROUNDS).index(self.background),
        }

    @property
    def class_name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def class_id(self) -> int:
        return SHAPES.index(self.shape) * len(COLOURS) + tuple(COLOURS).index(self.colour)


def class_attributes(class_id: int) -> tuple[str, str]:
    """(shape, colour) of a class id."""
    if not 0 <= class_id < len(CLASS_NAMES):
        raise ValueError(f"class id {class_id} is outside 0..{len(CLASS_NAMES) - 1}")
    return SHAPES[class_id // len(COLOURS)], tuple(COLOURS)[class_id % len(COLOURS)]


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """The polygon of a shape inscribed in the circle (cx, cy, r); None for the circle itself."""
    if shape == "circle":
        return None
    if shape == "square":
        h = r / math.sqrt(2)
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # equilateral, pointing up
        return [(cx + r * math.sin(a), cy - r * math.cos(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
    if shape == "star":  # five points; inner radius 0.45 of the outer
        return [
            (cx + radius * math.sin(k * math.pi / 5), cy - radius * math.cos(k * math.pi / 5))
            for k, radius in zip(range(10), [r, 0.45 * r] * 5, strict=True)
        ]
    # cross: a plus sign whose arms are 0.4 of its width wide, its tips on the circle
    a, w = r * 0.93, r * 0.4 * 0.93
    return [
        (cx - w / 2, cy - a), (cx + w / 2, cy - a), (cx + w / 2, cy - w / 2), (cx + a, cy - w / 2),
        (cx + a, cy + w / 2), (cx + w / 2, cy + w / 2), (cx + w / 2, cy + a), (cx - w / 2, cy + a),
        (cx - w / 2, cy + w / 2), (cx - a, cy + w / 2), (cx - a, cy - w / 2), (cx - w / 2, cy - w / 2),
    ]  # fmt: skip


def render(attributes: ShapeAttributes, size: int = 64, jitter: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """Draw one object; `jitter` moves its centre by that fraction of the side (at most CENTRE_JITTER)."""
    if size < 8:
        raise ValueError(f"images must be at least 8 pixels wide, got {size}")
    big = size * SUPERSAMPLE
    row, column = divmod(POSITIONS.index(attributes.position), 3)
    cx = (CELL_CENTRES[column] + jitter[0]) * big
    cy = (CELL_CENTRES[row] + jitter[1]) * big
    r = RADIUS[attributes.size] * big
    image = Image.new("RGB", (big, big), BACKGROUNDS[attributes.background])
    draw = ImageDraw.Draw(image)
    colour = COLOURS[attributes.colour]
    outline = _outline(attributes.shape, cx, cy, r)
    if outline is None:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon(outline, fill=colour)
    return image.reduce(SUPERSAMPLE)


@dataclass(frozen=True)
class Caption:
    text: str
    stated: tuple[str, ...]  # the attributes the text names: shape and colour always, the others sometimes
    phrasing: int  # the template, 0 .. TEMPLATES - 1


OPTIONAL_ATTRIBUTES = ("size", "position", "background")  # shape and colour are always stated
TEMPLATES = 4


def describe(attributes: ShapeAttributes, stated: Collection[str], template: int = 0) -> Caption:
    """The caption in phrasing `template` (0 .. TEMPLATES - 1) that states shape, colour and the optional
    attributes named in `stated`."""
    unknown = set(stated) - {"shape", "colour", *OPTIONAL_ATTRIBUTES}
    if unknown:
        raise ValueError(
            f"unknown attributes {sorted(unknown)}; a caption states shape, colour, {', '.join(OPTIONAL_ATTRIBUTES)}"
        )
    if not 0 <= template < TEMPLATES:
        raise ValueError(f"template {template} is outside 0..{TEMPLATES - 1}")
    size = f"{attributes.size} " if "size" in stated else ""
    where = f" {_POSITION_PHRASES[attributes.position]}" if "position" in stated else ""
    background = attributes.background if "background" in stated else ""
    thing = f"{size}{attributes.colour} {attributes.shape}"
    article = "an" if thing[0] in "aeiou" else "a"
    phrasings = [
        f"{article} {thing}{where}" + (f" on a {background} background" if background else ""),
        f"a picture of {article} {thing}{where}" + (f", {background} background" if background else ""),
        (f"{background} background with " if background else "") + f"{article} {thing}{where}",
        f"{thing}{where}" + (f", on {background}" if background else ""),
    ]
    stated = ("shape", "colour", *(name for name in OPTIONAL_ATTRIBUTES if name in stated))
    return Caption(phrasings[template], stated, template)


def recaption(item: dict, **changes: str) -> str:
    """A shapes item's caption (its phrasing, stating what it states) for the object with `changes` made to its
    attributes, e.g. shape="star": the captions a CLIP must tell apart from the item's own."""
    attributes = dataclasses.replace(ShapeAttributes(**item["attributes"]), **changes)
    return describe(attributes, item["stated"].split(","), item["phrasing"]).text


def caption(attributes: ShapeAttributes, rng: np.random.Generator) -> Caption:
    """One of several phrasings; size, position and background are each left out a third of the time."""
    stated = [name for name in OPTIONAL_ATTRIBUTES if rng.random() >= 1 / 3]
    return describe(attributes, stated, int(rng.integers(TEMPLATES)))


class Shapes(torch.utils.data.Dataset):
    """Random shapes; sample `k` is a pure function of (`seed`, `k`) for any k >= 0.

    With `captioned`, the held-out (shape, colour) pairs are never drawn, as text-to-image training needs.
    With `only_held_out_pairs`, only those pairs are drawn: the captions that measure composition.
    Items are dicts: image (3, size, size) float32 in [-1, 1], label (class id), caption, stated (the attributes
    the caption names, comma-separated), phrasing (the caption's template), attributes and attribute_ids.
    """

    shuffle_each_epoch: ClassVar[bool] = False  # each index is already a fresh random draw
    class_names: ClassVar[tuple[str, ...]] = CLASS_NAMES

    def __init__(
        self,
        size: int = 64,
        seed: int = 0,
        length: int = 1_000_000,
        captioned: bool = False,
        only_held_out_pairs: bool = False,
    ):
        if size < 8:
            raise ValueError(f"images must be at least 8 pixels wide, got {size}")
        if captioned and only_held_out_pairs:
            raise ValueError("captioned leaves the held-out pairs out; only_held_out_pairs draws nothing else")
        self.size, self.seed, self.length, self.captioned = size, seed, length, captioned
        self.only_held_out_pairs = only_held_out_pairs

    def __len__(self) -> int:
        return self.length

    def _draw(self, index: int) -> tuple[ShapeAttributes, np.random.Generator]:
        """The attributes of sample `index`, and its generator, positioned to draw the rest of the sample."""
        rng = np.random.default_rng([self.seed, index])
        while True:
            shape, colour = SHAPES[rng.integers(len(SHAPES))], tuple(COLOURS)[rng.integers(len(COLOURS))]
            held_out = (shape, colour) in HELD_OUT_PAIRS
            if not (self.captioned and held_out) and (held_out or not self.only_held_out_pairs):
                break
        attributes = ShapeAttributes(
            shape=shape,
            colour=colour,
            size=SIZES[rng.integers(len(SIZES))],
            position=POSITIONS[rng.integers(len(POSITIONS))],
            background=tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        )
        return attributes, rng

    def __getitem__(self, index: int) -> dict:
        attributes, rng = self._draw(index)
        jitter = tuple(rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, size=2))
        image = render(attributes, self.size, jitter)
        described = caption(attributes, rng)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return {
            "image": pixels.float() / 127.5 - 1.0,
            "label": attributes.class_id,
            "caption": described.text,
            "stated": ",".join(described.stated),
            "phrasing": described.phrasing,
            "attributes": dataclasses.asdict(attributes),
            "attribute_ids": attributes.indices(),
        }
