"""The codebook sweep: every combination recorded, a restart skips finished runs, results readable as CSV."""

import csv
import json

import pytest
import torch

from llamagen.evaluation.tokenizer import held_out_images
from llamagen.images import pil_to_tensor
from llamagen.metrics import code_perplexity
from llamagen.tokenizer import VQModel, vq_preset
from llamagen.training.common import load_training_state
from llamagen.training.sweep import SweepSettings, run_name, sweep_codebook

TINY = SweepSettings(dimensions=(4, 64), sizes=(128,), image_size=16, steps=6, batch_size=2)


def test_the_sweep_records_every_combination_and_resumes(tmp_path, monkeypatch):
    """Also: a run killed (kill -9) before its first checkpoint left a folder with a log and nothing to resume;
    it starts again."""
    out = tmp_path / "sweep.json"
    killed = tmp_path / "runs" / run_name(4, 128, True)
    killed.mkdir(parents=True)
    (killed / "config.json").write_text("{}")
    (killed / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    results = sweep_codebook(TINY, out, tmp_path / "runs", show_progress=False)
    assert set(results["runs"]) == {run_name(d, 128, l2) for d in (4, 64) for l2 in (True, False)}
    for run in results["runs"].values():
        assert 0 < run["usage_eval"] <= 1 and 0 < run["usage_train"] <= 1 and 1 <= run["perplexity"] <= 128
        assert [step for step, _ in run["usage_over_steps"]] == list(range(1, 7))
    # A run's numbers are those of its trained weights (not their EMA) on the held-out tiles, counted here again.
    name = run_name(64, 128, False)
    trained = VQModel(vq_preset(TINY.preset, codebook_size=128, codebook_embed_dim=64, codebook_l2_norm=False))
    trained.load_state_dict(load_training_state(tmp_path / "runs" / name)["model"])
    tiles, _ = held_out_images("photo-tiles", TINY.image_size)
    with torch.no_grad():  # all the tiles in one batch: they share one size
        codes = trained.eval().tokenize(torch.cat([pil_to_tensor(tile) for tile in tiles]))
    counts = torch.bincount(codes.flatten(), minlength=128)
    assert results["runs"][name]["usage_eval"] == int((counts > 0).sum()) / 128
    assert results["runs"][name]["perplexity"] == pytest.approx(code_perplexity(counts))
    assert json.loads(out.read_text()) == results
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 4 and {row["codebook_dim"] for row in rows} == {"4", "64"}

    # Started again, it trains nothing: every run is recorded.
    import llamagen.training.sweep as sweep

    monkeypatch.setattr(sweep, "train_tokenizer", lambda *a, **k: pytest.fail("retrained a recorded run"))
    assert sweep_codebook(TINY, out, tmp_path / "runs", show_progress=False) == results


def test_other_settings_do_not_overwrite_a_sweep(tmp_path):
    out = tmp_path / "sweep.json"
    out.write_text(json.dumps({"settings": SweepSettings().as_dict(), "runs": {}}))
    with pytest.raises(ValueError, match="other settings"):
        sweep_codebook(TINY, out, tmp_path / "runs", show_progress=False)
