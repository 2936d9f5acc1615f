"""The text-to-motion study's driver end to end on tiny models: codes, a generator, judged generations beside
the real clips' ceiling and the wrong-caption control; recorded runs are skipped."""

from __future__ import annotations

import json

import torch

from llamagen.checkpoints import save
from llamagen.motion import MotionVQ, arm_config
from llamagen.motion.judge import MotionJudge, MotionJudgeConfig
from llamagen.motion.text import MotionTextEncoder
from llamagen.text.clip import ClipConfig
from llamagen.training.text_to_motion_study import TextToMotionSettings, study_text_to_motion


def test_the_study_trains_judges_and_records_each_tokenizer(tmp_path):
    torch.manual_seed(0)
    for name in ("a", "b"):
        save(MotionVQ(arm_config("fsq", 256, width=8, depth=1)), tmp_path / name / "final.safetensors")
    text = {"context_length": 48, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}
    clip = ClipConfig(embed_dim=8, vision_cfg={"width": 8, "dilations": [1]}, text_cfg=text)
    save(MotionTextEncoder.from_config(clip), tmp_path / "clip.safetensors")
    save(MotionJudge(MotionJudgeConfig(width=8, dilations=(1,))), tmp_path / "judge.safetensors")
    settings = TextToMotionSettings(
        tokenizers=(str(tmp_path / "a" / "final.safetensors"), str(tmp_path / "b" / "final.safetensors")),
        text_encoder=str(tmp_path / "clip.safetensors"), judge=str(tmp_path / "judge.safetensors"),
        clips=6, steps=2, batch_size=2, captions=3,
    )  # fmt: skip
    out = tmp_path / "t2m.json"
    results = study_text_to_motion(settings, out, tmp_path / "runs", show_progress=False)
    assert list(results["runs"]) == ["a", "b"] and json.loads(out.read_text()) == results
    row = results["runs"]["a"]
    assert row["codebook_size"] == 240  # FSQ's 8 x 6 x 5 grid for 2^8 codes
    for split in ("seen", "held_out", "control"):
        assert 0 <= row[f"{split}_actions"] <= 1 and row[f"{split}_actions_n"] == 3
        assert row[f"{split}_actions_low"] <= row[f"{split}_actions"] <= row[f"{split}_actions_high"]
    assert set(results["real"]) >= {"seen_actions", "held_out_everything"}
    assert (tmp_path / "runs" / "a" / "gpt" / "final.safetensors").is_file()
    assert study_text_to_motion(settings, out, tmp_path / "runs", show_progress=False)["runs"] == results["runs"]
