"""The tokenizer's architecture, codebook, losses, usage window and input checks."""

import math

import pytest
import torch
import torch.nn.functional as F

from llamagen.tokenizer import VQConfig, VQModel, vq_preset
from llamagen.tokenizer.quantizer import (
    USAGE_WINDOW,
    VectorQuantizer,
    entropy_loss,
    first_minimum,
    nearest_entries,
    squared_distances,
)


def tiny(**overrides) -> VQModel:
    torch.manual_seed(0)
    return VQModel(vq_preset("VQ-4-tiny", **overrides)).eval()


def random_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=generator) * 2 - 1


@pytest.mark.parametrize(("preset", "prefix"), [("VQ-16", "VQ-16:"), ("VQ-8", "VQ-8:")])
def test_state_dict_has_exactly_the_published_keys_and_shapes(preset, prefix, official_keys):
    (published,) = [keys for name, keys in official_keys.items() if name.startswith(prefix)]
    ours = {key: list(value.shape) for key, value in VQModel(vq_preset(preset)).state_dict().items()}
    assert ours == published


def test_presets_have_the_published_downsample_factors():
    assert vq_preset("VQ-16").downsample_factor == 16
    assert vq_preset("VQ-8").downsample_factor == 8
    assert vq_preset("VQ-8-small").downsample_factor == 8


def test_a_batch_run_in_parts_on_the_cpu_matches_each_image_alone(monkeypatch):
    import llamagen.tokenizer.model as tokenizer_model

    monkeypatch.setattr(tokenizer_model, "CPU_PIXELS_AT_A_TIME", 3 * 16 * 16)  # parts of 3 images: 3, 3 and 1
    model = tiny()
    images = random_images(7, 16, 16)
    assert [len(part) for part in model._parts(images)] == [3, 3, 1]
    codes = model.tokenize(images)
    assert torch.equal(codes, torch.cat([model.tokenize(image[None]) for image in images]))
    assert [len(part) for part in model._parts(codes)] == [3, 3, 1]  # codes are counted in the pixels they draw
    torch.testing.assert_close(model.detokenize(codes), torch.cat([model.detokenize(c[None]) for c in codes]))


@pytest.mark.parametrize(("height", "width"), [(32, 32), (24, 40), (4, 8)])
def test_tokenize_and_detokenize_any_multiple_of_the_factor(height, width):
    model = tiny()
    codes = model.tokenize(random_images(2, height, width))
    assert codes.shape == (2, height // 4, width // 4)
    assert codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < 512
    images = model.detokenize(codes)
    assert images.shape == (2, 3, height, width)
    assert images.dtype == torch.float32


def test_inference_path_equals_training_path():
    """tokenize/detokenize give what the training forward computes (codes and reconstruction)."""
    model = tiny()
    images = random_images(2, 16, 24)
    with torch.no_grad():
        output = model(images)
    assert torch.equal(model.tokenize(images), output.quantizer.codes)
    # Only the straight-through sum z + (e - z), which rounds differently from e, separates the two.
    torch.testing.assert_close(model.detokenize(output.quantizer.codes), output.reconstruction, atol=1e-5, rtol=0)


def test_l2_normalised_codebook_lies_on_the_unit_sphere():
    model = tiny()
    assert torch.allclose(model.quantize.embedding.weight.norm(dim=-1), torch.ones(512))
    with torch.no_grad():
        quantized = model.encode(random_images(1, 16, 16)).quantized
    assert torch.allclose(quantized.norm(dim=1), torch.ones(1, 4, 4), atol=1e-6)


def test_nearest_code_is_the_cosine_nearest_with_l2_and_euclidean_nearest_without():
    torch.manual_seed(0)
    latent = torch.randn(2, 8, 3, 5)
    flat = latent.permute(0, 2, 3, 1).reshape(-1, 8)
    for l2_norm in (True, False):
        quantizer = VectorQuantizer(64, 8, 0.25, 0.0, l2_norm=l2_norm, show_usage=False)
        with torch.no_grad():
            quantizer.embedding.weight.normal_()
        codebook = quantizer.embedding.weight
        if l2_norm:
            expected = (F.normalize(flat, dim=-1) @ F.normalize(codebook, dim=-1).t()).argmax(1)
        else:
            expected = torch.cdist(flat, codebook).argmin(1)
        assert torch.equal(quantizer.nearest_codes(latent).flatten(), expected)


def test_normalisation_can_be_switched_off():
    model = tiny(codebook_l2_norm=False)
    weight = model.quantize.embedding.weight
    # The original's initialisation: uniform in +-1/K, left unnormalised.
    assert weight.abs().max() <= 1 / 512
    torch.testing.assert_close(model.quantize.codebook(), weight)


def test_chunked_nearest_codes_equal_the_unchunked_forward():
    """The distance matrix is split into row chunks at inference; the result must not depend on it."""
    quantizer = VectorQuantizer(512, 8, 0.25, 0.0, l2_norm=True, show_usage=False)
    latent = torch.randn(2, 8, 64, 48)  # 6144 rows: more than one chunk
    assert torch.equal(quantizer.nearest_codes(latent), quantizer(latent).codes)


def test_distances_are_the_expanded_form_to_the_bit_and_ties_go_to_the_first_code():
    """The product writes the subtraction itself and `min` stands for argmin: neither may move a near tie."""
    generator = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(3000, 8, generator=generator), dim=1)
    codebook = F.normalize(torch.randn(16384, 8, generator=generator), dim=1)
    expanded = z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * z @ codebook.t()
    assert torch.equal(squared_distances(z, codebook), expanded)
    assert torch.equal(nearest_entries(z, codebook), expanded.argmin(1))
    # A codebook holding each entry twice: the first copy wins, as argmin has it.
    doubled = torch.cat([codebook[:100], codebook[:100]])[torch.arange(200).reshape(2, 100).t().flatten()]
    assert torch.equal(nearest_entries(z, doubled), 2 * nearest_entries(z, codebook[:100]))
    ties = torch.tensor([[3.0, 1.0, 1.0, 2.0], [0.0, 0.0, 5.0, 0.0]])
    assert first_minimum(ties).tolist() == [1, 0]


