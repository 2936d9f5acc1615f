"""The codebook study's driver on tiny codebooks: every run trained, measured, kept and recorded once."""

import json

import numpy as np
import pytest

import llamagen.training.codebook_study as study
from llamagen.training.codebook_study import StudySettings, study_codebooks


@pytest.fixture
def tiny(monkeypatch):
    """Codebooks of 32 entries, and each kind's held-out images cut to 64 so that a run measures in a moment."""
    monkeypatch.setattr(study, "BASE", {**study.BASE, "size": 32})
    monkeypatch.setattr(study, "VARIANTS", {"d2": {"dim": 2}, "d8-raw-kmeans": {"l2": False, "init": "kmeans"}})
    monkeypatch.setattr(study, "LATENTS_KEPT", 100)
    held_out = study.held_out_images
    monkeypatch.setattr(study, "held_out_images", lambda data, size: (held_out(data, size)[0][:64], data))
    return StudySettings(data=("photos", "digits"), variants=("d2", "d8-raw-kmeans"), seeds=(0,), steps=4, batch_size=4)


@pytest.mark.slow
def test_each_run_is_trained_measured_kept_and_recorded_once(tiny, tmp_path, monkeypatch):
    out = tmp_path / "study.json"
    results = study_codebooks(tiny, out, tmp_path / "runs", show_progress=False)
    assert list(results["runs"]) == [
        "photos-d2-s0",
        "photos-d8-raw-kmeans-s0",
        "digits-d2-s0",
        "digits-d8-raw-kmeans-s0",
    ]
    row = results["runs"]["photos-d8-raw-kmeans-s0"]
    assert (row["dim"], row["size"], row["l2"], row["init"], row["restarts"]) == (8, 32, False, "kmeans", False)
    assert 0 < row["usage_eval"] <= 1 and row["psnr"] > 0 and len(row["latents_spectrum"]) == 8
    assert 1 <= row["latents_participation"] <= 8 and row["usage_over_steps"][-1][0] == 4
    assert np.load(tmp_path / "runs" / "photos-d2-s0" / "codebook.npy").shape == (32, 2)
    assert np.load(tmp_path / "runs" / "digits-d8-raw-kmeans-s0" / "latents.npy").shape == (100, 8)
    uses = np.load(tmp_path / "runs" / "digits-d2-s0" / "uses.npy")
    assert uses.shape == (32,) and uses.sum() == 64 * 16  # every position of the 64 held-out 16x16 digits
    assert (uses > 0).mean() == pytest.approx(results["runs"]["digits-d2-s0"]["usage_eval"])
    lines = out.with_suffix(".csv").read_text().splitlines()
    assert lines[0].startswith("data,variant,seed,dim,size") and len(lines) == 5
    assert json.loads(out.read_text()) == results
    # Started again: nothing trains; trained otherwise: refused.
    monkeypatch.setattr(study, "train_tokenizer", lambda *args, **kwargs: pytest.fail("trained again"))
    assert study_codebooks(tiny, out, tmp_path / "runs", show_progress=False)["runs"] == results["runs"]
    with pytest.raises(ValueError, match="holds a study trained otherwise"):
        study_codebooks(StudySettings(data=("photos",), variants=("d2",), seeds=(0,), steps=5), out, tmp_path)


def test_unknown_variants_and_data_are_refused():
    with pytest.raises(ValueError, match="unknown variant\\(s\\) d3"):
        StudySettings(variants=("d3",))
    with pytest.raises(ValueError, match="unknown data faces"):
        StudySettings(data=("faces",))


