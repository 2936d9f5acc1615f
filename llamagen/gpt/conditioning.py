"""The condition's embeddings: prefix ("prefilling") tokens (Sec. 2.2), and what the layers read of them.

Class-conditional: a learned table with one extra row, the null class, used for the unconditional
half of classifier-free guidance; each class has `cls_token_num` tokens (the published models: one).
Text-conditional: caption features (B, cls_token_num, caption_dim) projected by a two-layer MLP; the
unconditional caption is a fixed random feature sequence. During training the condition is replaced by the
unconditional one with probability `class_dropout_prob`, which is what makes guidance possible at sampling time.

Where the condition also enters the layers (`GPTConfig.condition`), they read it as a `LayerCondition`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llamagen.gpt.config import GPTConfig


class ClassEmbedding(nn.Module):
    def __init__(self, num_classes: int, dim: int, dropout_prob: float, token_num: int = 1):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.token_num = token_num
        # The null-class row exists only when the condition can be dropped, as in the original's files.
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim * token_num)

    @property
    def has_null_class(self) -> bool:
        return self.embedding_table.num_embeddings > self.num_classes

    def unconditional(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(labels, self.num_classes)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,) class ids (num_classes = the null class) -> (B, token_num, dim)."""
        if self.training and self.dropout_prob > 0:
            dropped = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(dropped, self.num_classes, labels)
        return self.embedding_table(labels).view(labels.shape[0], self.token_num, -1)


class CaptionMLP(nn.Module):
    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, dim, bias=False)
        self.fc2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CaptionEmbedding(nn.Module):
    def __init__(self, caption_dim: int, dim: int, dropout_prob: float, token_num: int):
        super().__init__()
        self.dropout_prob = dropout_prob
        self.cap_proj = CaptionMLP(caption_dim, dim)
        # A buffer, not a parameter, in the published files: the unconditional caption is fixed noise.
        self.register_buffer("uncond_embedding", torch.randn(token_num, caption_dim) / caption_dim**0.5)

    def unconditional(self, captions: torch.Tensor) -> torch.Tensor:
        return self.uncond_embedding.to(captions.dtype).expand_as(captions)

    def forward(self, captions: torch.Tensor) -> torch.Tensor:
        """(B, cls_token_num, caption_dim) features -> (B, cls_token_num, dim)."""
        if self.training and self.dropout_prob > 0:
            dropped = torch.rand(captions.shape[0], device=captions.device) < self.dropout_prob
            captions = torch.where(dropped[:, None, None], self.unconditional(captions), captions)
        return self.cap_proj(captions)


def build_condition_embedding(config: GPTConfig) -> nn.Module:
    if config.model_type == "c2i":
        return ClassEmbedding(config.num_classes, config.dim, config.class_dropout_prob, config.cls_token_num)
    return CaptionEmbedding(config.caption_dim, config.dim, config.class_dropout_prob, config.cls_token_num)


@dataclass(frozen=True)
class LayerCondition:
    """The condition as the layers read it: its embedded tokens (B, n, dim), which of them are real (B, n)
    booleans (a caption's padding False; None: all), their mean over the real ones (B, 1, dim), and for
    adaLN-zero the shared modulation computed from that mean (B, 1, 6 x dim)."""

    tokens: torch.Tensor
    visible: torch.Tensor | None
    mean: torch.Tensor
    modulation: torch.Tensor | None = None

    @classmethod
    def of(cls, tokens: torch.Tensor, visible: torch.Tensor | None, modulation: nn.Module | None) -> LayerCondition:
        if visible is None:
            mean = tokens.mean(1, keepdim=True)
        else:
            weights = visible.to(tokens.dtype)[..., None]
            mean = (tokens * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
        return cls(tokens, visible, mean, None if modulation is None else modulation(F.silu(mean)))
