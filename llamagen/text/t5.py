"""FLAN-T5 caption features, for the published text-to-image checkpoints (optional: needs `transformers`).

The original encodes captions with FLAN-T5-XL's encoder: at most 120 tokens, padded to 120, features
2048 wide (the t2i models' `cls_token_num` and `caption_dim`), then moves each caption's valid tokens to
the end (left padding). The weights come from a local folder (a `save_pretrained` copy of
google/flan-t5-xl, tokenizer included); nothing is downloaded.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from llamagen.text.clip import TextEncoding
from llamagen.text.padding import left_align

T5_PREFIX = "t5:"
T5_MAX_LENGTH = 120  # the original's `t5_feature_max_len`


class T5TextEncoder(nn.Module):
    def __init__(self, folder: str | os.PathLike, max_length: int = T5_MAX_LENGTH):
        super().__init__()
        try:
            from transformers import AutoTokenizer, T5EncoderModel
        except ImportError as error:
            raise ImportError("FLAN-T5 captions need the transformers package: pip install transformers") from error
        folder = str(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"no FLAN-T5 folder at {folder!r} (a save_pretrained copy with its tokenizer)")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = T5EncoderModel.from_pretrained(folder, local_files_only=True).eval()
        self.max_length, self.source = max_length, f"{T5_PREFIX}{folder}"

    @property
    def width(self) -> int:
        return self.model.config.d_model

    @property
    def context_length(self) -> int:
        return self.max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEncoding:
        """Prompts -> (B, 120, 2048) left-padded features and their mask; longer prompts are cut, and said so."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        full_lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
        notes = [
            f"prompt {row} has {n} T5 tokens; the generator reads {self.max_length}, so it was cut to {self.max_length}"
            for row, n in enumerate(full_lengths)
            if n > self.max_length
        ]
        batch = self.tokenizer(prompts, max_length=self.max_length, padding="max_length", truncation=True,
                               return_tensors="pt")  # fmt: skip
        mask = batch["attention_mask"].to(self.device)
        features = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=mask).last_hidden_state
        features, mask = left_align(features.float(), mask.sum(1))
        return TextEncoding(features, mask, notes)
