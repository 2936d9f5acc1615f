"""The motion tokenizer study's driver: every arm trained and measured, rows recorded, recorded runs skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llamagen.analysis.geometry import near_twin_share
from llamagen.training.motion_study import MotionStudySettings, study_motion_tokenizers
from llamagen.training.studies import latents_at_codes_count


def test_the_study_trains_every_arm_records_rows_and_skips_recorded_runs(tmp_path):
    tiny = MotionStudySettings(sizes=(512,), dimensions=(4,), seeds=(0,), width=8, depth=1, steps=4, batch_size=4,
                               eval_clips=6, statistics_clips=8)  # fmt: skip
    assert list(tiny.runs()) == ["llamagen-k512-s0", "t2m-k512-s0", "fsq-k512-s0", "llamagen-restart-k512-s0",
                                 "llamagen-k1024-d4-s0"]  # fmt: skip
    out = tmp_path / "study.json"
    results = study_motion_tokenizers(tiny, out, tmp_path / "runs", show_progress=False)
    assert json.loads(out.read_text()) == results
    rows = results["runs"]
    assert list(rows) == list(tiny.runs())
    assert [rows[name]["dim"] for name in rows] == [8, 512, 3, 8, 4]
    assert rows["fsq-k512-s0"]["codebook_size"] == 512 and rows["t2m-k512-s0"]["quantizer"] == "ema-reset"
    # The restart arm is LlamaGen's quantizer trained with restarts; the other runs without.
    assert rows["llamagen-restart-k512-s0"]["quantizer"] == "llamagen"
    restarts = {name: json.loads((tmp_path / "runs" / name / "config.json").read_text())["training"]
                ["restart_dead_codes_every"] for name in rows}  # fmt: skip
    assert restarts == {name: 100 if name.startswith("llamagen-restart") else None for name in rows}
    for name, row in rows.items():
        assert 0 < row["usage_eval"] <= 1 and row["perplexity"] >= 1 and row["mpjpe_mm"] > 0
        folder = tmp_path / "runs" / name
        uses = np.load(folder / "uses.npy")
        assert uses.sum() == sum(int(n) for n in uses) and np.count_nonzero(uses) / len(uses) == row["usage_eval"]
        assert np.load(folder / "codebook.npy").shape == (row["codebook_size"], row["dim"])
        # The scale control is taken again from what the folder keeps.
        kept = torch.from_numpy(np.load(folder / "latents.npy")).float()
        again = latents_at_codes_count(kept, int(np.count_nonzero(uses)), seed=0)
        assert again == {"latents_two_nn_at_codes_count": row["latents_two_nn_at_codes_count"]}
        # So is the near-twin share, from the kept codebook; it is None only where fewer than 3 codes are used.
        used = uses > 0
        codebook = torch.from_numpy(np.load(folder / "codebook.npy")).float()
        twins = near_twin_share(codebook[used], uses[used]) if used.sum() >= 3 else None
        assert row["codes_near_twins"] == (None if twins is None else pytest.approx(twins, abs=0.02))
    assert (tmp_path / "study.csv").read_text().startswith("arm,size,dim,seed,")
    again = study_motion_tokenizers(tiny, out, tmp_path / "runs", show_progress=False)
    assert again["runs"] == rows  # nothing trained again
    with pytest.raises(ValueError, match="trained otherwise"):
        study_motion_tokenizers(MotionStudySettings(steps=5), out, tmp_path / "runs", show_progress=False)
    with pytest.raises(ValueError, match="unknown arm"):
        MotionStudySettings(arms=("vqgan",))


def test_the_committed_results_were_trained_as_the_study_trains_now():
    """The study continues the committed file only while every shared training setting is the same: a setting
    added with another default would start the study afresh."""
    committed = json.loads((Path(__file__).parents[1] / "notebooks" / "data" / "motion_study.json").read_text())
    assert MotionStudySettings().training() == committed["training"]


def test_latents_read_at_fewer_points_see_a_thickened_manifold_at_a_coarser_scale():
    """A 3-sphere reads 3 at any number of points; thickened by noise in 4 more dimensions it reads more at 4,096
    points than at 256, whose spacing is coarser than the noise: why codes are compared with as many latents."""
    generator = torch.Generator().manual_seed(0)
    sphere = torch.randn(4096, 4, generator=generator)
    sphere = torch.cat([sphere / sphere.norm(dim=1, keepdim=True), torch.zeros(4096, 4)], dim=1)
    thick = sphere + torch.cat([torch.zeros(4096, 4), 0.05 * torch.randn(4096, 4, generator=generator)], dim=1)

    def read(points, count):
        return latents_at_codes_count(points, count, seed=0)["latents_two_nn_at_codes_count"]

    assert read(sphere, 256) == pytest.approx(3.0, abs=0.35) and read(sphere, 4096) == pytest.approx(3.0, abs=0.2)
    assert read(thick, 4096) > 5.0 and read(thick, 4096) - read(thick, 256) > 1.0
