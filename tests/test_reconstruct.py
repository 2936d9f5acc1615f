"""`llamagen reconstruct` and the reconstruction it reports."""

import argparse
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from llamagen.cli import main
from llamagen.data.photos import PHOTO_NAMES, load_photo
from llamagen.tokenizer import VQModel, vq_preset
from llamagen.tokenizer.reconstruction import pad_to_multiple, reconstruct


def photo_file(tmp_path, size=(30, 22), name="photo.png"):
    """A crop of a bundled photo, of a size the tokenizer's factor 4 does not divide."""
    path = tmp_path / name
    load_photo("coffee").crop((200, 100, 200 + size[0], 100 + size[1])).save(path)
    return path


def test_padding_repeats_the_edge_and_is_cropped_back(reference_tokenizer, tmp_path):
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (1, 1, 4, 4)
    assert torch.equal(padded[0, 0, :2, :3], x[0, 0])
    assert torch.equal(padded[0, 0, 3], torch.tensor([3.0, 4.0, 5.0, 5.0]))
    assert pad_to_multiple(padded, 4) is padded

    image = Image.open(photo_file(tmp_path))
    result = reconstruct(reference_tokenizer, image)
    assert result.reconstruction.size == image.size == (30, 22)
    assert tuple(result.codes.shape) == (6, 8)  # ceil(22/4) x ceil(30/4)
    assert result.side_by_side().size == (60, 22)


def test_reported_numbers(reference_tokenizer, tmp_path):
    image = Image.open(photo_file(tmp_path, size=(32, 32)))
    result = reconstruct(reference_tokenizer, image)
    original = np.asarray(image, dtype=np.float64)
    decoded = np.asarray(result.reconstruction, dtype=np.float64)
    expected_psnr = 10 * math.log10(255**2 / ((original - decoded) ** 2).mean())
    assert result.psnr == pytest.approx(expected_psnr)
    assert result.bits_per_pixel == pytest.approx(8 * 8 * 9 / (32 * 32))  # 64 tokens x log2(512) bits
    assert result.distinct_codes == len(set(result.codes.flatten().tolist()))
    assert 0 < result.distinct_codes <= 64
    # SSIM as scikit-image computes it on the two 8-bit images (data range 255, Gaussian window): the original's
    # data range of 2 for [0, 1] images gave 0.112 instead of 0.034 on this pair when tried by hand.
    expected_ssim = structural_similarity(original, decoded, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=255)  # fmt: skip
    assert result.ssim == pytest.approx(expected_ssim, abs=1e-9)


