"""The Inception-v3 graph that FID's reference code and the ADM evaluator run (TensorFlow, 2015-12-05), on
torchvision's layers, for the weights ported from it (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`).

The graph differs from torchvision's Inception-v3 in four places, each of which moves FID:
- its average pools divide by the pixels inside the image, not by 9, at the border (`count_include_pad=False`);
- the pool branch of its last block (Mixed_7c) takes the maximum, not the average;
- it resizes its input to 299 x 299 with TensorFlow 1's bilinear rule (source pixel = target pixel x in/out,
  no half-pixel offset), then maps pixel values p in [0, 255] to (p - 128) / 128;
- its classifier has 1,008 outputs, and the ADM evaluator's Inception Score reads the logits without the bias.

The blocks below keep torchvision's branches (so the weights load under their names) and only say how the
branches are joined.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE

INPUT_SIZE = 299
CLASSES = 1008


def _average_inside(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _GraphBlockA(InceptionA):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = self.branch5x5_2(self.branch5x5_1(x))
        deep = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), wide, deep, self.branch_pool(_average_inside(x))], 1)


class _GraphBlockC(InceptionC):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        deep = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):  # fmt: skip
            deep = layer(deep)
        return torch.cat([self.branch1x1(x), wide, deep, self.branch_pool(_average_inside(x))], 1)


class _GraphBlockE(InceptionE):
    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return _average_inside(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = self.branch3x3_1(x)
        wide = torch.cat([self.branch3x3_2a(split), self.branch3x3_2b(split)], 1)
        deep = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        deep = torch.cat([self.branch3x3dbl_3a(deep), self.branch3x3dbl_3b(deep)], 1)
        return torch.cat([self.branch1x1(x), wide, deep, self.branch_pool(self.pooled(x))], 1)


class _GraphBlockEMax(_GraphBlockE):
    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


_GRAPH_BLOCKS = {
    **dict.fromkeys(("Mixed_5b", "Mixed_5c", "Mixed_5d"), _GraphBlockA),
    **dict.fromkeys(("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"), _GraphBlockC),
    "Mixed_7b": _GraphBlockE,
    "Mixed_7c": _GraphBlockEMax,
}


def graph_inception() -> Inception3:
    """torchvision's Inception-v3 made the TensorFlow graph: 1,008 classes, no auxiliary head, the graph's
    pooling in the blocks that differ. Each block keeps its layers and only changes how it joins them (its
    class), so the ported weights load by torchvision's names."""
    from torchvision.models import inception_v3

    network = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False,
                           num_classes=CLASSES)  # fmt: skip
    for name, block_type in _GRAPH_BLOCKS.items():
        getattr(network, name).__class__ = block_type
    return network


def is_graph_port(state_dict: dict) -> bool:
    """Whether a state dict holds the ported graph's weights (1,008 classes) rather than torchvision's (1,000)."""
    classifier = state_dict.get("fc.weight")
    return classifier is not None and classifier.shape[0] == CLASSES


def resize_like_tensorflow1(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resizing as TensorFlow 1's `resize_bilinear` (align_corners=False, no half-pixel centres), which
    the graph applies to its input: target pixel i reads source position i x (in / out), the last row and column
    repeated past the edge."""

    def along(x: torch.Tensor, dim: int) -> torch.Tensor:
        length = x.shape[dim]
        position = torch.arange(size, dtype=torch.float64) * (length / size)
        low = position.floor().long().clamp(max=length - 1)
        high = (low + 1).clamp(max=length - 1)
        shape = [1] * x.ndim
        shape[dim] = size
        weight = (position - low).to(x.dtype).view(shape)
        return x.index_select(dim, low) * (1 - weight) + x.index_select(dim, high) * weight

    return along(along(images, 2), 3)
