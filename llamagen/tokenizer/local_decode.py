"""Decode one edited code again without decoding the whole image.

A code reaches the pixels around it through the decoder's convolutions: a few tokens. Only two parts of the
decoder see the whole map: the GroupNorm statistics, and the attention layers at the latent's resolution.
`recorded_decode` decodes the codes in full and keeps those two parts: each norm's per-group mean and 1/std, and
each attention layer's keys and values. `decode_edit` then computes only a window around the edited cell. It
normalises with the kept statistics. Its attention runs from the window's positions to the kept keys and values,
with the window's own values recomputed. The result is pasted into the kept image.

The window is as wide as the tokenizer's edits reach, measured once per tokenizer (`edit_reach`). Two effects
of an edit are left out: the change to the statistics, and the change to the attention of positions outside the
window. On photo-vq together they move pixels by at most one level of 255 (tests/test_local_decode.py compares
local edits with full decodes).

The decoder's two stages are windowed apart (`Decoder.latent_features`, `Decoder.upsampled`), because the
second stage is most of the work. Its window is the shown window widened by its own reach. The first stage's
window is that one widened again by the first stage's reach. Each reach is counted from the convolutions as the
recorded decode runs them.
"""

from __future__ import annotations

import copy
import itertools
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llamagen.images import tensor_to_uint8
from llamagen.tokenizer.autoencoder import AttnBlock, Float32GroupNorm
from llamagen.tokenizer.model import VQModel


@dataclass(frozen=True)
class Box:
    """Rows top..bottom-1 and columns left..right-1 of a grid of tokens."""

    top: int
    left: int
    bottom: int
    right: int

    def grown(self, by: int, rows: int, columns: int) -> Box:
        return Box(
            max(0, self.top - by), max(0, self.left - by), min(rows, self.bottom + by), min(columns, self.right + by)
        )

    def within(self, outer: Box, scale: int = 1) -> tuple[slice, slice]:
        """This box's rows and columns in `outer`'s coordinates, `scale` pixels a token."""
        return (
            slice(scale * (self.top - outer.top), scale * (self.bottom - outer.top)),
            slice(scale * (self.left - outer.left), scale * (self.right - outer.left)),
        )


@dataclass(frozen=True)
class DecodedCodes:
    """A full decode of a grid of codes, with what a local re-decode of it needs."""

    codes: torch.Tensor  # (h, w) int64, on the CPU
    pixels: np.ndarray  # (h*f, w*f, 3) uint8
    statistics: dict[str, tuple[torch.Tensor, torch.Tensor]]  # norm -> (mean, 1/std), (1, groups) float32
    keys_values: dict[str, tuple[torch.Tensor, torch.Tensor]]  # attention layer -> (k, v), (1, C, h, w)
    reach: tuple[float, float]  # tokens each stage's convolutions see on each side: (latent, upsampled)
    window: int  # tokens on each side of an edited cell that an edit decodes again: `edit_reach`


def private_copy(decoder: nn.Module) -> nn.Module:
    """The decoder's modules copied around the same weights: hooks and patches on the copy stay out of the
    shared model, which other requests may be running at the same time."""
    shared = {id(tensor): tensor for tensor in itertools.chain(decoder.parameters(), decoder.buffers())}
    return copy.deepcopy(decoder, memo=shared)


