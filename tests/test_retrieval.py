"""The CLIP measures on stand-in CLIPs whose embeddings are known: a right word choice counts, a wrong one not;
retrieval finds what a plain loop finds."""

import re

import pytest
import torch

from llamagen.data.shapes import COLOURS, SHAPES, Shapes
from llamagen.evaluation.retrieval import caption_retrieval, word_choice

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


class _KnownEmbeddings:
    """Embeds a caption and an image as the unit vectors given for them."""

    def __init__(self, text: dict[str, torch.Tensor], images: torch.Tensor):
        self.text, self.images = text, images

    def embed_text(self, captions):
        return torch.stack([self.text[caption] for caption in captions])

    def embed_images(self, images):
        return self.images[images[:, 0, 0, 0].long()]  # each image carries its index in its first pixel


def items_for(captions: list[str]) -> list[dict]:
    return [{"caption": caption, "image": torch.full((3, 2, 2), float(i))} for i, caption in enumerate(captions)]


def test_retrieval_by_hand():
    """Two images of "a" (a right answer either way), an image of "c" that looks like "b", and "d" alone: text to
    image gets a, b, a, d right and misses c (4/5); image to text misses the "c" image (4/5). A version that
    asks for the item itself instead of its caption gives 3/5."""
    captions = ["a", "b", "c", "a", "d"]
    axis = dict(zip("abcd", torch.eye(4), strict=True))
    images = torch.stack([axis["a"], axis["b"], axis["b"], axis["a"], axis["d"]])
    measured = caption_retrieval(_KnownEmbeddings(axis, images), items_for(captions), batch=2)
    assert measured == pytest.approx({"text_to_image_top1": 0.8, "image_to_text_top1": 0.8, "candidates": 5})


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_matches_a_plain_loop_on_random_embeddings(seed):
    """Random directions, captions repeated: each direction of retrieval as a loop over queries. Checked by hand
    once: the two directions swapped (argmax over the other axis) fails here."""
    generator = torch.Generator().manual_seed(seed)
    captions = [f"caption {int(i)}" for i in torch.randint(0, 12, (40,), generator=generator)]
    text = {caption: torch.nn.functional.normalize(torch.randn(6, generator=generator), dim=0)
            for caption in dict.fromkeys(captions)}  # fmt: skip
    images = torch.nn.functional.normalize(torch.randn(40, 6, generator=generator), dim=1)
    similarity = [[float(text[caption] @ image) for image in images] for caption in captions]
    to_image = [captions[max(range(40), key=lambda j: row[j])] == captions[q] for q, row in enumerate(similarity)]
    to_text = [captions[max(range(40), key=lambda q: similarity[q][j])] == captions[j] for j in range(40)]
    measured = caption_retrieval(_KnownEmbeddings(text, images), items_for(captions), batch=7)
    assert measured["text_to_image_top1"] == pytest.approx(sum(to_image) / 40)
    assert measured["image_to_text_top1"] == pytest.approx(sum(to_text) / 40)
