"""`llamagen sample`: a set whose image i depends on i alone, written in shards that survive a stop, the same
under torchrun as in one process."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from llamagen.cli import main
from llamagen.evaluation import sample_set
from llamagen.evaluation.sample_set import image_seed
from llamagen.pipeline import load_pipeline


def sample_argv(out, *extra) -> list[str]:
    return ["sample", "--gpt", "digits-c2i", "--per-class", "1", "--shard-size", "3", "--batch-size", "2",
            "--out", str(out), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """digits-c2i's set of one image a class (4 shards of 3), written by one process without a stop."""
    folder = tmp_path_factory.mktemp("straight")
    assert main(sample_argv(folder / "set.npz", "--png-dir", str(folder / "png"))) == 0
    with np.load(folder / "set.npz") as loaded:
        return {name: loaded[name] for name in loaded.files}, folder


def test_an_image_drawn_in_a_batch_with_its_own_seed_is_the_image_drawn_alone():
    pipe = load_pipeline("digits-c2i")
    together = pipe(class_labels=[3, 7, 3], seed=[11, 12, 13]).tokens
    for row, (label, seed) in enumerate(zip([3, 7, 3], [11, 12, 13], strict=True)):
        assert torch.equal(together[row], pipe(class_labels=[label], seed=seed).tokens[0])
    with pytest.raises(ValueError, match="2 seeds for 3 images"):
        pipe(class_labels=[3, 7, 3], seed=[1, 2])
    with pytest.raises(ValueError, match="seed must be a whole number"):
        pipe(class_labels=[3], seed=[-1])


def test_the_set_is_the_pipelines_images_each_with_its_index_seed_and_class(straight):
    arrays, folder = straight
    assert arrays["arr_0"].shape == (10, 32, 32, 3) and arrays["arr_0"].dtype == np.uint8
    assert arrays["labels"].tolist() == list(range(10))  # one of each class, interleaved
    pipe = load_pipeline("digits-c2i")
    for index in (0, 7):
        # Drawn alone, the same tokens; decoded alone, a pixel may move by a level (the decoder's arithmetic
        # differs with the batch), so the set's images are compared within one level.
        expected = np.asarray(pipe(class_labels=[index], seed=image_seed(0, index)).images[0]).astype(int)
        assert np.abs(arrays["arr_0"][index].astype(int) - expected).max() <= 1
        assert np.array_equal(np.asarray(Image.open(folder / "png" / f"{index:06d}.png")), arrays["arr_0"][index])
    assert not (folder / "set.npz.shards").exists()  # gathered, then removed


def test_a_stopped_set_resumes_to_the_same_file_and_another_set_is_refused(straight, tmp_path, monkeypatch, capsys):
    out = tmp_path / "set.npz"
    drawn = []
    draw = sample_set._draw

    def stopped_after_one_shard(pipe, spec, indices, batch_size):
        if drawn:
            raise KeyboardInterrupt  # as a kill between two shards
        drawn.append(list(indices))
        return draw(pipe, spec, indices, batch_size)

    monkeypatch.setattr(sample_set, "_draw", stopped_after_one_shard)
    with pytest.raises(KeyboardInterrupt):
        main(sample_argv(out))
    assert not out.exists() and sorted(p.name for p in (tmp_path / "set.npz.shards").iterdir()) == [
        "set.json", "shard_000000.npz"
    ]  # fmt: skip
    # Another set into the same place: refused, its shards kept.
    assert main(sample_argv(out, "--seed", "1")) == 2
    assert "holds shards of another set (seed differ)" in capsys.readouterr().err
    monkeypatch.setattr(sample_set, "_draw", lambda *args: drawn.append(list(args[2])) or draw(*args))
    assert main(sample_argv(out)) == 0
    assert drawn[1:] == [[3, 4, 5], [6, 7, 8], [9]]  # the written shard was not drawn again
    printed = capsys.readouterr()
    assert "cfg_scale 4.0" in printed.out  # the options it drew with: digits-c2i's card's
    assert "process 0:  30%" in printed.err and " 10/10 " in printed.err  # the bar starts from what was written
    with np.load(out) as loaded:
        assert np.array_equal(loaded["arr_0"], straight[0]["arr_0"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "SET_PNG"], "the ADM evaluator reads .npz files"),
        (["--num-images", "11"], "--num-images must be from 1 to the 10 conditions given"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_a_set_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, extra, message):
    extra = [str(tmp_path / "set.png") if value == "SET_PNG" else value for value in extra]
    assert main(sample_argv(tmp_path / "set.npz", *extra)) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_captions_need_a_text_generator(tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle\n")
    argv = ["sample", "--gpt", "digits-c2i", "--captions", str(captions), "--out", str(tmp_path / "set.npz")]
    assert main(argv) == 2
    assert "--captions needs a text-to-image generator" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_under_torchrun_write_the_set_one_process_writes(straight, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "llamagen", *sample_argv(tmp_path / "set.npz")]  # fmt: skip
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # A bar per process (6 and 4 of the 10 images: shards 0, 2 and 1, 3) and one for the whole set.
    assert " 6/6 " in done.stderr and " 4/4 " in done.stderr and "all processes: 100%" in done.stderr
    with np.load(tmp_path / "set.npz") as loaded:
        assert np.array_equal(loaded["arr_0"], straight[0]["arr_0"])
        assert np.array_equal(loaded["labels"], straight[0]["labels"])


def test_the_batch_size_chosen_is_the_largest_power_of_two_that_fits(monkeypatch):
    from llamagen import generation

    gpt = load_pipeline("digits-c2i").gpt
    room = generation.estimate_generation_bytes(gpt, 2 * 8) / generation._MEMORY_SHARE  # 8 guided images fit
    monkeypatch.setattr(generation, "available_memory_bytes", lambda device: room + 1)
    assert generation.fitting_batch_size(gpt, guidance=True) == 8
    assert generation.fitting_batch_size(gpt, guidance=False) == 16
    assert generation.fitting_batch_size(gpt, guidance=True, largest=4) == 4
    monkeypatch.setattr(generation, "available_memory_bytes", lambda device: 0)
    assert generation.fitting_batch_size(gpt, guidance=True) == 1


def test_a_caption_file_gives_a_text_generator_one_image_a_line(tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle\n\na blue square on a white background\n")  # blank lines skipped
    out = tmp_path / "set.npz"
    argv = ["sample", "--gpt", "shapes-t2i", "--captions", str(captions), "--batch-size", "2", "--out", str(out)]
    assert main(argv) == 0
    pipe = load_pipeline("shapes-t2i")
    with np.load(out) as loaded:
        assert loaded.files == ["arr_0"] and loaded["arr_0"].shape == (2, 64, 64, 3)
        alone = np.asarray(pipe(prompts=["a blue square on a white background"], seed=image_seed(0, 1)).images[0])
        assert np.abs(loaded["arr_0"][1].astype(int) - alone.astype(int)).max() <= 1
