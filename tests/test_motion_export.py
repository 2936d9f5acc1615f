"""Shipping motion models: a trained motion tokenizer and a text-to-motion generator over its codes become
embedded models with cards measured on held-out clips; the generator's card names its embedded tokenizer, CLIP
and judge, and recommends the guidance its judge scored best; the apps offer it as a motion generator."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from llamagen import checkpoints, save
from llamagen.data.codes import CodesDataset
from llamagen.data.motion import Motions
from llamagen.gpt import gpt_preset
from llamagen.motion import arm_config, load_motion_tokenizer
from llamagen.motion.codes import extract_motion_codes
from llamagen.motion.pipeline import load_motion_pipeline
from llamagen.motion.text import MotionTextEncoder, load_motion_text_encoder
from llamagen.text.clip import ClipConfig
from llamagen.training.gpt import generator_config_for, train_gpt
from llamagen.training.motion_export import export_motion_generator, export_motion_tokenizer
from llamagen.training.motion_tokenizer import train_motion_tokenizer
from llamagen.training.settings import GPTTrainingConfig, MotionTokenizerTrainingConfig


def test_a_motion_tokenizer_and_generator_ship_and_the_apps_offer_them(tmp_path, monkeypatch):
    from llamagen.apps.models import ModelRegistry

    assets = tmp_path / "assets"
    assets.mkdir()
    for suffix in (".safetensors", ".json"):  # the real judge scores the generations
        shutil.copy(checkpoints.ASSETS_DIR / f"motion-judge{suffix}", assets)
    monkeypatch.setattr(checkpoints, "ASSETS_DIR", assets)

    torch.manual_seed(0)
    settings = MotionTokenizerTrainingConfig(steps=2, batch_size=4, window=16, statistics_clips=8, warmup_steps=1,
                                             log_every=1)  # fmt: skip
    trained = train_motion_tokenizer(arm_config("llamagen", 64, width=8, depth=1), settings, tmp_path / "vq",
                                     show_progress=False, command="llamagen sweep motion-tokenizers ...")  # fmt: skip
    card = export_motion_tokenizer(tmp_path / "vq", "tiny-motion-vq", "procedural clips", assets_dir=assets, clips=4)
    assert card["kind"] == "motion-vq" and card["reproduce"][0] == "llamagen sweep motion-tokenizers ..."
    evaluation = card["evaluation"]
    assert evaluation["mpjpe_mm"] > 0 and 0 < evaluation["codebook_usage"] <= 1 and evaluation["perplexity"] >= 1
    shipped = load_motion_tokenizer("tiny-motion-vq")
    clip = Motions(seed=3)[0]["features"][:32].unsqueeze(0)
    same = (shipped.tokenize(clip) == trained.model.eval().tokenize(clip)).float().mean()
    assert same >= 0.9  # bf16 weights: the same codes, or nearly

    text = {"context_length": 48, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}
    clip_config = ClipConfig(embed_dim=8, vision_cfg={"width": 8, "dilations": [1]}, text_cfg=text)
    save(MotionTextEncoder.from_config(clip_config), assets / "tiny-motion-clip.safetensors")
    (assets / "tiny-motion-clip.json").write_text(json.dumps({"kind": "motion-clip"}))
    encoder = load_motion_text_encoder("tiny-motion-clip")
    codes = extract_motion_codes(shipped, 6, tmp_path / "motion.codes", show_progress=False,
                                 tokenizer_source="tiny-motion-vq")  # fmt: skip
    config = generator_config_for(CodesDataset(codes).info, gpt_preset("GPT-XS"), encoder)
    training = GPTTrainingConfig(steps=2, batch_size=2, warmup_steps=1, bf16=False, log_every=1)
    train_gpt(config, training, codes, tmp_path / "gpt", text_encoder=encoder, show_progress=False,
              command="llamagen train gpt ...")  # fmt: skip

    card = export_motion_generator(tmp_path / "gpt", "tiny-motion-gpt", "captioned clips", cfg_scales=(1.0, 2.0),
                                   captions=3, assets_dir=assets)  # fmt: skip
    assert card["kind"] == "motion-gpt"
    assert (card["tokenizer"], card["text_encoder"], card["judge"]) == ("tiny-motion-vq", "tiny-motion-clip",
                                                                        "motion-judge")  # fmt: skip
    scores = card["evaluation"]
    assert [row["cfg_scale"] for row in scores["by_cfg_scale"]] == [1.0, 2.0]
    for row in [*scores["by_cfg_scale"], scores["held_out_pairs_at_best_cfg_scale"]]:
        assert row["actions_n"] == 3 and row["actions_low"] <= row["actions"] <= row["actions_high"]
    best = max(scores["by_cfg_scale"], key=lambda row: (row["everything"], row["actions"]))["cfg_scale"]
    assert scores["best_cfg_scale"] == card["sampling"]["cfg_scale"] == best

    pipe = load_motion_pipeline("tiny-motion-gpt")  # by name: the card and the file name everything else
    assert pipe.judge is not None and pipe.sampling.cfg_scale == best and pipe.sampling.source.startswith("tiny")
    assert pipe(["a person walks forward"], seed=0)[0].positions.shape[1:] == (22, 3)
    registry = ModelRegistry.embedded()
    assert list(registry.motion_generators) == ["tiny-motion-gpt"] and "tiny-motion-gpt" not in registry.generators
    with pytest.raises(ValueError, match="not an embedded model: export it first"):
        export_motion_generator(tmp_path / "gpt", "other", "captioned clips", assets_dir=assets,
                                text_encoder=str(assets / "tiny-motion-clip.safetensors"))  # fmt: skip
