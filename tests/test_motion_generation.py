"""Text to motion: sequences that end with the end token, codes files the generator's training reads, motions
generated caption by caption, and scores that count what the judge read."""

from __future__ import annotations

import pytest
import torch

from llamagen.data.codes import CodesDataset
from llamagen.data.motion import Motions
from llamagen.gpt import GPT, gpt_preset
from llamagen.motion import MotionVQ, arm_config, judge
from llamagen.motion.codes import SEQUENCE, extract_motion_codes, motion_codes_of, sequence, sequence_codes
from llamagen.motion.generation import generate_motions
from llamagen.motion.judge import MotionJudge, MotionJudgeConfig, ReadAction, score_motions
from llamagen.motion.text import MotionTextEncoder
from llamagen.text.clip import ClipConfig
from llamagen.training.gpt import generator_config_for, train_gpt
from llamagen.training.settings import GPTTrainingConfig

TINY_CLIP = ClipConfig(
    embed_dim=8,
    vision_cfg={"width": 8, "dilations": [1]},
    text_cfg={"context_length": 48, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
)


def test_a_sequence_ends_with_the_end_token_and_reads_back():
    codes = torch.tensor([5, 0, 7])
    tokens = sequence(codes, end=9)
    assert tokens.shape == (SEQUENCE,) and (tokens[3:] == 9).all()
    assert torch.equal(sequence_codes(tokens, 9), codes)
    assert torch.equal(sequence_codes(torch.tensor([1, 2, 9, 3, 9]), 9), torch.tensor([1, 2]))
    assert len(sequence_codes(torch.tensor([9, 1]), 9)) == 0
    with pytest.raises(ValueError, match="at most 48 codes"):
        sequence(torch.zeros(49, dtype=torch.long), 9)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = MotionVQ(arm_config("llamagen", 64, width=8, depth=1)).eval()
    text_encoder = MotionTextEncoder.from_config(TINY_CLIP).eval().requires_grad_(False)
    path = extract_motion_codes(tokenizer, 5, tmp_path_factory.mktemp("codes") / "motion.codes", seed=2,
                                show_progress=False)  # fmt: skip
    return tokenizer, text_encoder, path


def test_extracted_codes_are_the_tokenizers_sequences_and_train_a_generator(tiny_models, tmp_path):
    tokenizer, text_encoder, path = tiny_models
    codes = CodesDataset(path)
    assert (codes.info.grid, codes.info.codebook_size, codes.info.conditioning) == (7, 65, "t2i")
    clip = Motions(seed=2, captioned=True)[3]
    features = clip["features"][: clip["frames"] // 4 * 4]
    assert torch.equal(codes[3]["tokens"], sequence(tokenizer.tokenize(features.unsqueeze(0))[0], 64))
    assert codes[3]["caption"] == clip["caption"]
    config = generator_config_for(codes.info, gpt_preset("GPT-XS"), text_encoder)
    assert (config.vocab_size, config.block_size, config.cls_token_num) == (65, 49, 48)
    training = GPTTrainingConfig(steps=2, batch_size=2, warmup_steps=1, ema_decay=0.0, bf16=False)
    outcome = train_gpt(config, training, codes, tmp_path / "gpt", text_encoder=text_encoder, show_progress=False)
    assert outcome.finished


def test_a_codes_file_says_which_tokenizer_and_clips_it_holds_and_bad_counts_are_refused(tmp_path):
    tokenizer = MotionVQ(arm_config("llamagen", 64, width=8, depth=1)).eval()
    path = extract_motion_codes(tokenizer, 3, tmp_path / "motion.codes", seed=2, show_progress=False,
                                tokenizer_source="runs/a/final.safetensors")  # fmt: skip
    assert motion_codes_of(path, "runs/a/final.safetensors", 3, 2)
    assert not motion_codes_of(path, "runs/b/final.safetensors", 3, 2)  # another tokenizer's codes
    assert not motion_codes_of(path, "runs/a/final.safetensors", 4, 2)  # other clips
    assert not motion_codes_of(path, "runs/a/final.safetensors", 3, 0)
    with pytest.raises(ValueError, match="at least 1 clip"):
        extract_motion_codes(tokenizer, 0, tmp_path / "none.codes", show_progress=False)
    wide = MotionVQ(arm_config("fsq", 65536, width=8, depth=1))
    with pytest.raises(ValueError, match="codes below 32,767 and an end token; this tokenizer has 64000 codes"):
        extract_motion_codes(wide, 1, tmp_path / "wide.codes", show_progress=False)
    assert not (tmp_path / "none.codes").exists() and not (tmp_path / "wide.codes").exists()


def test_each_caption_draws_its_motion_alone(tiny_models):
    tokenizer, text_encoder, _ = tiny_models
    torch.manual_seed(1)
    gpt = GPT(gpt_preset("GPT-XS", vocab_size=65, block_size=49, model_type="t2i", caption_dim=16,
                         cls_token_num=48)).eval()  # fmt: skip
    captions = ["a person walks forward slowly", "someone jumps high in place twice"]
    motions = generate_motions(gpt, tokenizer, text_encoder, captions, cfg_scale=2.0, seed=3)
    alone = generate_motions(gpt, tokenizer, text_encoder, captions[1:], cfg_scale=2.0, seed=4)
    assert len(motions) == 2 and torch.equal(motions[1], alone[0])
    for motion in motions:
        assert motion.shape[1] == 263 and motion.shape[0] % 4 == 0 and motion.shape[0] <= 4 * (SEQUENCE - 1)
    wrong = GPT(gpt_preset("GPT-XS", vocab_size=64, block_size=49, model_type="t2i", caption_dim=16,
                           cls_token_num=48)).eval()  # fmt: skip
    with pytest.raises(ValueError, match="an end token"):
        generate_motions(wrong, tokenizer, text_encoder, captions)


def test_scores_count_what_the_judge_read(monkeypatch):
    walk = {"action": "walk", "speed": "slow", "direction": "forward", "start": 0, "frames": 40}
    turn = {"action": "turn", "side": "left", "angle": 90, "start": 40, "frames": 30}
    reads = iter([
        [ReadAction("walk", {"speed": "slow", "direction": "forward"}, 0, 40)],  # all right
        [ReadAction("walk", {"speed": "fast", "direction": "forward"}, 0, 40)],  # one parameter wrong
        [ReadAction("run", {"speed": "slow"}, 0, 40)],  # the wrong action
        [ReadAction("walk", {"speed": "slow", "direction": "forward"}, 0, 40)],  # the turn missing
    ])  # fmt: skip
    monkeypatch.setattr(judge, "read_motion", lambda _judge, _motion: next(reads))
    motions = [torch.zeros(8, 263)] * 4
    scores = score_motions(MotionJudge(MotionJudgeConfig(width=8)), motions, [[walk], [walk], [walk], [walk, turn]])
    assert (scores.actions.n, float(scores.actions.mean)) == (4, 0.5)
    assert float(scores.everything.mean) == 0.25
    assert float(scores.parameters.mean) == 0.75  # 3 of the 4 parameters asked of the 2 right walks
    assert scores.actions.low < 0.5 < scores.actions.high
    empty = score_motions(MotionJudge(MotionJudgeConfig(width=8)), [torch.zeros(0, 263)], [[walk]])
    assert float(empty.actions.mean) == 0 and empty.parameters is None
