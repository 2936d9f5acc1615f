"""The CLIP measures on a stand-in CLIP whose embeddings are known: a right word choice counts, a wrong one not."""

import re

import pytest
import torch

from llamagen.data.shapes import COLOURS, SHAPES, Shapes
from llamagen.evaluation.retrieval import word_choice

WORDS = [*SHAPES, *COLOURS]


def _one_hot(words: list[str]) -> torch.Tensor:
    return sum(torch.eye(len(WORDS))[WORDS.index(word)] for word in words)


class _WordSpotter:
    """Embeds a caption as the one-hot sum of the shape and colour words in it, and each image as that of the
    words it looks like (set by the test)."""

    looks_like: list[tuple[str, str]]

    def embed_text(self, captions: list[str]) -> torch.Tensor:
        return torch.stack([_one_hot([w for w in WORDS if re.search(rf"\b{w}\b", c)]) for c in captions])

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([_one_hot(list(words)) for words in self.looks_like[: len(images)]])


def test_word_choice_counts_the_images_whose_own_words_score_highest():
    items = [Shapes(seed=0, captioned=True)[i] for i in range(10)]
    clip = _WordSpotter()
    # The first four images look like the next shape over; every image has the colour its caption says.
    clip.looks_like = [
        (SHAPES[(SHAPES.index(item["attributes"]["shape"]) + (i < 4)) % len(SHAPES)], item["attributes"]["colour"])
        for i, item in enumerate(items)
    ]  # fmt: skip
    assert word_choice(clip, items) == pytest.approx({"shape": 0.6, "colour": 1.0})
