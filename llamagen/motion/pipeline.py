"""A text-to-motion generator ready to use: captions in, motions (features and joint positions) out.

`load_motion_pipeline(gpt)` takes an embedded motion generator's name or a GPT file trained on motion codes; the
file names its tokenizer and text encoder (as image generators do), and the judge that reads what a motion does
comes from the card, or is given. It samples with the settings of the card beside the weights, else with those
the text-to-motion study generated with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from llamagen.checkpoints import resolve_source
from llamagen.data.motion import FPS, feature_positions
from llamagen.gpt import GPT
from llamagen.motion.generation import check_vocabulary, generate_motions
from llamagen.motion.judge import MotionJudge, ReadAction, load_motion_judge, read_motion
from llamagen.motion.text import MotionTextEncoder, load_motion_text_encoder
from llamagen.motion.tokenizer import MotionVQ, load_motion_tokenizer
from llamagen.sampling_settings import SamplingSettings, model_card, recommended_sampling

# What a motion generator without a card samples with: the text-to-motion study's guidance, all codes kept.
STUDY_SAMPLING = SamplingSettings(cfg_scale=2.0, top_k=0, source="the text-to-motion study's settings")
MOTION_GENERATOR_KIND = "motion-gpt"  # the card kind of an embedded motion generator (its file is a GPT's)


@dataclass
class Motion:
    caption: str
    features: torch.Tensor  # (T, 263); T = 0 when the generator ended before its first code
    positions: np.ndarray  # (T, 22, 3) metres

    @property
    def seconds(self) -> float:
        return len(self.features) / FPS


@dataclass
class MotionPipeline:
    gpt: GPT
    tokenizer: MotionVQ
    text_encoder: MotionTextEncoder
    sampling: SamplingSettings
    judge: MotionJudge | None = None

    def __call__(self, captions: list[str], cfg_scale: float | None = None, temperature: float | None = None,
                 top_k: int | None = None, seed: int = 0) -> list[Motion]:  # fmt: skip
        """One motion a caption; caption i draws from its own generator seeded `seed + i`. Settings left at None
        are the pipeline's (`sampling`)."""
        if isinstance(captions, str):
            captions = [captions]
        empty = [index for index, caption in enumerate(captions) if not caption or not caption.strip()]
        if not captions or empty:
            raise ValueError("a caption is empty: say what the person does (e.g. 'a person walks forward')")
        options = self.sampling.filled(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k)
        features = generate_motions(self.gpt, self.tokenizer, self.text_encoder, list(captions), seed=seed,
                                    **options)  # fmt: skip
        return [Motion(caption, motion, _positions(motion)) for caption, motion in zip(captions, features, strict=True)]

    def read(self, motion: Motion) -> list[ReadAction]:
        """What the judge sees the motion do: its actions in order, with their parameters."""
        if self.judge is None:
            raise ValueError("this motion generator has no judge to read its motions: pass judge=")
        return read_motion(self.judge, motion.features) if len(motion.features) else []


def _positions(features: torch.Tensor) -> np.ndarray:
    if len(features) == 0:
        return np.zeros((0, 22, 3))
    return feature_positions(features.float().numpy())


def load_motion_pipeline(
    gpt: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    text_encoder: str | os.PathLike | None = None,
    judge: str | os.PathLike | None = None,
) -> MotionPipeline:
    """A motion pipeline on the CPU from an embedded motion generator's name or a GPT file trained on motion
    codes; `tokenizer`, `text_encoder` and `judge` replace what the file or its card names."""
    from llamagen.gpt.loading import load_gpt
    from llamagen.pipeline import generator_metadata

    metadata = generator_metadata(gpt)
    tokenizer = tokenizer or metadata.get("tokenizer")
    text_encoder = text_encoder or metadata.get("text_encoder")
    if tokenizer is None or text_encoder is None:
        missing = " and ".join(name for name, value in (("tokenizer", tokenizer), ("text_encoder", text_encoder))
                               if value is None)  # fmt: skip
        raise ValueError(f"{str(gpt)!r} does not name its {missing.replace('_', ' ')}: pass {missing}=")
    model = load_gpt(gpt, device="cpu")
    weights = resolve_source(gpt)
    judge = judge or (model_card(weights) or {}).get("judge")
    pipeline = MotionPipeline(
        gpt=model,
        tokenizer=load_motion_tokenizer(tokenizer),
        text_encoder=load_motion_text_encoder(text_encoder),
        sampling=recommended_sampling(weights, "t2i", model.config.vocab_size, fallback=STUDY_SAMPLING),
        judge=load_motion_judge(judge) if judge else None,
    )
    check_vocabulary(model, pipeline.tokenizer, repr(str(gpt)), f"the {tokenizer!r} tokenizer")
    return pipeline
