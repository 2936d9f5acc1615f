"""One image's reading of its condition (`analysis.reading`), the app's and the notebooks' explorer
(`analysis.widgets`): each number is the library's measure under the true, the null and a wrong condition,
computed here again on its own."""

import pytest
import torch

from llamagen.analysis.attention import prefix_attention_with_controls
from llamagen.analysis.condition_use import condition_use, loss_gaps
from llamagen.analysis.reading import read_condition, wrong_condition
from llamagen.analysis.widgets import condition_explorer, position_summary
from llamagen.pipeline import load_pipeline


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(2)
    return load_pipeline("digits-c2i")


def test_the_reading_is_the_librarys_measures_under_the_true_null_and_next_class(digits):
    tokens = digits(class_labels=[3], cfg_scale=4.0, seed=1).tokens
    reading = read_condition(digits, tokens, {"class_labels": [3]})
    assert reading.wrong == digits.class_name(4)
    own, wrong = torch.tensor([3]), torch.tensor([4])
    torch.testing.assert_close(reading.kl, condition_use(digits.gpt, tokens, own).kl[0])
    losses = loss_gaps(digits.gpt, tokens, own, wrong)
    assert reading.loss == {name: float(value[0]) for name, value in losses.items()}
    shares = prefix_attention_with_controls(digits.gpt, tokens, own, wrong)
    for name, value in shares.items():
        torch.testing.assert_close(reading.attention[name], value[:, 0])
    assert reading.attention["true"].shape == (digits.gpt.config.n_layer, digits.gpt.config.block_size)


def test_the_wrong_condition_is_the_next_class_or_the_next_shape_or_colour_word(digits):
    assert wrong_condition(digits, {"class_labels": [9]}) == {"class_labels": [0]}
    assert wrong_condition(digits, {"class_labels": ["9"]}) == {"class_labels": [0]}
    assert wrong_condition(digits, {"prompts": ["a small red star"]})["prompts"][0] != "a small red star"
    with pytest.raises(ValueError, match="shape or colour word"):
        wrong_condition(digits, {"prompts": ["something"]})


def test_the_explorer_shows_the_reading_at_the_chosen_position_and_layer(digits, capsys, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    explorer = condition_explorer({"guided": digits, "unguided": digits}, {"guided": 4.0, "unguided": 1.0})
    controls = {child.description: child for child in explorer.children if hasattr(child, "description")}
    assert list(controls["generator"].options) == ["guided", "unguided"]
    assert list(controls["class"].options) == digits.class_names
    assert controls["position"].max == digits.gpt.config.block_size - 1
    assert controls["layer"].max == digits.gpt.config.n_layer - 1
    capsys.readouterr()
    explorer.f(generator="unguided", class_name="7", position=10, layer=1)
    printed = capsys.readouterr().out.splitlines()
    tokens = digits(class_labels=[7], cfg_scale=1.0, seed=0).tokens
    expected = read_condition(digits, tokens, {"class_labels": [7]})
    grid = digits.gpt.config.grid_size
    assert printed[-1] == position_summary(expected, 10, 1, grid)
    assert f"{float(expected.kl[10]):.4f}" in printed[-1] and "row 1, column 2" in printed[-1]
    assert shown[-1].size[0] > 0  # the figure, a PIL image


def test_the_explorer_refuses_generators_it_cannot_compare(digits):
    shapes = load_pipeline("shapes-c2i")
    with pytest.raises(ValueError, match="same classes"):
        condition_explorer({"digits": digits, "shapes": shapes}, {"digits": 4.0, "shapes": 2.0})
