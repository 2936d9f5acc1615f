"""The motion CLIP's measures answer what they claim: an encoder that knows each clip scores 1, one that
cannot tell captions apart scores 0 on the parameters."""

from __future__ import annotations

import numpy as np
import torch

from llamagen.data.motion import PARAMETERS, Motions
from llamagen.data.motion.captions import describe
from llamagen.data.motion.clips import Segment
from llamagen.motion.retrieval import motion_caption_retrieval, parameter_choice


class KnowingEncoder:
    """Embeds clip i as the i-th axis, and a caption as the sum of the axes of the clips it truly describes."""

    def __init__(self, items, blind: bool = False, rephrased: bool = True):
        self.size, self.blind, self.next = len(items), blind, 0
        self.owners: dict[str, set[int]] = {}
        for index, item in enumerate(items):
            self.owners.setdefault(item["caption"], set()).add(index)
            segments = [Segment(s["action"], {k: s[k] for k in PARAMETERS[s["action"]]}) for s in item["segments"]]
            for position in range(len(segments) if rephrased else 0):
                own = describe(segments, np.random.default_rng([index, position]))
                self.owners.setdefault(own, set()).add(index)

    def embed_motions(self, features, frames):
        rows = torch.eye(self.size)[self.next : self.next + len(frames)]
        self.next += len(frames)
        return rows

    def embed_text(self, captions):
        if self.blind:
            return torch.ones(len(captions), self.size)
        axes = torch.eye(self.size)
        return torch.stack([sum((axes[i] for i in self.owners.get(c, ())), torch.zeros(self.size)) for c in captions])


def test_an_encoder_that_knows_each_clip_scores_everything_right_and_a_blind_one_nothing():
    data = Motions(seed=8, captioned=True)
    items = [data[index] for index in range(12)]
    retrieval = motion_caption_retrieval(KnowingEncoder(items, rephrased=False), items)
    assert retrieval["text_to_motion_top1"] == retrieval["motion_to_text_top1"] == 1.0
    choices = parameter_choice(KnowingEncoder(items), items)
    assert choices and set(choices.values()) == {1.0}
    assert set(parameter_choice(KnowingEncoder(items, blind=True), items).values()) == {0.0}
