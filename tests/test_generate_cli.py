"""`llamagen generate`: tokens sampled by the generator, decoded by the tokenizer, one PNG grid."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from llamagen import save
from llamagen.cli import main
from llamagen.gpt import GPT, gpt_preset
from llamagen.tokenizer import VQModel, vq_preset


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """A random 8x8-token generator (vocab 512, 10 classes) and a downsample-4 tokenizer with 512 codes."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    gpt = save(GPT(gpt_preset("GPT-XS", vocab_size=512, num_classes=10)), folder / "gpt.safetensors")
    tokenizer = save(VQModel(vq_preset("VQ-4-tiny")), folder / "vq.safetensors")
    return str(gpt), str(tokenizer)


def run(small_pair, tmp_path, *extra):
    gpt, tokenizer = small_pair
    return main(
        [
            "generate",
            "--gpt",
            gpt,
            "--tokenizer",
            tokenizer,
            "--out",
            str(tmp_path / "grid.png"),
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_a_grid_of_the_right_size_is_written(small_pair, tmp_path, capsys):
    assert run(small_pair, tmp_path, "--class", "1", "7", "--images-per-class", "3", "--top-k", "50") == 0
    grid = Image.open(tmp_path / "grid.png")
    # 2 rows (classes) x 3 columns of 32x32 images (8x8 tokens x downsample 4), 2-pixel borders; each pixel drawn
    # 4x4, so that each image is 128 pixels wide.
    assert grid.format == "PNG" and grid.size == (4 * (3 * 34 + 2), 4 * (2 * 34 + 2))
    assert "6 images of class 1, class 7 (416x280 grid, each pixel drawn 4x4)" in capsys.readouterr().out
    assert (
        run(small_pair, tmp_path, "--class", "1", "7", "--images-per-class", "3", "--top-k", "50", "--pixel-scale", "1")
        == 0
    )
    native = Image.open(tmp_path / "grid.png")
    assert native.size == (3 * 34 + 2, 2 * 34 + 2)
    assert np.array_equal(np.asarray(grid), np.asarray(native).repeat(4, 0).repeat(4, 1))


def test_the_same_seed_gives_the_same_images(small_pair, tmp_path):
    run(small_pair, tmp_path, "--class", "3", "--seed", "5")
    first = (tmp_path / "grid.png").read_bytes()
    run(small_pair, tmp_path, "--class", "3", "--seed", "5")
    assert (tmp_path / "grid.png").read_bytes() == first
    run(small_pair, tmp_path, "--class", "3", "--seed", "6")
    assert (tmp_path / "grid.png").read_bytes() != first


def test_greedy_parallel_decoding_draws_the_same_grid(small_pair, tmp_path):
    run(small_pair, tmp_path, "--class", "3", "7", "--top-k", "1")
    sequential = (tmp_path / "grid.png").read_bytes()
    run(small_pair, tmp_path, "--class", "3", "7", "--top-k", "1", "--jacobi-window", "4")
    assert (tmp_path / "grid.png").read_bytes() == sequential


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--class", "10"], "class id 10 is outside 0..9"),
        (["--class", "red star"], "this generator has no class names"),
        (["--class", "1", "--top-k", "513"], "top_k must be in [0, 512]"),
        (["--class", "1", "--cfg-scale", "-2"], "cfg_scale must be >= 0"),
        (["--class", "1", "--top-p", "0"], "top_p must be in (0, 1]"),
        (["--class", "1", "--jacobi-window", "-1"], "jacobi_window must be a whole number of tokens >= 0"),
        ([], "at least one class"),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_written(small_pair, tmp_path, capsys, extra, message):
    assert run(small_pair, tmp_path, *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "grid.png").exists()


def test_a_tokenizer_of_another_vocabulary_is_refused(small_pair, tmp_path, capsys):
    other = save(VQModel(vq_preset("VQ-4-tiny", codebook_size=256)), tmp_path / "other.safetensors")
    code = main(
        [
            "generate",
            "--gpt",
            small_pair[0],
            "--tokenizer",
            str(other),
            "--class",
            "1",
            "--out",
            str(tmp_path / "grid.png"),
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert "predicts 512 codes but the tokenizer's codebook has 256" in capsys.readouterr().err


@pytest.mark.slow
def test_the_readme_command_for_the_published_b_model(tmp_path, capsys):
    """c2i_B_256.pt with vq_ds16_c2i.pt, both randomly initialised and saved as the original saves them."""
    torch.manual_seed(0)
    args = argparse.Namespace(gpt_model="GPT-B", image_size=256)
    torch.save({"model": GPT(gpt_preset("GPT-B")).state_dict(), "args": args}, tmp_path / "c2i_B_256.pt")
    torch.save({"model": VQModel(vq_preset("VQ-16")).state_dict()}, tmp_path / "vq_ds16_c2i.pt")
    code = main(
        [
            "generate",
            "--tokenizer",
            str(tmp_path / "vq_ds16_c2i.pt"),
            "--gpt",
            str(tmp_path / "c2i_B_256.pt"),
            "--class",
            "207",
            "--cfg-scale",
            "4",
            "--top-k",
            "2000",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "grid.png"),
            "--dtype",
            "bf16",
            "--device",
            "cpu",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "grid.png").size == (256, 256)  # one 16x16-token image, no border


def test_an_embedded_generator_samples_with_its_cards_settings_unless_told_otherwise(tmp_path, capsys):
    from llamagen.checkpoints import embedded_card
    from llamagen.pipeline import load_pipeline

    out = tmp_path / "grid.png"
    command = ["generate", "--gpt", "shapes-c2i", "--class", "red star", "--pixel-scale", "1", "--out", str(out)]
    assert main(command) == 0
    best = embedded_card("shapes-c2i")["sampling"]["cfg_scale"]
    assert f"guidance {best:g}, top-k 0, top-p 1, temperature 1 (from shapes-c2i's card)" in capsys.readouterr().out
    expected = load_pipeline("shapes-c2i")(class_labels=["red star"], cfg_scale=best, top_k=0, seed=0).grid()
    assert (np.asarray(Image.open(out).convert("RGB")) == np.asarray(expected)).all()
    assert main(["generate", "--gpt", "shapes-c2i", "--class", "red star", "--cfg-scale", "4", "--out", str(out)]) == 0
    assert "guidance 4, top-k 0, top-p 1, temperature 1 (--cfg-scale as given; the rest from shapes-c2i's card)" in (
        capsys.readouterr().out
    )
    command = [*command[:-2], "--cfg-scale", "3", "--cfg-schedule", "linear", "--out", str(out)]
    assert main(command) == 0
    assert "guidance 3 (linear schedule), top-k 0" in capsys.readouterr().out
    linear = load_pipeline("shapes-c2i")(class_labels=["red star"], cfg_scale=3, cfg_schedule="linear", seed=0).grid()
    assert (np.asarray(Image.open(out).convert("RGB")) == np.asarray(linear)).all()


def test_complete_writes_each_original_beside_its_completions(tmp_path, capsys):
    from llamagen.evaluation.judges import held_out
    from llamagen.images import tensor_to_pil

    photo = tmp_path / "red-circle.png"
    tensor_to_pil(held_out("shapes", 1)[0])[0].save(photo)
    out = tmp_path / "completed.png"
    command = ["complete", str(photo), "--gpt", "shapes-c2i", "--keep-rows", "3", "--class", "red circle",
               "blue square", "--images-per-class", "2", "--pixel-scale", "1", "--out", str(out)]  # fmt: skip
    assert main(command) == 0
    # 2 rows (conditions) x 3 columns (the original, 2 completions) of 64x64 images with 2-pixel borders.
    assert Image.open(out).size == (3 * 66 + 2, 2 * 66 + 2)
    printed = capsys.readouterr().out
    assert "4 completions of 3 kept rows of red circle, blue square (200x134 grid, the original first" in printed
    assert main([*command[:5], "9", *command[6:]]) == 2
    assert "keep_rows must be a whole number of token rows from 0 to 8, got 9" in capsys.readouterr().err
    (tmp_path / "not-an-image.png").write_text("hello")
    assert main(["complete", str(tmp_path / "not-an-image.png"), *command[2:]]) == 2
    assert "is not an image that PIL can read" in capsys.readouterr().err
