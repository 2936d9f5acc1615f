"""How well a motion CLIP matches captions and motions: retrieval among a set of captioned clips, and the
choice of a clip's own parameter value over the others.

Retrieval is right when the retrieved item carries the query's caption (as `evaluation.retrieval`). The
parameter choice asks what the text-to-motion generator needs from the text tower: for each action of a
clip and each of its parameters, is the caption stating the clip's value scored above every caption that
states another value and is otherwise the same (both phrased from one random stream)? Chance is 1 over the
number of values (1/2 for a side, 1/3 for a speed).
"""

from __future__ import annotations

import numpy as np
import torch

from llamagen.data.motion import PARAMETERS
from llamagen.data.motion.captions import describe
from llamagen.data.motion.clips import Segment
from llamagen.evaluation.retrieval import top1_both_ways
from llamagen.motion.text import MotionTextEncoder

BATCH = 128


@torch.no_grad()
def motion_embeddings(encoder: MotionTextEncoder, items: list[dict]) -> torch.Tensor:
    """(N, embed_dim) unit-length embeddings of motion items (features (T, 263), frames)."""
    parts = []
    for start in range(0, len(items), BATCH):
        batch = items[start : start + BATCH]
        longest = max(item["frames"] for item in batch)
        features = torch.zeros(len(batch), longest, batch[0]["features"].shape[1])
        for row, item in enumerate(batch):
            features[row, : item["frames"]] = item["features"][: item["frames"]]
        parts.append(encoder.embed_motions(features, torch.tensor([item["frames"] for item in batch])))
    return torch.cat(parts).float()


@torch.no_grad()
def text_embeddings(encoder: MotionTextEncoder, captions: list[str]) -> torch.Tensor:
    return torch.cat([encoder.embed_text(captions[i : i + BATCH]) for i in range(0, len(captions), BATCH)]).float()


def motion_caption_retrieval(encoder: MotionTextEncoder, items: list[dict]) -> dict[str, float]:
    """{"text_to_motion_top1", "motion_to_text_top1", "candidates"} over motion items (features, caption)."""
    if len(items) < 2:
        raise ValueError("retrieval needs at least two captioned clips")
    captions = [item["caption"] for item in items]
    to_motion, to_text = top1_both_ways(text_embeddings(encoder, captions) @ motion_embeddings(encoder, items).T,
                                        captions)  # fmt: skip
    return {"text_to_motion_top1": to_motion, "motion_to_text_top1": to_text, "candidates": len(items)}


def parameter_choice(encoder: MotionTextEncoder, items: list[dict]) -> dict[str, float]:
    """For each parameter, the share of (clip, action) where the caption with the clip's own value scores
    above every caption with another value."""
    motions = motion_embeddings(encoder, items)
    wins: dict[str, list[bool]] = {}
    for index, item in enumerate(items):
        segments = [Segment(s["action"], {k: s[k] for k in PARAMETERS[s["action"]]}) for s in item["segments"]]
        for position, segment in enumerate(segments):
            for name, values in PARAMETERS[segment.action].items():
                own = segment.params[name]
                variants = [own, *(value for value in values if value != own)]
                captions = []
                for value in variants:
                    changed = list(segments)
                    changed[position] = Segment(segment.action, {**segment.params, name: value})
                    captions.append(describe(changed, np.random.default_rng([index, position])))
                scores = text_embeddings(encoder, captions) @ motions[index]
                wins.setdefault(name, []).append(bool(scores[0] > scores[1:].max()))  # a tie is no choice
    return {name: float(np.mean(right)) for name, right in sorted(wins.items())}