def test_usage_window_keeps_the_last_65536_codes():
    model = tiny().train()
    assert model.codebook_usage() == 0.0
    quantizer = model.quantize
    with torch.no_grad():
        out1 = quantizer(torch.randn(1, 8, 64, 64))
    recorded = out1.codes.flatten()
    assert torch.equal(quantizer.codebook_used[-recorded.numel() :], recorded)
    assert (quantizer.codebook_used[: -recorded.numel()] == -1).all()
    assert model.codebook_usage() == recorded.unique().numel() / 512

    big = torch.randn(1, 8, 300, 300)  # 90,000 codes: more than the window holds
    with torch.no_grad():
        out2 = quantizer(big)
    assert quantizer.codebook_used.numel() == USAGE_WINDOW
    assert torch.equal(quantizer.codebook_used, out2.codes.flatten()[-USAGE_WINDOW:])


def test_dead_codes_move_onto_the_worst_represented_latents():
    quantizer = VectorQuantizer(16, 2, 0.25, 0.0, l2_norm=True, show_usage=True).train()
    generator = torch.Generator().manual_seed(0)
    latent = F.normalize(torch.randn(1, 4, 4, 2), dim=-1)
    assert not quantizer.restart_dead_codes(latent, generator).any()  # the window is not full yet
    quantizer.codebook_used.fill_(3)  # only code 3 was used
    before = quantizer.codebook().clone()
    moved = quantizer.restart_dead_codes(latent, generator)
    assert moved.sum() == 15 and not moved[3]
    assert torch.equal(quantizer.codebook()[3], before[3])
    flat = latent.reshape(-1, 2)
    for entry in quantizer.codebook()[moved]:  # every moved entry now sits on one of the latents
        assert torch.isclose(flat, entry, atol=1e-6).all(1).any()
    # The latents the codebook represented worst are now represented well: the error falls.
    nearest_before = ((flat[:, None] - before[None]) ** 2).sum(-1).amin(1)
    nearest_after = ((flat[:, None] - quantizer.codebook()[None]) ** 2).sum(-1).amin(1)
    assert (nearest_after < 1e-9).sum() >= 15 and nearest_after.sum() < nearest_before.sum()


def test_usage_is_not_recorded_in_eval_mode():
    model = tiny()
    model.tokenize(random_images(1, 16, 16))
    with torch.no_grad():
        model(random_images(1, 16, 16))
    assert (model.quantize.codebook_used == -1).all()


def test_usage_needs_show_usage():
    model = tiny(codebook_show_usage=False)
    assert "quantize.codebook_used" not in model.state_dict()
    with pytest.raises(ValueError, match="codebook_show_usage"):
        model.codebook_usage()


def test_entropy_loss_rewards_confident_and_diverse_assignments():
    n = 16
    confident_diverse = torch.eye(n) * 10.0  # each row picks its own code with certainty
    collapsed = torch.zeros(n, n)
    collapsed[:, 0] = 10.0  # every row picks code 0
    uncertain = torch.zeros(n, n)  # every row spread evenly
    assert entropy_loss(confident_diverse).item() == pytest.approx(-math.log(n), abs=1e-3)
    assert entropy_loss(collapsed).item() == pytest.approx(0.0, abs=1e-3)
    assert entropy_loss(uncertain).item() == pytest.approx(0.0, abs=1e-3)


