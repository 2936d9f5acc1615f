"""How the condition enters the decoder: as prefix ("prefilling") token embeddings (Sec. 2.2).

Class-conditional: a learned table with one extra row, the null class, used for the unconditional
half of classifier-free guidance. Text-conditional: caption features (B, cls_token_num, caption_dim)
projected by a two-layer MLP; the unconditional prefix is a fixed random feature sequence.
During training the condition is replaced by the unconditional one with probability
`class_dropout_prob`, which is what makes guidance possible at sampling time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamagen.gpt.config import GPTConfig


class ClassEmbedding(nn.Module):
    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        # The null-class row exists only when the condition can be dropped, as in the original's files.
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    @property
    def has_null_class(self) -> bool:
        return self.embedding_table.num_embeddings > self.num_classes

    def unconditional(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(labels, self.num_classes)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,) class ids (num_classes = the null class) -> (B, 1, dim)."""
        if self.training and self.dropout_prob > 0:
            dropped = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(dropped, self.num_classes, labels)
        return self.embedding_table(labels).unsqueeze(1)


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
        return ClassEmbedding(config.num_classes, config.dim, config.class_dropout_prob)
    return CaptionEmbedding(config.caption_dim, config.dim, config.class_dropout_prob, config.cls_token_num)
