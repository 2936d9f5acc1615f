"""The conditioning study's driver: every arm trained on the same codes and scored alike, one CSV row per run,
and a study started again skips the runs it holds."""

import csv
import json
import shutil
import sys

import pytest
import torch

from llamagen.data.codes import extract_codes
from llamagen.data.shapes import Shapes
from llamagen.text import load_text_encoder
from llamagen.tokenizer.loading import load_tokenizer
from llamagen.training import conditioning_study
from llamagen.training.conditioning_study import StudySettings, run_study
from llamagen.training.export import read_metrics, training_hours

TINY = {"n_layer": 1, "n_head": 2, "dim": 32, "multiple_of": 16}


def tiny_settings(**changes) -> StudySettings:
    values = dict(seeds=(0,), steps=2, batch_size=4, scales=(1.0, 2.0), images_per_class=2, captions=8,
                  real_images=16, generated_for_decay=4, base=TINY)  # fmt: skip
    return StudySettings(**{**values, **changes})


@pytest.fixture(scope="module")
def shapes_vq():
    return load_tokenizer("shapes-vq")


@pytest.mark.slow
def test_each_arm_is_trained_scored_and_recorded_once(tmp_path, shapes_vq, monkeypatch):
    torch.set_num_threads(2)
    codes = extract_codes(shapes_vq, Shapes(seed=0, length=32), tmp_path / "codes.safetensors", 64, show_progress=False)
    out = tmp_path / "study.csv"
    settings = tiny_settings(arms=("prefix", "adaln-zero"))
    command = "llamagen sweep conditioning --arms prefix adaln-zero"
    rows = run_study(settings, codes, shapes_vq, out, tmp_path / "runs", show_progress=False, command=command)
    assert [(row["arm"], row["seed"]) for row in rows] == [("prefix", 0), ("adaln-zero", 0)]
    # Each run records the study's command, which its model card gives to reproduce it.
    assert json.loads((tmp_path / "runs" / "c2i-prefix-s0" / "config.json").read_text())["command"] == command
    written = list(csv.DictReader(out.open()))
    assert [row["arm"] for row in written] == ["prefix", "adaln-zero"]
    prefix, adaln = written
    assert adaln["condition"] == "adaln_zero" and adaln["prefix_tokens"] == "1"
    assert abs(int(adaln["parameters"]) - int(prefix["parameters"])) <= 0.05 * int(prefix["parameters"])
    for row in written:
        for scale in ("1", "2"):
            assert 0 <= float(row[f"accuracy_at_{scale}"]) <= 1
        assert float(row["fid_floor"]) != float(row["fid_floor"])  # NaN: 80 images, fewer than the judge's 256 features
        assert 0 <= float(row["classifier_accuracy"]) <= 1
        assert float(row["kl_first_row"]) >= 0 and row["real_images"] == "16"
        assert row["images_per_scale"] == "80"  # 2 of each of the 40 classes
        assert row["ema_decay"] == "0.0"  # two steps: the trained weights themselves
        assert float(row["kl_first_row_generated_at_2"]) >= 0 and float(row["kl_last_row_generated_at_1"]) >= 0
        # Minutes from the run's own log, which holds every leg of a run resumed across processes.
        metrics = read_metrics(tmp_path / "runs" / f"c2i-{row['arm']}-s0")
        assert float(row["train_minutes"]) == round(60 * training_hours(metrics), 1)

    # Rows recorded without the set distances get them from their runs' weights; a run whose folder is gone is
    # trained again from its seed, which gives back the weights the row was scored with (else it would refuse).
    distances = ("fid_at_best", "fid_floor", "precision_at_best", "recall_at_best")
    conditioning_study.write_rows([{**row, **dict.fromkeys(distances, "")} for row in written], out)
    shutil.rmtree(tmp_path / "runs" / "c2i-adaln-zero-s0")
    run_study(settings, codes, shapes_vq, out, tmp_path / "runs", show_progress=False)
    for before, after in zip(written, csv.DictReader(out.open()), strict=True):
        assert [after[name] for name in distances] == [before[name] for name in distances]
        assert after["precision_at_best"] != ""
    assert (tmp_path / "runs" / "c2i-adaln-zero-s0" / "final.safetensors").is_file()
    # Weights that judge the row's images otherwise are refused, and the row keeps no distance.
    rescored = list(csv.DictReader(out.open()))
    wrong = {**rescored[0], **dict.fromkeys(distances, ""), "accuracy_at_1": "0.987", "accuracy_at_2": "0.987"}
    conditioning_study.write_rows([wrong, rescored[1]], out)
    with pytest.raises(ValueError, match="these are not the weights or the settings it was scored with"):
        run_study(settings, codes, shapes_vq, out, tmp_path / "runs", show_progress=False)
    assert next(csv.DictReader(out.open()))["fid_at_best"] == ""
    conditioning_study.write_rows(rescored, out)

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(conditioning_study, "train_gpt", no_training)
    again = run_study(settings, codes, shapes_vq, out, tmp_path / "runs", show_progress=False)
    assert [row["arm"] for row in again] == ["prefix", "adaln-zero"]


