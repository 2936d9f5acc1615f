"""The text encoders the project ships: they load by name, give the per-token prefix a text-to-image model reads,
and still match captions to images as their model cards say, on captioned shapes training never drew."""

import pytest
import torch

from llamagen.checkpoints import embedded_card, embedded_of_kind
from llamagen.data.shapes import Shapes
from llamagen.evaluation.generation import SECOND_REAL_SEED
from llamagen.evaluation.retrieval import caption_retrieval, word_choice
from llamagen.text import load_text_encoder

ENCODERS = embedded_of_kind("clip")


def test_the_expected_text_encoders_are_shipped():
    assert {"shapes-clip"} <= set(ENCODERS)


@pytest.mark.parametrize("name", ENCODERS)
def test_each_encoder_gives_a_left_padded_prefix_that_tells_captions_apart(name):
    encoder = load_text_encoder(name, device="cpu")
    encoded = encoder.encode(["a red star", "a large blue circle in the top left"])
    assert encoded.features.shape == (2, encoder.context_length, encoder.width)
    assert encoded.mask[:, -1].all() and not encoded.mask[0, 0]  # the caption at the end, padding first
    assert encoded.mask[0].sum() < encoded.mask[1].sum()
    assert not torch.allclose(encoded.features[0, -1], encoded.features[1, -1])


@pytest.mark.parametrize("name", ENCODERS)
def test_each_encoder_still_retrieves_what_its_card_says(name):
    evaluation = embedded_card(name)["evaluation"]
    encoder = load_text_encoder(name, device="cpu")
    shapes = Shapes(size=encoder.config.vision_cfg["image_size"], seed=SECOND_REAL_SEED, captioned=True)
    items = [shapes[i] for i in range(evaluation["candidates"])]
    measured = caption_retrieval(encoder, items)
    assert measured["text_to_image_top1"] == pytest.approx(evaluation["text_to_image_top1"], abs=0.01)
    assert measured["image_to_text_top1"] == pytest.approx(evaluation["image_to_text_top1"], abs=0.01)
    # Chance is 0.2% (491 different captions among the 500); captions that leave attributes out fit several
    # images equally well, which is why this stays far below 100%.
    assert measured["text_to_image_top1"] >= 0.5 and measured["image_to_text_top1"] >= 0.5


@pytest.mark.parametrize("name", ENCODERS)
def test_each_encoder_still_picks_the_right_words_as_its_card_says(name):
    """The shape and colour words a text-to-image model reads from the text tower are told apart, as the card
    says; on the pairs training never showed, the shape much less well (the text tower composes them poorly)."""
    encoder, evaluation = load_text_encoder(name, device="cpu"), embedded_card(name)["evaluation"]
    size, count = encoder.config.vision_cfg["image_size"], evaluation["candidates"]
    for key, options in (
        ("right_word", {"captioned": True}),
        ("right_word_held_out_pairs", {"only_held_out_pairs": True}),
    ):
        shapes = Shapes(size=size, seed=SECOND_REAL_SEED, **options)
        measured = word_choice(encoder, [shapes[i] for i in range(count)])
        assert measured == pytest.approx(evaluation[key], abs=0.01), key
        assert measured["colour"] >= 0.95, key
    assert evaluation["right_word"]["shape"] >= 0.95
