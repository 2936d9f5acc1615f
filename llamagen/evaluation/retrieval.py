"""How well a CLIP matches captions and images: retrieval among a set of captioned shapes, and the choice of
the right shape and colour word for an image.

For each caption, the image with the most similar embedding among all `n` images is retrieved, and the other
way round; a retrieval is right when the retrieved item carries the same caption (captions that leave out
attributes can describe several images, and each of them is a right answer). Chance is the share of items that
share the query's caption (1/n when every caption differs).
"""

from __future__ import annotations

import torch

from llamagen.data.shapes import COLOURS, SHAPES, recaption


@torch.no_grad()
def caption_retrieval(encoder, items: list[dict], batch: int = 256) -> dict[str, float]:
    """{"text_to_image_top1", "image_to_text_top1", "candidates"} over shapes items (image, caption)."""
    if len(items) < 2:
        raise ValueError("retrieval needs at least two captioned images")
    captions = [item["caption"] for item in items]
    texts, images = _text_embeddings(encoder, captions, batch), _image_embeddings(encoder, items, batch)
    to_image, to_text = top1_both_ways(texts @ images.T, captions)
    return {"text_to_image_top1": to_image, "image_to_text_top1": to_text, "candidates": len(items)}


def top1_both_ways(similarity: torch.Tensor, captions: list[str]) -> tuple[float, float]:
    """Top-1 retrieval over item i's caption `captions[i]` and (captions, items) `similarity`: the share of
    captions whose best item is theirs, and of items whose best caption is theirs; an item or caption counts as
    right when it carries the same caption (captions repeat)."""
    ids = {caption: index for index, caption in enumerate(dict.fromkeys(captions))}
    caption_ids = torch.tensor([ids[caption] for caption in captions])
    to_items = caption_ids[similarity.argmax(1)] == caption_ids
    to_captions = caption_ids[similarity.argmax(0)] == caption_ids
    return float(to_items.float().mean()), float(to_captions.float().mean())


@torch.no_grad()
def word_choice(encoder, items: list[dict], batch: int = 256) -> dict[str, float]:
    """How often the CLIP scores each image's own caption above the same caption of the object in every other
    shape (or colour): {"shape": share right, "colour": share right}.

    This is the distinction a text-to-image model conditioned on the CLIP's text tower must draw: retrieval
    can succeed on colour, size and position alone, while a text tower that barely tells the shape words
    apart leaves the generator guessing the shape (chance: 1/5 for shape, 1/8 for colour).
    """
    images = _image_embeddings(encoder, items, batch)
    right = {}
    for attribute, words in (("shape", SHAPES), ("colour", tuple(COLOURS))):
        # Rephrased whole, not by swapping the word: "an orange star" becomes "a red star", not "an red star".
        variants = [recaption(item, **{attribute: word}) for item in items for word in words]
        texts = _text_embeddings(encoder, variants, batch).view(len(items), len(words), -1)
        scores = torch.einsum("nwd,nd->nw", texts, images)
        own = torch.tensor([words.index(item["attributes"][attribute]) for item in items])
        right[attribute] = float((scores.argmax(1) == own).float().mean())
    return right


def _text_embeddings(encoder, captions: list[str], batch: int) -> torch.Tensor:
    return torch.cat([encoder.embed_text(captions[i : i + batch]).float().cpu()
                      for i in range(0, len(captions), batch)])  # fmt: skip


def _image_embeddings(encoder, items: list[dict], batch: int) -> torch.Tensor:
    return torch.cat([
        encoder.embed_images(torch.stack([item["image"] for item in items[i : i + batch]])).float().cpu()
        for i in range(0, len(items), batch)
    ])  # fmt: skip