@pytest.mark.slow
def test_captions_skip_the_class_only_arm_and_score_held_out_pairs(tmp_path, shapes_vq):
    clip = load_text_encoder("shapes-clip")
    data = Shapes(seed=0, length=16, captioned=True)
    codes = extract_codes(shapes_vq, data, tmp_path / "codes.safetensors", 64, condition="caption",
                          description={"tokenizer": "shapes-vq"}, show_progress=False)  # fmt: skip
    rows = run_study(tiny_settings(arms=("prefix-4", "cross-attention")), codes, shapes_vq, tmp_path / "study.csv",
                     tmp_path / "runs", text_encoder=clip, show_progress=False)  # fmt: skip
    assert [row["arm"] for row in rows] == ["cross-attention"]
    row = rows[0]
    assert row["task"] == "t2i" and row["prefix_tokens"] == 1 and row["images_per_scale"] == 8
    assert 0 <= row["held_out_pairs_at_best"] <= 1 and row["held_out_pair_images"] == 8
    assert "classifier_accuracy" not in row
    assert 0 <= row["word_accuracy_shape"] <= 1 and 0 <= row["word_accuracy_colour"] <= 1
    # Decoupling: each changed word's effect and its leaks into the other attributes, beside the seeds' control.
    for word, other in (("shape", "colour"), ("colour", "shape")):
        assert 0 <= row[f"{word}_word_took_effect"] <= 1 and 0 <= row[f"{word}_word_changes_{other}"] <= 1
    assert 0 <= row["seed_changes_position"] <= 1


def test_each_run_ships_a_moving_average_that_has_forgotten_its_random_start():
    assert StudySettings(steps=2000).ema_decay == pytest.approx(0.995)
    for steps in (500, 2000, 3000, 20000):
        decay = StudySettings(steps=steps).ema_decay
        assert decay**steps < 1e-4  # the initial weights' share of the average at the end
    assert StudySettings(steps=8).ema_decay == 0.0


def test_the_command_line_sizes_every_arm_from_the_base_it_is_given(tmp_path, monkeypatch):
    from llamagen.cli import main

    seen = {}

    def record(settings, codes, tokenizer, out, work_dir, encoder=None, on_row=None, command=None):
        seen["settings"], seen["command"] = settings, command
        return []

    monkeypatch.setattr(conditioning_study, "run_study", record)
    argv = ["sweep", "conditioning", "--codes", "codes.safetensors", "--out", str(tmp_path / "study.csv"), "--base",
            '{"n_layer": 4, "n_head": 4, "dim": 128}', "--steps", "1500"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["llamagen", *argv])  # as the console script is called
    main(argv)
    settings = seen["settings"]
    assert (settings.base["n_layer"], settings.base["dim"], settings.steps) == (4, 128, 1500)
    assert settings.arms == conditioning_study.StudySettings().arms  # the rest as the study's defaults
    assert seen["command"].startswith("llamagen sweep conditioning --codes codes.safetensors")