def test_training_losses_and_straight_through_gradients():
    model = tiny(entropy_loss_ratio=0.1).train()
    images = random_images(2, 16, 16)
    output = model(images)
    q = output.quantizer
    assert q.codebook_loss > 0 and q.commitment_loss > 0 and q.entropy_loss != 0
    # beta weights the commitment term; the two squared errors are the same number.
    assert q.commitment_loss.item() == pytest.approx(0.25 * q.codebook_loss.item(), rel=1e-5)
    loss = F.mse_loss(output.reconstruction, images) + q.codebook_loss + q.commitment_loss + q.entropy_loss
    loss.backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert model.quantize.embedding.weight.grad.abs().sum() > 0
    assert model.decoder.conv_out.weight.grad.abs().sum() > 0


def test_bf16_tokenizer_agrees_with_float32():
    model = tiny()
    images = random_images(2, 32, 32)
    codes32 = model.tokenize(images)
    bf16 = tiny().to(torch.bfloat16)
    codes16 = bf16.tokenize(images)
    assert (codes16 == codes32).float().mean() > 0.8
    decoded = bf16.detokenize(codes32)
    assert decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, model.detokenize(codes32), atol=0.1, rtol=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ch": 48}, "GroupNorm"),
        ({"encoder_ch_mult": [1, 2], "decoder_ch_mult": [1, 2, 2]}, "same length"),
        ({"codebook_size": 0}, "codebook_size"),
        ({"dropout_p": 1.5}, "dropout_p"),
        ({"encoder_ch_mult": [], "decoder_ch_mult": []}, "must not be empty"),
    ],
)
def test_configs_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        vq_preset("VQ-4-tiny", **overrides)


def test_unknown_presets_and_fields_are_refused():
    with pytest.raises(ValueError, match="VQ-16"):
        vq_preset("VQ-32")
    with pytest.raises(ValueError, match="codebook_sise"):
        VQConfig.from_dict({"codebook_sise": 10})


def test_config_round_trips_through_a_dict():
    config = vq_preset("VQ-8")
    assert VQConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(3, 16, 16), r"\(B, 3, H, W\)"),
        (torch.zeros(1, 1, 16, 16), r"\(B, 3, H, W\)"),
        (torch.zeros(1, 3, 18, 16), "multiples of the downsample factor 4"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "floating point"),
        (torch.full((1, 3, 16, 16), 255.0), r"\[-1, 1\]"),
        (torch.zeros(0, 3, 16, 16), "empty"),
    ],
)
def test_tokenize_refuses_bad_images(images, message):
    with pytest.raises(ValueError, match=message):
        tiny().tokenize(images)


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (torch.zeros(4, 4, dtype=torch.long), r"\(B, h, w\)"),
        (torch.zeros(1, 4, 4), "integers"),
        (torch.full((1, 4, 4), 512), r"\[0, 512\)"),
        (torch.full((1, 4, 4), -1), r"\[0, 512\)"),
    ],
)
def test_detokenize_refuses_bad_codes(codes, message):
    with pytest.raises(ValueError, match=message):
        tiny().detokenize(codes)


def test_group_norm_sums_bf16_activations_in_float32():
    """Float32GroupNorm hands bf16 maps to torch's kernel as they are, on the promise that it sums them in
    float32: over a group of 262,144 values near 3 (where bf16 keeps two decimal digits), its output is the
    float32 computation's rounded to bf16, give or take one rounding step."""
    from llamagen.tokenizer.autoencoder import Float32GroupNorm

    norm = Float32GroupNorm(8, 32, eps=1e-6, silu=False)
    torch.nn.init.normal_(norm.weight)
    norm = norm.to(torch.bfloat16)
    x = (3 + 0.05 * torch.randn(1, 32, 256, 256)).bfloat16()
    expected = F.group_norm(x.float(), 8, norm.weight.float(), norm.bias.float(), 1e-6)
    got = norm(x)
    assert got.dtype == torch.bfloat16
    step = expected.abs().clamp(min=1e-3) * 2**-7  # one bf16 step at each value
    assert ((got.float() - expected).abs() <= step + 1e-6).all()


def test_auto_dtype_is_bf16_where_the_cpu_multiplies_it_and_the_weights_are_channels_last(tmp_path, monkeypatch):
    from llamagen import load_tokenizer, save
    from llamagen.tokenizer import loading

    save(tiny(), tmp_path / "vq.safetensors")
    monkeypatch.setattr(loading, "multiplies_bf16", lambda device: True)
    model = load_tokenizer(tmp_path / "vq.safetensors", device="cpu", dtype="auto")
    assert model.dtype == torch.bfloat16
    assert model.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(loading, "multiplies_bf16", lambda device: False)
    assert load_tokenizer(tmp_path / "vq.safetensors", device="cpu", dtype="auto").dtype == torch.float32
