"""Judges: they learn real images, save and load, refuse what they cannot read; the shipped ones are accurate."""

import pytest
import torch

from llamagen.checkpoints import embedded_models, save
from llamagen.evaluation.judges import Judge, JudgeConfig, accuracies, load_judge
from llamagen.training.judge import JudgeTraining, held_out, shifted, train_judge


def test_a_digits_judge_learns_in_a_few_steps_and_round_trips(tmp_path):
    judge, accuracy = train_judge("digits", JudgeTraining(steps=60, batch_size=32), show_progress=False)
    assert set(accuracy) == {"digit", "all"} and accuracy["digit"] > 0.5  # chance is 0.1
    save(judge, tmp_path / "judge.safetensors")
    loaded = load_judge(tmp_path / "judge.safetensors", device="cpu")
    images, labels = held_out("digits")
    assert accuracies(loaded, images, labels) == accuracy


def test_shifts_move_the_digit_by_the_drawn_offsets_and_fill_with_black():
    """The one white pixel lands where the generator's draws say, for every seed tried (among them shifts by the
    full MAX_SHIFT each way). Checked by hand once: a shift of zero, or rows and columns swapped, fails here."""
    import numpy as np

    from llamagen.training.judge import MAX_SHIFT

    offsets = set()
    for seed in range(40):
        image = torch.full((3, 16, 16), -1.0)
        image[:, 6, 9] = 1.0
        dy, dx = np.random.default_rng(seed).integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2)
        moved = shifted(image, np.random.default_rng(seed))
        expected = torch.full_like(image, -1.0)
        expected[:, 6 + dy, 9 + dx] = 1.0
        assert torch.equal(moved, expected), seed
        offsets.add((int(dy), int(dx)))
    assert (MAX_SHIFT, -MAX_SHIFT) in offsets or (-MAX_SHIFT, MAX_SHIFT) in offsets
    assert any(dy != dx for dy, dx in offsets)  # rows and columns are told apart


def test_a_judge_refuses_images_of_the_wrong_size():
    judge = Judge(JudgeConfig.preset("shapes"))
    with pytest.raises(ValueError, match=r"reads \(B, 3, 64, 64\) images"):
        judge(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown judge preset 'cats'"):
        train_judge("cats", JudgeTraining(steps=1))


@pytest.mark.parametrize(("name", "goal"), [("shapes-judge", 0.99), ("digits-judge", 0.97)])
def test_the_shipped_judges_read_real_held_out_images(name, goal):
    if name not in embedded_models():
        pytest.fail(f"{name} is not in llamagen/assets")
    judge = load_judge(name, device="cpu")
    accuracy = accuracies(judge, *held_out(name.removesuffix("-judge")))
    assert min(accuracy.values()) >= goal, accuracy


def test_judging_reconstructions_shows_what_a_tokenizer_loses():
    from llamagen.evaluation.judges import judge_reconstructions
    from llamagen.tokenizer import VQModel, vq_preset

    torch.manual_seed(0)
    untrained = VQModel(vq_preset("VQ-4-tiny", codebook_size=64)).eval()
    accuracy = judge_reconstructions(untrained, "digits")
    assert set(accuracy) == {"digit", "all"} and accuracy["digit"] < 0.5  # an untrained tokenizer loses the digit
