"""A local re-decode of one edited code against the full decode it stands in for."""

import numpy as np
import pytest
import torch
from helpers import small_tokenizer

from llamagen.data.samples import sample_image
from llamagen.images import pil_to_tensor, tensor_to_uint8
from llamagen.tokenizer.loading import load_tokenizer
from llamagen.tokenizer.local_decode import decode_edit, recorded_decode
from llamagen.tokenizer.reconstruction import reconstruct, tokenize_image


@pytest.fixture(scope="module")
def photo():
    """photo-vq in float32 (bf16's own rounding would blur what is compared) and a 600x400 photo's codes."""
    tokenizer = load_tokenizer("photo-vq", device="cpu", dtype=torch.float32)
    codes = tokenize_image(tokenizer, sample_image("coffee"))
    assert codes.shape == (50, 75)
    return tokenizer, codes, recorded_decode(tokenizer, codes)


def full_decode(tokenizer, codes: torch.Tensor) -> np.ndarray:
    return tensor_to_uint8(tokenizer.detokenize(codes[None]))[0].astype(int)


def edited(codes: torch.Tensor, row: int, column: int, code: int) -> torch.Tensor:
    codes = codes.clone()
    codes[row, column] = code
    return codes


def token_distance(shape: tuple[int, int], factor: int, row: int, column: int) -> np.ndarray:
    """Each pixel's distance in tokens (the larger of rows and columns) from cell (row, column)."""
    rows, columns = np.mgrid[0 : shape[0] * factor, 0 : shape[1] * factor] // factor
    return np.maximum(np.abs(rows - row), np.abs(columns - column))


def test_a_recorded_decode_is_the_full_decode_and_counts_each_stages_reach(photo):
    tokenizer, codes, decoded = photo
    assert np.array_equal(decoded.pixels, full_decode(tokenizer, codes))
    # photo-vq (ch_mult 1,1,2,2, one residual block a level, so two in the decoder's): at the latent resolution
    # conv_in, two middle and two first-level blocks of two 3x3 convolutions each see 1 + 4 + 4 tokens; then
    # three upsampling convolutions, four in each higher level and conv_out, at 2x, 4x and 8x: 4.5 tokens.
    assert decoded.reach == (9.0, 4.5)
    # Measured on random codes: an edit moves pixels by more than a level up to 4 tokens away, and one more for
    # images whose edits reach farther.
    assert decoded.window == 5
    fast = load_tokenizer("photo-vq", device="cpu", dtype=torch.bfloat16)
    assert np.array_equal(recorded_decode(fast, codes).pixels, full_decode(fast, codes))


@pytest.mark.parametrize("cell", [(25, 37), (0, 0), (49, 20)], ids=["middle", "corner", "bottom edge"])
def test_an_edit_decoded_locally_is_the_full_decode_within_one_level(photo, cell):
    tokenizer, codes, decoded = photo
    row, column = cell
    code = (int(codes[row, column]) + 7919) % tokenizer.config.codebook_size
    full = full_decode(tokenizer, edited(codes, row, column, code))
    local = decode_edit(tokenizer, decoded, row, column, code).astype(int)
    distance = token_distance(codes.shape, tokenizer.downsample_factor, row, column)
    change = np.abs(full - decoded.pixels).max(-1)
    # The decoder's reach, that the window rests on: the edit moves pixels by more than ten levels at its cell (17
    # to 218 at these three), and by at most one level (rounding) beyond the window.
    assert change[distance == 0].max() > 10 and change[distance > decoded.window].max() <= 1
    assert np.abs(local - full).max() <= 1
    # A window too small for that reach (the cell alone) misses what changed around it.
    assert np.abs(decode_edit(tokenizer, decoded, row, column, code, window=0).astype(int) - full).max() > 1


def test_an_unchanged_code_decodes_to_the_kept_image(photo):
    tokenizer, codes, decoded = photo
    same = decode_edit(tokenizer, decoded, 25, 37, int(codes[25, 37]))
    assert np.abs(same.astype(int) - decoded.pixels).max() <= 1


def test_an_edit_outside_the_grid_or_the_codebook_is_refused():
    tokenizer = small_tokenizer()
    codes = tokenizer.tokenize(pil_to_tensor(sample_image("shapes 0").resize((16, 16))))[0]
    decoded = recorded_decode(tokenizer, codes)
    with pytest.raises(ValueError, match=r"cell \(4, 0\) is outside the 4x4 grid of codes"):
        decode_edit(tokenizer, decoded, 4, 0, 1)
    with pytest.raises(ValueError, match=r"codes must be in \[0, 64\)"):
        decode_edit(tokenizer, decoded, 0, 0, 64)
    # A grid within the window's reach is decoded in full.
    code = (int(codes[1, 2]) + 1) % 64
    local = decode_edit(tokenizer, decoded, 1, 2, code).astype(int)
    assert np.array_equal(local, full_decode(tokenizer, edited(codes, 1, 2, code)))


def test_a_reconstruction_kept_for_edits_is_the_plain_one():
    tokenizer = load_tokenizer("photo-vq", device="cpu", dtype="auto")
    image = sample_image("coffee").resize((150, 100))
    plain, kept = reconstruct(tokenizer, image), reconstruct(tokenizer, image, keep_for_edits=True)
    assert plain.decoded is None and torch.equal(kept.decoded.codes, plain.codes)
    assert np.array_equal(np.asarray(kept.reconstruction), np.asarray(plain.reconstruction))
    assert kept.psnr == plain.psnr and kept.decoded.pixels.shape == (104, 152, 3)  # padded to multiples of 8
