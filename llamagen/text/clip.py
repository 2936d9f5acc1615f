"""An open_clip text tower as the caption encoder: per-token features and a mask, the generator's prefix.

The features of every token are taken, not the pooled embedding: token embedding plus positional
embedding, the causal text transformer, then `ln_final` (what open_clip's `encode_text` computes before it
pools). CLIP pads on the right; its causal mask means padding never changes the real tokens' features.
The rows are then shifted so that the real tokens end at the last position (left padding, as the
original's T5 captions; see `padding.left_align`).

The same class wraps the small CLIP the project trains on shapes (`SHAPES_CLIP`, open_clip's architecture
at a custom size) and any local open_clip checkpoint of a real model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from llamagen.configs import ModelConfig
from llamagen.text.padding import left_align


@dataclass
class ClipConfig(ModelConfig):
    """The arguments of `open_clip.CLIP`: a joint embedding width and the two towers' configs."""

    embed_dim: int = 64
    vision_cfg: dict[str, Any] = field(default_factory=dict)
    text_cfg: dict[str, Any] = field(default_factory=dict)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    PRESET_KIND: ClassVar[str] = "CLIP"

    def __post_init__(self) -> None:
        self.require_positive_ints("embed_dim")


ClipConfig.PRESETS = {
    # Shapes: 64x64 images in 8x8 patches; captions are at most about 20 BPE tokens. Narrow (64) so that
    # the 49,408-row token table, most of whose rows shapes captions never use, stays small.
    "shapes-clip": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 3, "head_width": 32},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
    },
}


@dataclass
class TextEncoding:
    features: torch.Tensor  # (B, context_length, width) float32, real tokens last
    mask: torch.Tensor  # (B, context_length) bool, True on real tokens
    notes: list[str]  # what was changed about the prompts (truncation)


class ClipTextEncoder(nn.Module):
    """An open_clip `CLIP` (both towers: the image tower scores images for CLIP score) and its tokenizer."""

    checkpoint_kind = "clip"

    def __init__(self, model: nn.Module, config: ClipConfig | None = None, source: str = ""):
        """`config` is None for a published open_clip model, whose image tower reads images resized to its
        input size and normalised as it was trained; the project's CLIPs read [-1, 1] images as they are."""
        super().__init__()
        import open_clip  # imported on first use: it is large

        self.model, self.config, self.source = model, config, source
        self.tokenizer = open_clip.SimpleTokenizer(context_length=model.context_length)
        self.published = config is None

    @classmethod
    def from_config(cls, config: ClipConfig, source: str = "") -> ClipTextEncoder:
        import open_clip

        model = open_clip.CLIP(embed_dim=config.embed_dim, vision_cfg=config.vision_cfg, text_cfg=config.text_cfg)
        return cls(model, config, source)

    @property
    def width(self) -> int:
        return self.model.transformer.width

    @property
    def context_length(self) -> int:
        return self.model.context_length

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    def token_ids(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(B, context_length) ids right-padded with 0 as CLIP expects, (B,) lengths, and notes on truncation:
        a prompt longer than the context keeps its first tokens and ends with the end-of-text token."""
        ids = torch.zeros(len(prompts), self.context_length, dtype=torch.long)
        lengths, notes = [], []
        start, end = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        for row, prompt in enumerate(prompts):
            tokens = [start, *self.tokenizer.encode(prompt), end]
            if len(tokens) > self.context_length:
                notes.append(
                    f"prompt {row} has {len(tokens)} tokens with its start and end markers; the text encoder "
                    f"reads {self.context_length}, so it was cut to {self.context_length}"
                )
                tokens = [*tokens[: self.context_length - 1], end]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            lengths.append(len(tokens))
        return ids, torch.tensor(lengths), notes

    def token_features(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded ids -> (B, L, width) per-token features (before pooling and projection)."""
        model = self.model
        x = model.token_embedding(ids) + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        return model.ln_final(x)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEncoding:
        """Prompts -> the generator's prefix: left-padded per-token features and their mask."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids, lengths, notes = self.token_ids(list(prompts))
        features, mask = left_align(self.token_features(ids.to(self.device)).float(), lengths)
        return TextEncoding(features, mask, notes)

    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """(B, embed_dim) unit-length CLIP text embeddings (for CLIP score and contrastive training)."""
        ids, _, _ = self.token_ids(list(prompts))
        return self.model.encode_text(ids.to(self.device), normalize=True)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, embed_dim) unit-length CLIP image embeddings."""
        images = images.to(self.device)
        if self.published:
            from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

            size = self.model.visual.image_size
            images = F.interpolate((images + 1) / 2, size=size, mode="bicubic", align_corners=False)
            mean = torch.tensor(OPENAI_DATASET_MEAN, device=images.device)[:, None, None]
            std = torch.tensor(OPENAI_DATASET_STD, device=images.device)[:, None, None]
            images = (images - mean) / std
        return F.normalize(self.model.encode_image(images), dim=-1)

    @torch.no_grad()
    def clip_score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B,) 100 x cosine similarity of each image and its prompt (the usual CLIP score scale)."""
        return 100 * (self.embed_images(images) * self.embed_text(prompts)).sum(-1).clamp(min=0)
