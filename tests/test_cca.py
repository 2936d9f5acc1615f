"""Condition contrastive alignment (`llamagen.training.cca`): the loss of the paper's Eq. 10 at known points, its
pull on the gaps, and a fine-tune that separates the images' own classes from others' relative to the
reference while the null class stays as it was asked to (positives only)."""

import math

import pytest
import torch
from helpers import generator_config

from llamagen.data.codes import CodesDataset
from llamagen.gpt import GPT
from llamagen.training.cca import cca_loss, finetune_cca, image_log_likelihood
from llamagen.training.settings import CCATrainingConfig


def test_the_loss_at_equal_likelihoods_is_log_two_per_term_weighted():
    zero = torch.zeros(4)
    negatives = torch.zeros(4, dtype=torch.bool)
    loss = cca_loss(zero, zero, negatives, beta=0.5, cca_lambda=10.0)
    assert math.isclose(float(loss), (math.log(2) + 10 * math.log(2)) / 10, rel_tol=1e-6)
    as_positives = cca_loss(zero, zero, ~negatives, beta=0.5, cca_lambda=10.0)
    assert math.isclose(float(as_positives), 2 * math.log(2) / 10, rel_tol=1e-6)


def test_the_loss_raises_the_matched_pairs_and_lowers_the_mismatched():
    positive = torch.zeros(3, requires_grad=True)
    negative = torch.zeros(3, requires_grad=True)
    is_positive = torch.tensor([False, False, True])  # the last: a null row, whose "negative" is a positive
    cca_loss(positive, negative, is_positive, beta=0.1, cca_lambda=5.0).backward()
    assert (positive.grad < 0).all()  # descending the loss raises log p(x|c) over the reference's
    assert (negative.grad[:2] > 0).all() and negative.grad[2] < 0
    assert torch.isclose(negative.grad[0], 5 * -negative.grad[2])  # lambda weighs the true negatives


def margin(gpt: GPT, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of log p(x | own class) - log p(x | the next image's class)."""
    with torch.no_grad():
        return float((image_log_likelihood(gpt, tokens, labels) - image_log_likelihood(gpt, tokens, labels.roll(-1)))
                     .mean())  # fmt: skip


def test_a_fine_tune_separates_each_image_from_other_classes(digit_codes, tmp_path):
    torch.manual_seed(0)
    pretrained = GPT(generator_config(digit_codes)).eval()
    with torch.no_grad():
        pretrained.output.weight.normal_(std=0.5)
    dataset = CodesDataset(digit_codes)
    items = [dataset[i] for i in range(0, 40, 4)]
    tokens, labels = torch.stack([item["tokens"] for item in items]), torch.tensor([item["label"] for item in items])
    labels_differ = labels != labels.roll(-1)
    tokens, labels = tokens[labels_differ], labels[labels_differ]
    before = margin(pretrained, tokens, labels)
    training = CCATrainingConfig(steps=30, batch_size=8, lr=3e-3, beta=0.1, cca_lambda=10.0, bf16=False,
                                 log_every=5, checkpoint_every=10)  # fmt: skip
    tuned, step, finished = finetune_cca(pretrained, training, dataset, tmp_path / "cca", show_progress=False)
    assert finished and step == 30 and (tmp_path / "cca" / "final.safetensors").is_file()
    assert margin(tuned, tokens, labels) > before + 1.0


def test_only_class_conditional_generators_with_a_null_class_are_fine_tuned(digit_codes, tmp_path):
    without_null = GPT(generator_config(digit_codes, class_dropout_prob=0.0))
    with pytest.raises(ValueError, match="null class"):
        finetune_cca(without_null, CCATrainingConfig(steps=1), digit_codes, tmp_path / "x", show_progress=False)
    with pytest.raises(ValueError, match="beta and cca_lambda"):
        CCATrainingConfig(beta=0.0)