def test_the_command_writes_the_pair_and_prints_the_measures(published_vq_file, tmp_path, capsys):
    out = tmp_path / "out.png"
    code = main(
        [
            "reconstruct",
            str(photo_file(tmp_path)),
            "--tokenizer",
            str(published_vq_file),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for label in ("PSNR", "SSIM", "bits/pixel", "distinct codes", "8x6 = 48"):
        assert label in printed
    written = Image.open(out)
    assert written.format == "PNG" and written.size == (60, 22)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_command_runs_in_bf16_and_on_a_bundled_photo(published_vq_file, tmp_path, capsys):
    out = tmp_path / "sample.png"
    assert (
        main(
            [
                "reconstruct",
                "--sample",
                "camera",
                "--tokenizer",
                str(published_vq_file),
                "--out",
                str(out),
                "--dtype",
                "bf16",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "bfloat16" in capsys.readouterr().out
    assert Image.open(out).size == (1024, 512)


@pytest.mark.parametrize(
    ("make_input", "extra", "message"),
    [
        (lambda d: d / "missing.png", [], "no image file"),
        (
            lambda d: (d / "notes.png").write_text("notes") and d / "notes.png",
            [],
            "not an image that PIL can read",
        ),
        (lambda d: (d / "empty.png").write_bytes(b"") or d / "empty.png", [], "empty file"),
        (lambda d: photo_file(d), ["--max-megapixels", "0.0001"], "the limit is 100 pixels (0.0001 megapixels)"),
        (lambda d: photo_file(d), ["--config", "VQ-16"], "does not match the model's configuration"),
        (lambda d: photo_file(d), ["--config", "{not json"], "not valid JSON"),
        (lambda d: photo_file(d), ["--config", "VQ-99"], "unknown tokenizer preset"),
    ],
    ids=["missing", "not-an-image", "empty", "too-large", "wrong-config", "bad-json", "bad-preset"],
)
def test_bad_input_is_reported_and_nothing_is_written(published_vq_file, tmp_path, capsys, make_input, extra, message):
    out = tmp_path / "out.png"
    code = main(
        [
            "reconstruct",
            str(make_input(tmp_path)),
            "--tokenizer",
            str(published_vq_file),
            "--out",
            str(out),
            "--device",
            "cpu",
            *extra,
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("out", "message"), [("out.xyz", "unknown image format"), ("no/such/dir/out.png", "does not exist")]
)
def test_an_unwritable_output_is_refused_before_any_work(published_vq_file, tmp_path, capsys, out, message):
    code = main(
        [
            "reconstruct",
            str(photo_file(tmp_path)),
            "--tokenizer",
            str(published_vq_file),
            "--out",
            str(tmp_path / out),
        ]
    )
    assert code == 2 and message in capsys.readouterr().err


def test_a_json_config_file_is_accepted(published_vq_file, tmp_path):
    config = tmp_path / "vq.json"
    config.write_text(json.dumps(vq_preset("VQ-4-tiny").to_dict()))
    assert (
        main(
            [
                "reconstruct",
                str(photo_file(tmp_path)),
                "--tokenizer",
                str(published_vq_file),
                "--config",
                str(config),
                "--out",
                str(tmp_path / "o.png"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )


def test_every_bundled_photo_loads():
    for name in PHOTO_NAMES:
        photo = load_photo(name)
        assert photo.mode == "RGB" and min(photo.size) >= 100, name
    with pytest.raises(ValueError, match="astronaut"):
        load_photo("lena")


def test_the_console_command_is_installed():
    result = subprocess.run([sys.executable, "-m", "llamagen", "reconstruct", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--tokenizer" in result.stdout


@pytest.mark.slow
def test_a_published_size_vq16_checkpoint_reconstructs_a_photo(tmp_path, capsys):
    """A randomly initialised VQ-16 saved as the original saves it (weights under 'model', args beside)."""
    torch.manual_seed(0)
    path = tmp_path / "vq_ds16_c2i.pt"
    args = argparse.Namespace(vq_model="VQ-16", codebook_size=16384, codebook_embed_dim=8, image_size=256)
    torch.save({"model": VQModel(vq_preset("VQ-16")).state_dict(), "steps": 0, "args": args}, path)
    out = tmp_path / "pair.png"
    assert (
        main(
            [
                "reconstruct",
                str(photo_file(tmp_path, size=(70, 50))),
                "--tokenizer",
                str(path),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "16384 codes x 8 dims, downsample 16" in printed
    assert "5x4 = 20" in printed  # 70x50 padded to 80x64
    assert Image.open(out).size == (140, 50)


def test_the_embedded_photo_tokenizer_reconstructs_a_photo_it_never_saw():
    """The shipped `photo-vq`, by name: its card's numbers hold for what users load."""
    from llamagen.checkpoints import embedded_card, embedded_models
    from llamagen.tokenizer.loading import load_tokenizer

    assert "photo-vq" in embedded_models()
    card = embedded_card("photo-vq")
    tokenizer = load_tokenizer("photo-vq", device="cpu")
    assert tokenizer.config.codebook_size == 16384 and tokenizer.config.codebook_embed_dim == 8
    assert tokenizer.downsample_factor == 8
    photo = load_photo("grace_hopper").crop((0, 0, 256, 256))
    result = reconstruct(tokenizer, photo)
    assert result.psnr > card["evaluation"]["psnr"] - 3  # one crop of the card's 15 held-out crops
    assert result.psnr > 16
