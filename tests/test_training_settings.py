"""The training settings: declared once, offered on the command line flag for flag, checked on creation."""

import dataclasses

import pytest

from llamagen.cli import build_parser
from llamagen.cli.common import settings_from_flags
from llamagen.training.settings import ClipTrainingConfig, GPTTrainingConfig, TokenizerTrainingConfig, TrainingSettings

TRAINERS = {"tokenizer": TokenizerTrainingConfig, "gpt": GPTTrainingConfig, "clip": ClipTrainingConfig}


@pytest.mark.parametrize("trainer", TRAINERS)
def test_the_command_line_defaults_are_the_settings_defaults(trainer):
    args = build_parser().parse_args(["train", trainer, "--out", "run"])
    assert settings_from_flags(TRAINERS[trainer], args) == TRAINERS[trainer]()


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_setting_has_its_flag(trainer):
    """Each field, set through its flag to something other than its default, arrives in the settings."""
    settings = TRAINERS[trainer]
    flags = {"bf16": ["--fp32"], "restart_dead_codes_every": ["--restart-dead-codes", "7"]}
    # A setting that takes words rather than a number: a legal one other than the default.
    choices = {"codebook_init": "kmeans", "init_from": "photo-vq"}
    for field in dataclasses.fields(settings):
        default = field.default
        if isinstance(default, bool):
            given, expected = flags.get(field.name, ["--" + field.name.replace("_", "-")]), not default
        elif field.name in choices:
            expected = choices[field.name]
            given = ["--" + field.name.replace("_", "-"), expected]
        elif field.name in flags:
            given, expected = flags[field.name], 7
        else:
            # A legal value other than the default (ema_decay stays below 1, fsdp stays off with an EMA).
            expected = {"ema_decay": 0.5, "final_lr_ratio": 0.5}.get(field.name, (default or 0) + 3)
            given = ["--" + field.name.replace("_", "-"), str(expected)]
        args = build_parser().parse_args(["train", trainer, "--out", "run", *given])
        if field.name == "fsdp":
            args.ema_decay = 0  # FSDP keeps no EMA
        if field.name == "decoder_only":
            args.init_from = "photo-vq"  # a decoder is trained alone for the encoder of given weights
        assert getattr(settings_from_flags(settings, args), field.name) == expected, field.name


def test_the_shared_settings_are_every_trainers():
    shared = {field.name for field in dataclasses.fields(TrainingSettings)}
    for settings in TRAINERS.values():
        assert shared <= {field.name for field in dataclasses.fields(settings)}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"log_every": 0}, "log_every must be at least 1"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
    ],
)
def test_settings_no_loop_can_run_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        GPTTrainingConfig(**values)


def test_the_learning_rate_warms_up_then_decays_to_its_final_share():
    settings = GPTTrainingConfig(steps=1000, lr=1e-3, warmup_steps=100, final_lr_ratio=0.1)
    assert settings.lr_at(0) == pytest.approx(1e-5)  # the first of 100 warm-up steps
    assert settings.lr_at(99) == pytest.approx(1e-3)
    assert settings.lr_at(550) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way down the cosine
    assert settings.lr_at(1000) == pytest.approx(1e-4)
