"""How well a CLIP matches captions and images: retrieval among a set of captioned shapes.

For each caption, the image with the most similar embedding among all `n` images is retrieved, and the other
way round; a retrieval is right when the retrieved item carries the same caption (captions that leave out
attributes can describe several images, and each of them is a right answer). Chance is the share of items that
share the query's caption (1/n when every caption differs).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def caption_retrieval(encoder, items: list[dict], batch: int = 256) -> dict[str, float]:
    """{"text_to_image_top1", "image_to_text_top1", "candidates"} over shapes items (image, caption)."""
    if len(items) < 2:
        raise ValueError("retrieval needs at least two captioned images")
    captions = [item["caption"] for item in items]
    texts = torch.cat([encoder.embed_text(captions[i : i + batch]).float().cpu() for i in range(0, len(items), batch)])
    images = torch.cat([
        encoder.embed_images(torch.stack([item["image"] for item in items[i : i + batch]])).float().cpu()
        for i in range(0, len(items), batch)
    ])  # fmt: skip
    similarity = texts @ images.T  # (captions, images)
    ids = {caption: index for index, caption in enumerate(dict.fromkeys(captions))}
    caption_ids = torch.tensor([ids[caption] for caption in captions])
    to_image = caption_ids[similarity.argmax(1)] == caption_ids
    to_text = caption_ids[similarity.argmax(0)] == caption_ids
    return {
        "text_to_image_top1": float(to_image.float().mean()),
        "image_to_text_top1": float(to_text.float().mean()),
        "candidates": len(items),
    }
