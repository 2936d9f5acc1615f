"""The tokenizer reproduces the original implementation's outputs for the same weights and inputs."""

import json
from pathlib import Path

import torch
from safetensors import safe_open

from llamagen import load_tokenizer
from llamagen.tokenizer import vq_preset

TOLERANCE = 1e-5


def test_reference_config_is_the_tiny_preset():
    with safe_open(Path(__file__).parent / "fixtures" / "vq_small.safetensors", "pt") as file:
        original = json.loads(file.metadata()["config"])
    preset = vq_preset("VQ-4-tiny")
    assert preset.ch == original["ch"]
    assert preset.encoder_ch_mult == original["ch_mult"] == preset.decoder_ch_mult
    assert preset.num_res_blocks == original["num_res_blocks"]
    assert preset.z_channels == original["z_channels"]
    assert preset.codebook_size == original["codebook_size"]
    assert preset.codebook_embed_dim == original["codebook_embed_dim"]
    assert preset.codebook_l2_norm is original["codebook_l2_norm"]


def test_codes_are_identical(reference_tokenizer, vq_reference):
    codes = reference_tokenizer.tokenize(vq_reference["input.image"])
    assert codes.dtype == torch.int64
    assert torch.equal(codes, vq_reference["expected.codes"])


def test_quantized_latent_matches(reference_tokenizer, vq_reference):
    with torch.no_grad():
        quantized = reference_tokenizer.encode(vq_reference["input.image"])
    torch.testing.assert_close(quantized.quantized, vq_reference["expected.quant"], atol=TOLERANCE, rtol=0)
    assert torch.equal(quantized.codes, vq_reference["expected.codes"])


def test_decoded_images_match(reference_tokenizer, vq_reference):
    with torch.no_grad():
        decoded = reference_tokenizer.decode(vq_reference["expected.quant"])
    torch.testing.assert_close(decoded, vq_reference["expected.decoded"], atol=TOLERANCE, rtol=0)


def test_decoding_from_codes_matches(reference_tokenizer, vq_reference):
    decoded = reference_tokenizer.detokenize(vq_reference["expected.codes"])
    torch.testing.assert_close(decoded, vq_reference["expected.decode_code"], atol=TOLERANCE, rtol=0)


def test_published_layout_file_reproduces_the_reference(published_vq_file, vq_reference):
    """Loaded from a .pt in the original's layout, with the config read off the weights' shapes."""
    tokenizer = load_tokenizer(published_vq_file, device="cpu")
    assert tokenizer.config == vq_preset("VQ-4-tiny")
    assert torch.equal(tokenizer.tokenize(vq_reference["input.image"]), vq_reference["expected.codes"])
    decoded = tokenizer.detokenize(vq_reference["expected.codes"])
    torch.testing.assert_close(decoded, vq_reference["expected.decode_code"], atol=TOLERANCE, rtol=0)


def test_usage_window_of_the_original_loads_and_counts(published_vq_file, vq_reference_state):
    """The original's float window (zeros before training) loads into the integer window unchanged."""
    tokenizer = load_tokenizer(published_vq_file, device="cpu")
    window = vq_reference_state["quantize.codebook_used"]
    assert torch.equal(tokenizer.quantize.codebook_used, window.long())
    assert tokenizer.codebook_usage() == window.unique().numel() / 512
