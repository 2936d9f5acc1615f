"""Between two classes: generate from blends of their prefix embeddings.

A class enters the decoder only as one learned prefix embedding (Sec. 2.2), so a blend (1 - w) e_a + w e_b is
a condition the model never saw; where the images switch from one class to the other shows how the model reads
that single vector.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch

from llamagen.gpt import GPT
from llamagen.gpt.conditioning import ClassEmbedding


@torch.no_grad()
def blended_class_generator(gpt: GPT, class_a: int, class_b: int, weights: Sequence[float]) -> GPT:
    """A view of a class-conditional `gpt` whose class i is (1 - weights[i]) e_a + weights[i] e_b.

    It shares every other module (and the KV caches) with `gpt`, so use one or the other at a time; the null
    class, and so guidance, is unchanged.
    """
    if gpt.config.model_type != "c2i":
        raise ValueError("blending classes needs a class-conditional generator")
    embedding = gpt.cls_embedding
    for label in (class_a, class_b):
        if not 0 <= label < embedding.num_classes:
            raise ValueError(f"class id {label} is outside 0..{embedding.num_classes - 1}")
    if not weights:
        raise ValueError("give at least one blending weight")
    table = embedding.embedding_table.weight
    blend = torch.stack([(1 - w) * table[class_a] + w * table[class_b] for w in weights])
    rows = torch.cat([blend, table[embedding.num_classes :]])  # the null class, when there is one
    blended = ClassEmbedding(len(weights), gpt.config.dim, embedding.dropout_prob).to(table.device, table.dtype)
    blended.embedding_table.weight.copy_(rows)
    blended.eval()

    view = copy.copy(gpt)
    view._modules = dict(gpt._modules)
    view.cls_embedding = blended
    view.config = dataclasses.replace(gpt.config, num_classes=len(weights))
    return view
