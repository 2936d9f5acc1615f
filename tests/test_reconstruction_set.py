"""`llamagen reconstruct --folder`: every image under a folder through the tokenizer, in shards, with its
originals beside, which `llamagen eval samples` reads."""

import numpy as np
import pytest
from PIL import Image

from llamagen.cli import main
from llamagen.evaluation.judges import held_out
from llamagen.evaluation.reconstruction_set import fitted
from llamagen.images import tensor_to_pil
from llamagen.tokenizer.loading import load_tokenizer
from llamagen.tokenizer.reconstruction import reconstruct


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Five held-out shapes in two class folders, one of them enlarged to 100x80 (resized and cropped back)."""
    root = tmp_path_factory.mktemp("images")
    images = tensor_to_pil(held_out("shapes", 5)[0])
    for index, image in enumerate(images):
        (root / f"class{index % 2}").mkdir(exist_ok=True)
        shown = image.resize((100, 80), Image.Resampling.BICUBIC) if index == 4 else image
        shown.save(root / f"class{index % 2}" / f"{index}.png")
    return root


def test_a_folder_is_reconstructed_as_each_image_alone_with_its_originals_beside(folder, tmp_path, capsys):
    out = tmp_path / "rec.npz"
    argv = ["reconstruct", "--folder", str(folder), "--tokenizer", "shapes-vq", "--size", "64", "--shard-size", "2",
            "--batch-size", "2", "--dtype", "float32", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    files = sorted(folder.rglob("*.png"))  # by path: class0/0, class0/2, class0/4, class1/1, class1/3
    tokenizer = load_tokenizer("shapes-vq", dtype="float32")
    with np.load(out) as reconstructions, np.load(tmp_path / "rec.originals.npz") as originals:
        assert reconstructions["arr_0"].shape == originals["arr_0"].shape == (5, 64, 64, 3)
        for index, path in enumerate(files):
            alone = reconstruct(tokenizer, fitted(Image.open(path), 64))
            assert np.array_equal(originals["arr_0"][index], np.asarray(alone.original))
            # Decoded in a batch of two, a pixel may move by a level from the decode alone.
            difference = reconstructions["arr_0"][index].astype(int) - np.asarray(alone.reconstruction).astype(int)
            assert np.abs(difference).max() <= 1
            assert reconstructions["psnr"][index] == pytest.approx(alone.psnr, abs=0.1)
        mean_psnr = reconstructions["psnr"].mean()
    assert f"PSNR        {mean_psnr:.2f} dB (mean)" in capsys.readouterr().out
    assert not (tmp_path / "rec.npz.shards").exists()
    # The pair is what the standard measures read.
    assert main(["eval", "samples", str(out), "--reference", str(tmp_path / "rec.originals.npz"), "--judge",
                 "shapes"]) == 0  # fmt: skip


def test_a_folder_without_images_or_an_output_that_is_not_npz_is_refused(tmp_path, folder, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["reconstruct", "--folder", str(tmp_path / "empty"), "--tokenizer", "shapes-vq", "--out"]
    assert main([*argv, str(tmp_path / "rec.npz")]) == 2
    assert "holds no image files" in capsys.readouterr().err
    argv[2] = str(folder)
    assert main([*argv, str(tmp_path / "rec.png")]) == 2
    assert "a folder's reconstructions go to an .npz" in capsys.readouterr().err
