"""The shipped motion tokenizer and text-to-motion generator: each loads by name, and still measures what its
model card says on a part of the card's own evaluation."""

import pytest
import torch
from helpers import best_row

from llamagen.checkpoints import embedded_card, embedded_of_kind
from llamagen.motion.judge import score_motions
from llamagen.motion.measures import evaluate_motion_tokenizer, held_out_clips
from llamagen.motion.pipeline import MOTION_GENERATOR_KIND, load_motion_pipeline
from llamagen.motion.tokenizer import load_motion_tokenizer
from llamagen.training.text_to_motion_study import evaluation_captions


def test_the_motion_tokenizer_and_generator_are_shipped_and_name_each_other():
    assert embedded_of_kind("motion-vq") == ["motion-vq"]
    assert embedded_of_kind(MOTION_GENERATOR_KIND) == ["motion-t2m"]
    card = embedded_card("motion-t2m")
    assert (card["tokenizer"], card["text_encoder"], card["judge"]) == ("motion-vq", "motion-clip", "motion-judge")
    assert card["sampling"]["cfg_scale"] == card["evaluation"]["best_cfg_scale"]


def test_the_shipped_motion_tokenizer_reconstructs_held_out_clips_as_its_card_says():
    """The first 128 of the card's 1,024 clips: MPJPE varies from clip to clip by tens of millimetres, so a
    part of the clips lies within 15% of the whole; a tokenizer loaded wrongly is off by metres."""
    card = embedded_card("motion-vq")["evaluation"]
    measured = evaluate_motion_tokenizer(load_motion_tokenizer("motion-vq"), held_out_clips(128))
    assert measured.mpjpe_mm == pytest.approx(card["mpjpe_mm"], rel=0.15)
    assert measured.pose_mpjpe_mm == pytest.approx(card["pose_mpjpe_mm"], rel=0.15)
    assert measured.usage > 0.5


def test_the_shipped_motion_generator_does_what_captions_ask_as_its_card_says():
    """The first 64 of the card's 256 seen-pair captions, at the card's guidance (caption i is drawn from seed i
    alone, so these are the card's own motions): the share judged to do the asked actions lies within 0.15 of
    the card's (2.5 standard errors at n = 64), far above the 4-6% of motions held to another caption's."""
    pipe = load_motion_pipeline("motion-t2m")
    card = embedded_card("motion-t2m")["evaluation"]
    best = best_row(card)
    asked = evaluation_captions(64)["seen"]
    motions = pipe([item["caption"] for item in asked], seed=0)
    judged = score_motions(pipe.judge, [motion.features for motion in motions], [item["segments"] for item in asked])
    assert float(judged.actions.mean) == pytest.approx(best["actions"], abs=0.15)
    again = pipe([asked[0]["caption"]], seed=0)[0]
    assert torch.equal(again.features, motions[0].features)
