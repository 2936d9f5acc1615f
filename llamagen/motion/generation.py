"""Text to motion: captions -> the generator's token sequences -> codes cut at the end token -> features."""

from __future__ import annotations

import torch

from llamagen.generation import generate
from llamagen.gpt import GPT
from llamagen.motion.codes import SEQUENCE, sequence_codes
from llamagen.motion.text import MotionTextEncoder
from llamagen.motion.tokenizer import MotionVQ


def check_vocabulary(gpt: GPT, tokenizer: MotionVQ, gpt_name: str = "the generator",
                     tokenizer_name: str = "the tokenizer") -> None:  # fmt: skip
    """Refuse a generator whose tokens are not the tokenizer's codes and the end token that closes a motion, or
    whose sequence is not a motion's (SEQUENCE tokens: the codes of the longest clip and the end)."""
    if gpt.config.block_size != SEQUENCE:
        raise ValueError(f"{gpt_name} writes {gpt.config.block_size} tokens, not a motion's {SEQUENCE}")
    if gpt.config.vocab_size != tokenizer.config.codebook_size + 1:
        raise ValueError(f"{gpt_name} predicts {gpt.config.vocab_size} tokens, not {tokenizer_name}'s "
                         f"{tokenizer.config.codebook_size} codes and an end token")  # fmt: skip


@torch.no_grad()
def generate_motions(gpt: GPT, tokenizer: MotionVQ, text_encoder: MotionTextEncoder, captions: list[str],
                     cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int = 0,
                     seed: int = 0) -> list[torch.Tensor]:  # fmt: skip
    """One motion a caption, features (T, 263) (T = 4 x its codes; 0 when the end token comes first). Caption
    i draws from its own generator seeded `seed + i`, so a motion does not depend on the others asked with it."""
    check_vocabulary(gpt, tokenizer)
    encoded = text_encoder.encode(list(captions))
    generators = [torch.Generator().manual_seed(seed + row) for row in range(len(captions))]
    tokens = generate(gpt, encoded.features, encoded.mask, cfg_scale=cfg_scale, temperature=temperature,
                      top_k=top_k, generator=generators)  # fmt: skip
    motions = []
    for row in tokens:
        codes = sequence_codes(row, tokenizer.config.codebook_size)
        if len(codes) == 0:
            motions.append(torch.zeros(0, tokenizer.config.features))
        else:
            motions.append(tokenizer.detokenize(codes.unsqueeze(0))[0])
    return motions
