"""A loaded tokenizer's GroupNorms, and the SiLU after them, on llamagen's CPU kernel.

At full resolution a tokenizer's maps have few channels and many positions, so its GroupNorms and SiLUs move
whole maps through memory for a few operations a value: with torch's ops they took as long as the convolutions
around them (photo-vq decoding a 640x427 photo in bf16: 98 ms of 250). The kernel (kernels/group_norm.cpp) reads
a map twice and writes it once where torch's ops read it three times and write it twice, and rounds the output
to bf16 once, after the SiLU. `load_tokenizer` calls `use_cpu_kernels` for a tokenizer it loads onto the CPU;
training, gradients and other devices keep torch's ops.
"""

from __future__ import annotations

import torch
from torch import nn

from llamagen.fast import kernels
from llamagen.tokenizer.autoencoder import Float32GroupNorm


class KernelGroupNorm(Float32GroupNorm):
    """Float32GroupNorm whose inference on a channels-last float32 or bf16 map runs llamagen's kernel, and whose
    statistics (which token surgery records from a full decode) come from the same pass over the map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._kernel_serves(x):
            return super().forward(x)
        return torch.ops.llamagen.group_norm(x, self.num_groups, self.weight.float(), self.bias.float(), self.eps,
                                             self.silu)  # fmt: skip

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._kernel_serves(x):
            return super().statistics(x)
        return torch.ops.llamagen.group_statistics(x, self.num_groups, self.eps)

    @staticmethod
    def _kernel_serves(x: torch.Tensor) -> bool:
        return (
            not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16)
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
        )


def use_cpu_kernels(model: nn.Module) -> bool:
    """Run `model`'s GroupNorms on llamagen's kernel where it serves (the same weights and module names); True if
    the kernels are ready on this machine, False (and nothing changed) where they are not."""
    if not kernels.load():
        return False
    for module in model.modules():
        if type(module) is Float32GroupNorm:
            module.__class__ = KernelGroupNorm
    return True
