"""Motion token sequences for the text-to-motion generator, in the image generators' codes files.

A clip's codes (a token every 4 frames) are followed by an end token (code K of a K-code tokenizer) and padded
with it to 49 tokens: the 48 of the longest clip (195 feature frames, cut to 192) and one end. The generator
learns where a motion stops from the end token, as T2M-GPT's does, and its vocabulary is K + 1. The image
generators' training reads token grids in raster order, and 49 is 7 x 7: a sequence is stored as a 7 x 7
grid, read back in its order. (Their 2-D rotary positions then give each of the 49 positions its own
(row, column); a 1-D rotary embedding would suit a sequence better.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from llamagen.data.motion import Motions
from llamagen.files import write_atomically
from llamagen.motion.tokenizer import MotionVQ

SEQUENCE = 49
GRID = 7


def sequence(codes: torch.Tensor, end: int) -> torch.Tensor:
    """(n,) codes, n < SEQUENCE -> (SEQUENCE,) the codes, then the end token to the last position."""
    if len(codes) >= SEQUENCE:
        raise ValueError(f"a sequence holds at most {SEQUENCE - 1} codes and its end, got {len(codes)} codes")
    return torch.cat([codes, torch.full((SEQUENCE - len(codes),), end, dtype=codes.dtype)])


def sequence_codes(tokens: torch.Tensor, end: int) -> torch.Tensor:
    """A generated sequence's codes: the tokens before its first end token; without one, the first SEQUENCE - 1
    (in training the last token is always an end)."""
    ends = (tokens >= end).nonzero()
    return tokens[: int(ends[0]) if len(ends) else SEQUENCE - 1]


@torch.no_grad()
def extract_motion_codes(tokenizer: MotionVQ, count: int, out_path: str | os.PathLike, seed: int = 0,
                         show_progress: bool = True, tokenizer_source: str | None = None) -> Path:  # fmt: skip
    """The first `count` captioned clips of `Motions(seed)` (held-out pairs left out) as a codes file of
    (count, 1, 7, 7) sequences with their captions, written atomically; `CodesDataset` reads it. With
    `tokenizer_source` (the tokenizer's file or embedded name) the file, and the generator trained on it, name
    their tokenizer."""
    if count < 1:
        raise ValueError(f"count must be at least 1 clip, got {count}")
    end, step = tokenizer.config.codebook_size, tokenizer.config.frames_per_token
    if end >= 2**15:  # the codes are stored as int16, as the image generators' are
        raise ValueError(f"a codes file holds codes below 32,767 and an end token; this tokenizer has {end} codes")
    clips = Motions(seed=seed, captioned=True)
    sequences, captions = [], []
    for index in tqdm(range(count), disable=not show_progress, desc="extracting motion codes"):
        item = clips[index]
        features = item["features"][: len(item["features"]) // step * step]
        sequences.append(sequence(tokenizer.tokenize(features.unsqueeze(0))[0], end))
        captions.append(item["caption"])
    codes = torch.stack(sequences).to(torch.int16).view(count, 1, GRID, GRID)
    metadata = {
        "augment": "none",
        "codebook_size": str(end + 1),  # the tokenizer's codes and the end token
        "end_token": str(end),
        "captions": json.dumps(captions),
        "class_names": json.dumps([]),
        "data": json.dumps(_data(count, seed)),
    }
    if tokenizer_source is not None:
        metadata["tokenizer"] = str(tokenizer_source)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out_path, lambda temporary: save_file({"codes": codes}, temporary, metadata=metadata))
    return out_path


def _data(count: int, seed: int) -> dict:
    return {"motion": {"seed": seed, "captioned": True, "clips": count}}


def motion_codes_of(path: str | os.PathLike, tokenizer_source: str, count: int, seed: int) -> bool:
    """Whether the codes file at `path` holds the first `count` clips of seed `seed` as `tokenizer_source`
    tokenized them (as `extract_motion_codes` records), so that a study can reuse it."""
    with safe_open(path, "pt") as file:
        metadata = file.metadata() or {}
    recorded = json.loads(metadata.get("data", "null"))
    return metadata.get("tokenizer") == str(tokenizer_source) and recorded == _data(count, seed)