@pytest.mark.slow
def test_the_command_runs_the_chosen_part_and_prints_a_line_a_run(tiny, tmp_path, capsys, monkeypatch):
    from llamagen.cli import main

    out = tmp_path / "study.json"
    for part in (["--data", "digits", "--seeds", "3"], ["--data", "photos", "--seeds", "1"]):  # a part at a time
        main(["sweep", "codebook-study", *part, "--variants", "d2", "--steps", "2", "--out", str(out),
              "--work-dir", str(tmp_path / "runs")])  # fmt: skip
    printed = capsys.readouterr().out
    assert f"wrote       {out} and {out.with_suffix('.csv')}: 2 runs" in printed
    assert "digits-d2-s3  usage" in printed and list(json.loads(out.read_text())["runs"]) == [
        "digits-d2-s3",
        "photos-d2-s1",
    ]
    # The notebooks' points: seed 0's runs only (none here, then one), each run's used codes with their uses.
    points = tmp_path / "points.npz"
    main(["sweep", "codebook-study", "--out", str(out), "--work-dir", str(tmp_path / "runs"), "--points", str(points)])
    assert "the codes and latents of 0 runs" in capsys.readouterr().out and np.load(points).files == []
    main(["sweep", "codebook-study", "--data", "photos", "--seeds", "0", "--variants", "d2", "--steps", "2",
          "--out", str(out), "--work-dir", str(tmp_path / "runs")])  # fmt: skip
    main(["sweep", "codebook-study", "--out", str(out), "--work-dir", str(tmp_path / "runs"), "--points", str(points)])
    with np.load(points) as loaded:
        assert sorted(loaded.files) == ["photos-d2-s0/codes", "photos-d2-s0/latents", "photos-d2-s0/uses"]
        codebook = np.load(tmp_path / "runs" / "photos-d2-s0" / "codebook.npy")
        uses = np.load(tmp_path / "runs" / "photos-d2-s0" / "uses.npy")
        assert np.array_equal(loaded["photos-d2-s0/codes"], codebook[uses > 0])
        assert loaded["photos-d2-s0/uses"].sum() == 64 * 16 and loaded["photos-d2-s0/latents"].shape == (100, 2)
    # A run keeps fewer latents where they would hold more values than the file's budget for a run.
    monkeypatch.setattr(study, "POINTS_LATENT_VALUES", 60)
    main(["sweep", "codebook-study", "--out", str(out), "--work-dir", str(tmp_path / "runs"), "--points", str(points)])
    with np.load(points) as loaded:
        assert loaded["photos-d2-s0/latents"].shape == (30, 2)
        kept = {key: loaded[key] for key in loaded.files}
    # A run whose folder is gone (trained on another machine) keeps its stored points; one with neither is refused.
    (tmp_path / "runs" / "photos-d2-s0").rename(tmp_path / "elsewhere")
    main(["sweep", "codebook-study", "--out", str(out), "--work-dir", str(tmp_path / "runs"), "--points", str(points)])
    with np.load(points) as loaded:
        assert loaded.files == list(kept) and all(np.array_equal(loaded[key], kept[key]) for key in kept)
    points.unlink()
    assert main(["sweep", "codebook-study", "--out", str(out), "--work-dir", str(tmp_path / "runs"), "--points",
                 str(points)]) == 2  # fmt: skip
    assert "error: run photos-d2-s0 has no folder in" in capsys.readouterr().err and not points.exists()


@pytest.mark.slow
def test_under_torchrun_the_processes_share_the_runs_and_record_what_one_process_does(tmp_path):
    import os
    import subprocess
    import sys

    def study(*launcher, name):
        command = [sys.executable, *launcher, "-m", "llamagen", "sweep", "codebook-study", "--data", "digits",
                   "--variants", "d2", "--seeds", "0", "1", "--steps", "2", "--out", str(tmp_path / f"{name}.json"),
                   "--work-dir", str(tmp_path / name)]  # fmt: skip
        done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((tmp_path / f"{name}.json").read_text())

    alone = study(name="alone")
    shared = study("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", name="shared")
    assert list(shared["runs"]) == ["digits-d2-s0", "digits-d2-s1"] and shared == alone
    assert all((tmp_path / "shared" / run / "row.json").is_file() for run in shared["runs"])