class ReachCounter:
    """How far, in tokens, the convolutions run so far see: each k x k convolution adds k // 2 of its own
    pixels, `latent_rows / its input's rows` tokens each."""

    def __init__(self, decoder: nn.Module):
        self.latent_rows = 1
        self.tokens = 0.0
        for module in decoder.modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size[0] > 1:
                module.register_forward_pre_hook(self._count)

    def _count(self, conv: nn.Conv2d, inputs: tuple[torch.Tensor]) -> None:
        self.tokens += (conv.kernel_size[0] // 2) * self.latent_rows / inputs[0].shape[-2]

    def start(self, latent_rows: int) -> None:
        self.latent_rows, self.tokens = latent_rows, 0.0


def _latent(tokenizer: VQModel, codes: torch.Tensor) -> torch.Tensor:
    """(h, w) codes -> the decoder's (1, z_channels, h, w) input, as `VQModel.detokenize` computes it."""
    return tokenizer.decoder_input(tokenizer.quantize.lookup(codes[None].to(tokenizer.device)))


@torch.no_grad()
def recorded_decode(tokenizer: VQModel, codes: torch.Tensor) -> DecodedCodes:
    """(h, w) codes decoded in full, equal to `tokenizer.detokenize`, with the statistics, keys and values and
    reach that `decode_edit` needs."""
    tokenizer._check_codes(codes[None])
    decoder = private_copy(tokenizer.decoder)
    statistics, keys_values = {}, {}
    for name, module in decoder.named_modules():
        if isinstance(module, Float32GroupNorm):
            module.register_forward_hook(_recording_statistics(statistics, name))
        elif isinstance(module, AttnBlock):
            module.k.register_forward_hook(_recording_output(keys_values, name, 0))
            module.v.register_forward_hook(_recording_output(keys_values, name, 1))
    counter = ReachCounter(decoder)
    counter.start(codes.shape[0])
    features = decoder.latent_features(_latent(tokenizer, codes))
    latent_reach = counter.tokens
    counter.start(codes.shape[0])
    pixels = tensor_to_uint8(decoder.upsampled(features))[0]
    return DecodedCodes(
        codes.cpu().clone(),
        pixels,
        statistics,
        {name: (pair[0], pair[1]) for name, pair in keys_values.items()},
        (latent_reach, counter.tokens),
        edit_reach(tokenizer, math.ceil(latent_reach + counter.tokens)),
    )


def _recording_statistics(statistics: dict, name: str) -> Callable:
    def record(norm: Float32GroupNorm, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        statistics[name] = norm.statistics(inputs[0])

    return record


def _recording_output(outputs: dict, name: str, index: int) -> Callable:
    def record(conv: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        outputs.setdefault(name, [None, None])[index] = output

    return record


# The share of a ring's pixels that must move by more than a level for an edit to count as reaching it: more than
# the few that the statistics' and the attention's nudge flips by rounding.
REACHED_SHARE = 1e-3
# Tokens on each side of the probe's edited cell: farther than the shipped tokenizers' edits reach (4 to 6), and
# the published VQ-16's probe (17x17 tokens, 272 pixels a side) decodes in about a second in float32 on a CPU.
PROBE_TOKENS = 8
_MEASURED_REACH: weakref.WeakKeyDictionary[VQModel, int] = weakref.WeakKeyDictionary()


@torch.no_grad()
def edit_reach(tokenizer: VQModel, bound: int) -> int:
    """Tokens on each side of an edited cell to decode again, at most `bound` (the convolutions' reach; beyond it
    an edit moves pixels only through the statistics and the attention, by about a level everywhere).

    One more than the farthest ring of tokens around the cell where more than `REACHED_SHARE` of the pixels move
    by more than a level: the extra token covers images whose edits reach a little farther than the probe's.
    Measured once per tokenizer in float32 (bf16's rounding would add noise of its own), on a grid of random
    codes (seed 0) 2 x `PROBE_TOKENS` + 1 a side, with two random codes put in its middle cell in turn; an edit
    that reaches the probe's edge gets `bound`."""
    if tokenizer in _MEASURED_REACH:
        return _MEASURED_REACH[tokenizer]
    probe = tokenizer if tokenizer.dtype == torch.float32 else copy.deepcopy(tokenizer).float()
    middle = min(bound, PROBE_TOKENS)
    generator = torch.Generator().manual_seed(0)
    size, factor = tokenizer.config.codebook_size, tokenizer.downsample_factor
    codes = torch.randint(0, size, (2 * middle + 1, 2 * middle + 1), generator=generator)
    before = tensor_to_uint8(probe.detokenize(codes[None]))[0].astype(np.int16)
    rows, columns = np.mgrid[0 : codes.shape[0] * factor, 0 : codes.shape[1] * factor] // factor
    distance = np.maximum(np.abs(rows - middle), np.abs(columns - middle))
    reach = 0
    for code in torch.randint(0, size, (2,), generator=generator).tolist():
        edited = codes.clone()
        edited[middle, middle] = code
        moved = np.abs(tensor_to_uint8(probe.detokenize(edited[None]))[0] - before).max(-1) > 1
        farthest = max(ring for ring in range(middle + 1) if moved[distance == ring].mean() > REACHED_SHARE)
        reach = max(reach, bound if farthest == middle else farthest + 1)
    _MEASURED_REACH[tokenizer] = min(reach, bound)
    return _MEASURED_REACH[tokenizer]


@torch.no_grad()
def decode_edit(
    tokenizer: VQModel, kept: DecodedCodes, row: int, column: int, code: int, window: int | None = None
) -> np.ndarray:
    """The kept image with cell (row, column) decoded as `code`: (h*f, w*f, 3) uint8, the `window` tokens
    (by default the tokenizer's measured `edit_reach`) around the cell decoded again and the rest as kept."""
    rows, columns = kept.codes.shape
    if not (0 <= row < rows and 0 <= column < columns):
        raise ValueError(f"cell ({row}, {column}) is outside the {rows}x{columns} grid of codes")
    codes = kept.codes.clone()
    codes[row, column] = code
    tokenizer._check_codes(codes[None])
    latent_reach, upsampled_reach = kept.reach
    window = kept.window if window is None else window
    shown = Box(row, column, row + 1, column + 1).grown(window, rows, columns)
    upsampled_box = shown.grown(math.ceil(upsampled_reach), rows, columns)
    if upsampled_box == Box(0, 0, rows, columns):
        # The window's reach is the whole grid: a full decode costs no more, and is exact where the kept statistics
        # of a small grid would not be (one code of a few dozen moves them).
        return tensor_to_uint8(tokenizer.detokenize(codes[None]))[0]
    latent_box = upsampled_box.grown(math.ceil(latent_reach), rows, columns)

    decoder = private_copy(tokenizer.decoder)
    counter = ReachCounter(decoder)
    for name, module in decoder.named_modules():
        if isinstance(module, Float32GroupNorm):
            module.forward = _frozen_norm(module, *kept.statistics[name])
        elif isinstance(module, AttnBlock):
            module.forward = _windowed_attention(module, *kept.keys_values[name], latent_box, (rows, columns), counter)
    counter.start(rows)
    latent_rows, latent_columns = latent_box.within(Box(0, 0, rows, columns))
    features = decoder.latent_features(_latent(tokenizer, codes[latent_rows, latent_columns]))
    upsampled_rows, upsampled_columns = upsampled_box.within(latent_box)
    decoded = decoder.upsampled(features[..., upsampled_rows, upsampled_columns])
    factor = tokenizer.downsample_factor
    shown_rows, shown_columns = shown.within(upsampled_box, factor)
    pixels = kept.pixels.copy()
    target_rows, target_columns = shown.within(Box(0, 0, rows, columns), factor)
    pixels[target_rows, target_columns] = tensor_to_uint8(decoded[..., shown_rows, shown_columns])[0]
    return pixels


def _frozen_norm(norm: Float32GroupNorm, mean: torch.Tensor, inverse_std: torch.Tensor) -> Callable:
    """`norm` with the full decode's statistics in place of the window's own."""
    per_channel = norm.num_channels // norm.num_groups
    shift = mean.repeat_interleave(per_channel, dim=1)[..., None, None]
    scale = inverse_std.repeat_interleave(per_channel, dim=1)[..., None, None] * norm.weight.float()[:, None, None]
    bias = norm.bias.float()[:, None, None]

    def forward(x: torch.Tensor) -> torch.Tensor:
        normalized = (x.float() - shift) * scale + bias
        return (F.silu(normalized) if norm.silu else normalized).to(x.dtype)  # rounded once, as the CPU kernel does

    return forward


def _windowed_attention(
    block: AttnBlock,
    keys: torch.Tensor,
    values: torch.Tensor,
    box: Box,
    grid: tuple[int, int],
    counter: ReachCounter,
) -> Callable:
    """`block` (AttnBlock.forward's computation) for the positions of `box`, attending to every position of the
    grid: the kept keys and values, with those the window computes exactly put in their place."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = block.norm(x)
        q, k, v = block.q(y), block.k(y), block.v(y)
        # A side of the window cut from the grid was padded with zeros where the full decode saw neighbours: the
        # positions within the reach of the convolutions run so far from that side are not exact.
        margin = math.ceil(counter.tokens)
        exact = Box(
            margin if box.top > 0 else 0,
            margin if box.left > 0 else 0,
            h - (margin if box.bottom < grid[0] else 0),
            w - (margin if box.right < grid[1] else 0),
        )
        all_keys, all_values = keys.clone(), values.clone()
        if exact.bottom > exact.top and exact.right > exact.left:
            inside = Box(box.top + exact.top, box.left + exact.left, box.top + exact.bottom, box.left + exact.right)
            target = inside.within(Box(0, 0, *grid))
            source = exact.within(Box(0, 0, h, w))
            all_keys[..., target[0], target[1]] = k[..., source[0], source[1]]
            all_values[..., target[0], target[1]] = v[..., source[0], source[1]]
        positions = grid[0] * grid[1]
        query = q.reshape(b, 1, c, h * w).transpose(2, 3).contiguous()
        key = all_keys.reshape(b, 1, c, positions).transpose(2, 3).contiguous()
        value = all_values.reshape(b, 1, c, positions).transpose(2, 3).contiguous()
        attended = F.scaled_dot_product_attention(query, key, value)
        return x + block.proj_out(attended.transpose(2, 3).reshape(b, c, h, w))

    return forward
