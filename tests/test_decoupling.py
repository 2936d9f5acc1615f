"""The decoupling measure (`llamagen.analysis.decoupling`) on drawers whose answer is known: one that draws the
caption's shape and colour and takes everything else from the seed is decoupled (a changed word changes only
its attribute); one that places the object by the whole caption leaks every word into the position."""

import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llamagen.analysis.decoupling import swapped_value, word_swaps
from llamagen.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeAttributes,
    Shapes,
    render,
)
from llamagen.images import pil_to_tensor


class Drawer:
    """A stand-in for a text-to-image pipeline: renders the shape and colour its caption names; size, position
    and background come from the seed and the row, or, with `leaky`, the position from the caption too."""

    model_type = "t2i"
    device = torch.device("cpu")

    def __init__(self, leaky: bool = False):
        self.leaky = leaky

    def __call__(self, prompts, seed, **sampling):
        pixels = []
        for row, prompt in enumerate(prompts):
            words = prompt.replace(",", " ").split()
            rng = np.random.default_rng(seed + row)
            size, position, background = (SIZES[rng.integers(len(SIZES))], POSITIONS[rng.integers(len(POSITIONS))],
                                          tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))])  # fmt: skip
            if self.leaky:
                position = POSITIONS[zlib.crc32(f"{prompt} {seed + row}".encode()) % len(POSITIONS)]
            attributes = ShapeAttributes(
                shape=next(word for word in words if word in SHAPES),
                colour=next(word for word in words if word in COLOURS),
                size=size,
                position=position,
                background=background,
            )
            pixels.append(pil_to_tensor(render(attributes)))
        return SimpleNamespace(pixels=torch.cat(pixels))


ITEMS = [Shapes(seed=3, length=40, captioned=True)[i] for i in range(40)]


def by_word(swaps):
    return {swap.word: swap for swap in swaps}


def test_a_drawer_that_reads_each_word_alone_is_decoupled():
    swaps = by_word(word_swaps(Drawer(), ITEMS))
    for word, swap in swaps.items():
        assert swap.took_effect.n == len(ITEMS) and float(swap.took_effect.mean) > 0.9
        for name, changed in swap.changed.items():
            # Same seed: nothing but the changed word's attribute moves (the judge's rare slips aside)...
            assert float(changed.mean) <= 0.1, (word, name)
        # ...while between two seeds what the seed decides reads differently most of the time: the control moves.
        assert float(swap.control["position"].mean) > 0.6
        assert float(swap.control["position"].low) > float(swap.changed["position"].high)


def test_a_drawer_that_places_by_the_whole_caption_leaks_every_word_into_the_position():
    swaps = by_word(word_swaps(Drawer(leaky=True), ITEMS))
    for swap in swaps.values():
        assert float(swap.changed["position"].mean) > 0.6
        assert float(swap.changed["shape" if swap.word == "colour" else "colour"].mean) <= 0.1


def test_a_swapped_word_is_another_value_and_never_a_held_out_pair():
    rng = np.random.default_rng(0)
    for item in ITEMS:
        for word in ("shape", "colour"):
            value = swapped_value(item, word, rng)
            assert value != item["attributes"][word]
            pair = {**item["attributes"], word: value}
            assert (pair["shape"], pair["colour"]) not in HELD_OUT_PAIRS


def test_class_pipelines_are_refused():
    with pytest.raises(ValueError, match="text-conditional"):
        word_swaps(SimpleNamespace(model_type="c2i"), ITEMS)
