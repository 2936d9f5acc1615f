"""The text-to-motion pipeline: built from a generator file that names its tokenizer and CLIP, sampling with its
card's settings (else the study's), each caption drawn alone, motions given as features and joint positions, and
read by the judge; wrong files and empty captions refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_motion_generator

from llamagen import save
from llamagen.data.motion import feature_positions
from llamagen.gpt import GPT, gpt_preset
from llamagen.motion.generation import generate_motions
from llamagen.motion.judge import ReadAction
from llamagen.motion.pipeline import STUDY_SAMPLING, load_motion_pipeline


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    return tiny_motion_generator(tmp_path_factory.mktemp("motion"))


def test_a_generator_file_brings_its_tokenizer_and_text_encoder(generator):
    pipe = load_motion_pipeline(generator)
    assert pipe.sampling == STUDY_SAMPLING and pipe.judge is None
    captions = ["a person walks forward slowly", "someone jumps twice"]
    motions = pipe(captions, seed=5)
    expected = generate_motions(pipe.gpt, pipe.tokenizer, pipe.text_encoder, captions, seed=5,
                                **STUDY_SAMPLING.filled(cfg_scale=None, temperature=None, top_k=None))  # fmt: skip
    for motion, caption, features in zip(motions, captions, expected, strict=True):
        assert motion.caption == caption and torch.equal(motion.features, features)
        assert motion.positions.shape == (len(features), 22, 3)
        assert np.allclose(motion.positions, feature_positions(features.numpy()))
        assert motion.seconds == len(features) / 20
    # Caption i is drawn from seed + i alone: asked by itself at that seed, it comes out the same.
    assert torch.equal(pipe(captions[1:], seed=6)[0].features, motions[1].features)
    assert not torch.equal(pipe(captions[:1], seed=6)[0].features, motions[0].features)
    with pytest.raises(ValueError, match="no judge"):
        pipe.read(motions[0])


def test_the_card_sets_the_sampling_and_the_judge(generator, tmp_path):
    weights = tmp_path / "motion-gpt.safetensors"
    weights.write_bytes(generator.read_bytes())
    card = {"sampling": {"cfg_scale": 3.5, "top_k": 10, "temperature": 0.9}, "judge": "motion-judge"}
    weights.with_suffix(".json").write_text(json.dumps(card))
    pipe = load_motion_pipeline(weights)
    assert (pipe.sampling.cfg_scale, pipe.sampling.top_k, pipe.sampling.temperature) == (3.5, 10, 0.9)
    motion = pipe(["a person waves with the left hand"], seed=1)[0]
    read = pipe.read(motion)
    assert all(isinstance(action, ReadAction) for action in read)
    # A setting given wins over the card's.
    assert torch.equal(pipe(["a person sits"], cfg_scale=1.0, seed=2)[0].features,
                       generate_motions(pipe.gpt, pipe.tokenizer, pipe.text_encoder, ["a person sits"], cfg_scale=1.0,
                                        temperature=0.9, top_k=10, seed=2)[0])  # fmt: skip


def test_wrong_files_and_empty_captions_are_refused(generator, tmp_path):
    bare = save(GPT(gpt_preset("GPT-XS", vocab_size=65, block_size=49, model_type="t2i", caption_dim=16,
                               cls_token_num=48)), tmp_path / "bare.safetensors")  # fmt: skip
    with pytest.raises(ValueError, match="does not name its tokenizer and text encoder"):
        load_motion_pipeline(bare)
    folder = generator.parent
    wider = tiny_motion_generator(tmp_path, codebook_size=32)
    with pytest.raises(ValueError, match=r"predicts 33 tokens, not the .* tokenizer's 64 codes"):
        load_motion_pipeline(wider, tokenizer=folder / "motion-vq.safetensors")
    pipe = load_motion_pipeline(generator)
    with pytest.raises(ValueError, match="the generator predicts 65 tokens, not the tokenizer's 32 codes"):
        generate_motions(pipe.gpt, load_motion_pipeline(wider).tokenizer, pipe.text_encoder, ["a person sits"])
    short = GPT(gpt_preset("GPT-XS", vocab_size=65, block_size=16, model_type="t2i", caption_dim=16, cls_token_num=48))
    with pytest.raises(ValueError, match="the generator writes 16 tokens, not a motion's 49"):
        generate_motions(short, pipe.tokenizer, pipe.text_encoder, ["a person sits"])
    for captions in ([], ["a person walks", "  "]):
        with pytest.raises(ValueError, match="a caption is empty"):
            pipe(captions)
