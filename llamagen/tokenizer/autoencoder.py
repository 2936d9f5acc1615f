"""The convolutional encoder and decoder of the VQ-GAN tokenizer.

The architecture is the taming-transformers VQ-GAN as LlamaGen uses it (Sec. 2.1 of the paper):
residual blocks with GroupNorm and swish, one self-attention layer per block at the lowest
resolution and in the middle. Module names reproduce the published state-dict keys exactly
(`encoder.conv_blocks.{i}.res.{j}`, `.attn.{j}`, `.downsample.conv`, `encoder.mid.{0,1,2}`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamagen.tokenizer.config import GROUP_NORM_GROUPS

# Positions of a map whose statistics `Float32GroupNorm.statistics` sums at a time.
STATISTICS_POSITIONS = 1 << 14
# Devices whose kernels take bf16 and fp16 maps as they are: group_norm accumulates them in float32 (torch's
# "opmath" type), and nearest-neighbour upsampling copies them.
_NATIVE_HALF_PRECISION = ("cpu", "cuda")


class Float32GroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are computed in float32 whatever the activations' dtype (bf16 sums over a
    feature map are too coarse), followed by SiLU where `silu` is set: every norm but the attention layers' is, and
    one module for both lets a kernel do them in one pass (`llamagen.fast.tokenizer`). torch's CPU and CUDA
    kernels already sum bf16 inputs in float32, so there the activations go in as they are (a float32 copy of
    each map would cost a third of a bf16 decode); elsewhere they are converted."""

    def __init__(self, num_groups: int, num_channels: int, eps: float, silu: bool):
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        self.silu = silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalized = self.normalized(x)
        return F.silu(normalized) if self.silu else normalized

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 or x.device.type in _NATIVE_HALF_PRECISION:
            return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)

    @torch.no_grad()
    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's per-group mean and 1/std, (N, groups) float32 each: what `normalized` normalises x with
        (token surgery keeps them from a full decode). Summed per channel in float64 from float32 a slice of
        positions at a time (a float32 copy of a whole bf16 map at full resolution would be hundreds of MB)."""
        per_group = self.num_channels // self.num_groups
        means, inverse_stds = [], []
        for image in x:
            slices = image.permute(1, 2, 0).reshape(-1, self.num_channels).split(STATISTICS_POSITIONS)
            count = image[0].numel() * per_group
            sums = sum(part.float().sum(0, dtype=torch.float64) for part in slices)
            mean = sums.reshape(self.num_groups, per_group).sum(1) / count
            centred = mean.float().repeat_interleave(per_group)
            squares = sum(((part.float() - centred) ** 2).sum(0, dtype=torch.float64) for part in slices)
            variance = squares.reshape(self.num_groups, per_group).sum(1) / count
            means.append(mean.float())
            inverse_stds.append(torch.rsqrt(variance.float() + self.eps))
        return torch.stack(means), torch.stack(inverse_stds)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, silu={self.silu}"


def normalize(channels: int, silu: bool) -> Float32GroupNorm:
    return Float32GroupNorm(GROUP_NORM_GROUPS, channels, eps=1e-6, silu=silu)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = normalize(in_channels, silu=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels, silu=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        h = self.conv2(self.dropout(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map, with 1x1 conv projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalize(channels, silu=False)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # (B,C,H,W) -> (B,1,H*W,C): one head; SDPA avoids materialising the (HW x HW) matrix on large images, if
        # its inputs are contiguous (transposed views send it to the math path, which does, and runs 2-3x slower).
        q, k, v = (proj(y).reshape(b, 1, c, h * w).transpose(2, 3).contiguous() for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric padding (right and bottom only), as the original: a stride-2 3x3 conv then halves exactly.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Nearest-neighbour upsampling copies values, so any dtype gives the same map; elsewhere it goes through
        # float32, where some backends lack the bf16 kernel.
        if x.device.type in _NATIVE_HALF_PRECISION:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(x.dtype))


def middle_blocks(channels: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList(
        [
            ResnetBlock(channels, channels, dropout),
            AttnBlock(channels),
            ResnetBlock(channels, channels, dropout),
        ]
    )


def run_level(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The residual blocks of one resolution level, each followed by its attention layer if the level has them."""
    for i, res in enumerate(block.res):
        h = res(h)
        if len(block.attn):
            h = block.attn[i](h)
    return h


class Encoder(nn.Module):
    """(B,3,H,W) image -> (B,z_channels,H/f,W/f) latent, f = 2**(len(ch_mult)-1)."""

    def __init__(self, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int, dropout: float):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        channels = ch
        last = len(ch_mult) - 1
        for level, mult in enumerate(ch_mult):
            block = nn.Module()
            block.res = nn.ModuleList()
            block.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                block.res.append(ResnetBlock(channels, ch * mult, dropout))
                channels = ch * mult
                if level == last:
                    block.attn.append(AttnBlock(channels))
            if level != last:
                block.downsample = Downsample(channels)
            self.conv_blocks.append(block)
        self.mid = middle_blocks(channels, dropout)
        self.norm_out = normalize(channels, silu=True)
        self.conv_out = nn.Conv2d(channels, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.conv_blocks:
            h = run_level(block, h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for layer in self.mid:
            h = layer(h)
        return self.conv_out(self.norm_out(h))


class Decoder(nn.Module):
    """(B,z_channels,h,w) latent -> (B,3,h*f,w*f) image (unbounded; about [-1, 1] once trained)."""

    def __init__(self, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int, dropout: float):
        super().__init__()
        channels = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, channels, 3, padding=1)
        self.mid = middle_blocks(channels, dropout)
        self.conv_blocks = nn.ModuleList()
        last = len(ch_mult) - 1
        for level, mult in enumerate(reversed(ch_mult)):
            block = nn.Module()
            block.res = nn.ModuleList()
            block.attn = nn.ModuleList()
            # One more residual block per level than the encoder, as in the original.
            for _ in range(num_res_blocks + 1):
                block.res.append(ResnetBlock(channels, ch * mult, dropout))
                channels = ch * mult
                if level == 0:
                    block.attn.append(AttnBlock(channels))
            if level != last:
                block.upsample = Upsample(channels)
            self.conv_blocks.append(block)
        self.norm_out = normalize(channels, silu=True)
        self.conv_out = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.upsampled(self.latent_features(z))

    # The two stages apart, because they cost differently: the first runs at the latent's resolution and holds
    # every attention layer (each position sees the whole map); the second is convolutions only, at 2x to f x the
    # resolution, and most of the work. A local re-decode (llamagen.tokenizer.local_decode) runs them on different
    # windows.

    def latent_features(self, z: torch.Tensor) -> torch.Tensor:
        """conv_in, the middle blocks and the first level's blocks, at the latent's resolution."""
        h = self.conv_in(z)
        for layer in self.mid:
            h = layer(h)
        return run_level(self.conv_blocks[0], h)

    def upsampled(self, h: torch.Tensor) -> torch.Tensor:
        """The first level's upsampling, the higher levels, and the output convolution: features -> pixels."""
        for index, block in enumerate(self.conv_blocks):
            if index:
                h = run_level(block, h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(self.norm_out(h))
