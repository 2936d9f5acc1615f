"""Generator training: codes extraction, exact resume, torchrun, the checks made before any work, export."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import TINY_GENERATOR, digit_tokenizer, generator_config, generator_training

from llamagen import load_gpt
from llamagen.data.codes import CodesDataset, augmented_views, extract_codes, source_size
from llamagen.data.digits import Digits
from llamagen.gpt import GPT, GPTConfig
from llamagen.training.common import load_training_state
from llamagen.training.gpt import GPTTrainingConfig, train_gpt


def test_views_are_the_original_ten_crops():
    images = torch.rand(2, 3, 18, 18) * 2 - 1
    views = augmented_views(images, "ten-crop", 16)
    assert views.shape == (2, 10, 3, 16, 16)
    assert torch.equal(views[:, 0], images[..., :16, :16])  # top left
    assert torch.equal(views[:, 4], images[..., 1:17, 1:17])  # centre
    assert torch.equal(views[:, 5], views[:, 1].flip(-1))  # the mirror's top left is the top right, mirrored
    assert augmented_views(images[..., :16, :16], "flip", 16).shape == (2, 2, 3, 16, 16)
    assert source_size("ten-crop", 64) == 70 and source_size("flip", 64) == 64


def test_codes_are_the_tokenizers_codes_of_each_view(digit_codes):
    data = CodesDataset(digit_codes)
    assert (data.info.images, data.info.views, data.info.grid, data.info.codebook_size) == (40, 5, 4, 64)
    assert data.info.class_names == [str(d) for d in range(10)] and data.info.conditioning == "c2i"
    image = Digits("train", size=18)[7]
    centre = augmented_views(image["image"][None], "crops", 16)[:, 4]
    assert torch.equal(data.codes[7, 4].long(), digit_tokenizer().tokenize(centre)[0])
    assert data.labels[7] == image["label"]
    # Item k is image k mod N in a view drawn from (seed, k): later epochs see other views.
    views = {tuple(data[7 + 40 * epoch]["tokens"].tolist()) for epoch in range(12)}
    assert len(views) > 1 and data[7]["label"] == data[47]["label"]


def test_extraction_refuses_what_it_cannot_condition_on(tmp_path):
    from llamagen.data.photos import PhotoCrops

    with pytest.raises(ValueError, match="have no labels"):
        extract_codes(
            digit_tokenizer(), PhotoCrops(size=16), tmp_path / "c.safetensors", 16, count=2, show_progress=False
        )
    with pytest.raises(ValueError, match="unknown augmentation"):
        extract_codes(digit_tokenizer(), Digits(size=16), tmp_path / "c.safetensors", 16, "rotate", show_progress=False)
    assert not (tmp_path / "c.safetensors").exists()


def test_training_learns_and_resuming_continues_exactly(tmp_path, digit_codes):
    config = generator_config(digit_codes)
    straight = train_gpt(config, generator_training(8), digit_codes, tmp_path / "straight", show_progress=False)
    # Learning, measured on all 40 images in eval mode: the model starts from uniform predictions (its output layer
    # is zero), so at exactly ln(64); 8 steps take it 0.17 below (deterministically: the same weights every run).
    codes = CodesDataset(digit_codes)
    tokens = torch.stack([codes[i]["tokens"] for i in range(40)])
    labels = torch.tensor([codes[i]["label"] for i in range(40)])

    def loss(model):
        with torch.no_grad():
            logits = model.eval()(tokens[:, :-1], labels)
        return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()))

    assert loss(GPT(config)) == pytest.approx(math.log(64), abs=1e-6)
    assert loss(straight.trained) < math.log(64) - 0.1
    half = train_gpt(config, generator_training(4), digit_codes, tmp_path / "resumed", show_progress=False)
    assert half.finished and load_training_state(tmp_path / "resumed")["step"] == 4
    resumed = train_gpt(config, generator_training(8), digit_codes, tmp_path / "resumed", resume=True,
                        show_progress=False, changes=["steps"])  # fmt: skip
    assert resumed.step == 8
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name  # the EMA
    for name, value in straight.trained.state_dict().items():
        assert torch.equal(value, resumed.trained.state_dict()[name]), name
    records = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in records] == list(range(1, 9))


def test_sigterm_saves_and_resume_finishes_like_an_uninterrupted_run(tmp_path, digit_codes, monkeypatch):
    import llamagen.training.gpt as gpt_training

    config = generator_config(digit_codes)
    straight = train_gpt(config, generator_training(6), digit_codes, tmp_path / "straight", show_progress=False)

    class Terminating(CodesDataset):
        calls = 0

        def __getitem__(self, index):
            Terminating.calls += 1
            if Terminating.calls == 13:  # the first sample of step 4 (batches of 4)
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__getitem__(index)

    monkeypatch.setattr(gpt_training, "CodesDataset", Terminating)
    stopped = train_gpt(config, generator_training(6), digit_codes, tmp_path / "resumed", show_progress=False)
    assert (stopped.step, stopped.finished) == (3, False)
    assert not (tmp_path / "resumed" / "final.safetensors").exists()
    monkeypatch.setattr(gpt_training, "CodesDataset", CodesDataset)
    resumed = train_gpt(
        config, generator_training(6), digit_codes, tmp_path / "resumed", resume=True, show_progress=False
    )
    for name, value in straight.trained.state_dict().items():
        assert torch.equal(value, resumed.trained.state_dict()[name]), name


def test_tokenizing_on_the_fly_trains_as_extracted_codes_do(tmp_path):
    """The same images in the same order, tokenized while training instead of beforehand: the same weights."""
    from llamagen.data.codes import CodesOnTheFly

    extract_codes(digit_tokenizer(), Digits(size=16), tmp_path / "codes.safetensors", 16, show_progress=False)
    on_the_fly = CodesOnTheFly(Digits(size=16), digit_tokenizer(), 16, "label", {"tokenizer": "digits-vq"})
    assert on_the_fly.info.grid == 4 and on_the_fly.info.class_names == [str(d) for d in range(10)]
    config = generator_config(tmp_path / "codes.safetensors")
    extracted = train_gpt(
        config, generator_training(3), tmp_path / "codes.safetensors", tmp_path / "a", show_progress=False
    )
    live = train_gpt(config, generator_training(3), on_the_fly, tmp_path / "b", show_progress=False)
    for name, value in extracted.trained.state_dict().items():
        assert torch.equal(value, live.trained.state_dict()[name]), name
    with pytest.raises(ValueError, match="not a multiple of the tokenizer's downsampling 4"):
        CodesOnTheFly(Digits(size=18), digit_tokenizer(), 18)


def test_the_final_file_names_what_a_pipeline_needs(tmp_path, digit_codes):
    from llamagen.pipeline import generator_metadata

    train_gpt(generator_config(digit_codes), generator_training(2), digit_codes, tmp_path / "run", show_progress=False)
    final = tmp_path / "run" / "final.safetensors"
    assert generator_metadata(final) == {
        "tokenizer": "digits-vq",
        "codes_command": "llamagen extract-codes ...",
        "class_names": [str(d) for d in range(10)],
    }
    gpt = load_gpt(final)
    assert (gpt.config.vocab_size, gpt.config.block_size, gpt.config.num_classes) == (64, 16, 10)


def test_mismatches_are_refused_before_any_work(tmp_path, digit_codes):
    config = generator_config(digit_codes)

    def refused(model, match, **kwargs):
        with pytest.raises(ValueError, match=match):
            train_gpt(model, generator_training(2), digit_codes, tmp_path / "refused", show_progress=False, **kwargs)
        assert not (tmp_path / "refused").exists()

    refused(GPTConfig(**{**config.to_dict(), "vocab_size": 128}), "4x4 grids of a 64-code tokenizer")
    refused(GPTConfig(**{**config.to_dict(), "num_classes": 12}), "10 classes")
    refused(GPTConfig(**{**config.to_dict(), "model_type": "t2i", "caption_dim": 8}), "t2i generator cannot")
    refused(config, "a text encoder has nothing to encode", text_encoder=object())
    with pytest.raises(ValueError, match="no codes file"):
        train_gpt(config, generator_training(2), tmp_path / "missing.safetensors", tmp_path / "x", show_progress=False)
    (tmp_path / "junk.safetensors").write_bytes(b"not a codes file")
    with pytest.raises(ValueError, match="is not a codes file"):
        CodesDataset(tmp_path / "junk.safetensors")
    train_gpt(config, generator_training(2), digit_codes, tmp_path / "run", show_progress=False)
    with pytest.raises(ValueError, match="already holds a training run"):
        train_gpt(config, generator_training(2), digit_codes, tmp_path / "run", show_progress=False)
    bigger = GPTConfig(**{**config.to_dict(), "dim": 64, "n_head": 4})
    with pytest.raises(ValueError, match="another model config"):
        train_gpt(bigger, generator_training(4), digit_codes, tmp_path / "run", resume=True, show_progress=False)


@pytest.mark.slow
def test_two_processes_under_torchrun_train_like_one(tmp_path, digit_codes):
    """DDP over gloo with two CPU processes, each taking half of every batch, reaches the weights of one
    process on whole batches (without dropout, whose masks each process draws for itself)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    no_dropout = {**TINY_GENERATOR, "token_dropout_p": 0.0, "resid_dropout_p": 0.0, "ffn_dropout_p": 0.0,
                  "class_dropout_prob": 0.0}  # fmt: skip

    def command(out):
        return ["-m", "llamagen", "train", "gpt", "--codes", str(digit_codes), "--config", json.dumps(no_dropout),
                "--out", str(out), "--steps", "4", "--batch-size", "4", "--log-every", "1", "--fp32",
                "--lr", "1e-3"]  # fmt: skip

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    finished = subprocess.run([*launcher, *command(tmp_path / "ddp")], env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.count("finished    4 steps") == 1
    single = subprocess.run([sys.executable, *command(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    steps = [json.loads(line)["step"] for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    two = load_gpt(tmp_path / "ddp" / "final.safetensors").state_dict()
    one = load_gpt(tmp_path / "one" / "final.safetensors").state_dict()
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_fsdp_under_torchrun_trains_and_resumes_like_one_process(tmp_path, digit_codes):
    """FSDP2 over two CPU processes, stopped after 2 steps and resumed to 4 (its checkpoint gathered from the
    shards and scattered back), ends at the weights one process reaches in 4 steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a crash shows its Python stack
    no_dropout = {**TINY_GENERATOR, "token_dropout_p": 0.0, "resid_dropout_p": 0.0, "ffn_dropout_p": 0.0,
                  "class_dropout_prob": 0.0}  # fmt: skip

    def command(out, steps, *extra):
        return ["-m", "llamagen", "train", "gpt", "--codes", str(digit_codes), "--config", json.dumps(no_dropout),
                "--out", str(out), "--steps", str(steps), "--batch-size", "4", "--log-every", "1", "--fp32",
                "--lr", "1e-3", "--ema-decay", "0", *extra]  # fmt: skip

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    for steps, extra in ((2, ()), (4, ("--resume", "--override", "steps"))):  # the warm-up's lr ignores --steps
        sharded = subprocess.run([*launcher, *command(tmp_path / "fsdp", steps, "--fsdp", *extra)], env=env,
                                 capture_output=True, text=True)  # fmt: skip
        assert sharded.returncode == 0, sharded.stderr[-3000:]
    single = subprocess.run([sys.executable, *command(tmp_path / "one", 4)], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    two = load_gpt(tmp_path / "fsdp" / "final.safetensors").state_dict()
    one = load_gpt(tmp_path / "one" / "final.safetensors").state_dict()
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)
    with pytest.raises(ValueError, match="a weight EMA would need a whole copy"):
        GPTTrainingConfig(fsdp=True, ema_decay=0.999)


@pytest.mark.slow
def test_fsdp_training_lets_go_of_its_process_group_before_exit(tmp_path, digit_codes):
    """Once FSDP training returns, nothing holds its sharding state, and with it the process group, whose teardown
    left to interpreter exit aborted a process at times (the state sits in reference cycles that outlive a
    returned sharded model)."""
    script = tmp_path / "train_then_count.py"
    script.write_text(
        textwrap.dedent(f"""
        import gc
        from torch.distributed.fsdp import FSDPModule
        from llamagen.data.codes import CodesDataset
        from llamagen.gpt import GPT, GPTConfig
        from llamagen.training.gpt import GPTTrainingConfig, generator_config_for, train_gpt

        codes = CodesDataset({str(digit_codes)!r})
        config = generator_config_for(codes.info, GPTConfig(**{TINY_GENERATOR!r}))
        training = GPTTrainingConfig(steps=2, batch_size=4, ema_decay=0, fsdp=True, bf16=False)
        outcome = train_gpt(config, training, codes, {str(tmp_path / "run")!r}, show_progress=False)
        print("FSDP modules alive:", sum(isinstance(o, FSDPModule) for o in gc.get_objects()))
    """)
    )
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
    run = subprocess.run(launcher, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("FSDP modules alive: 0") == 2, run.stdout


def test_cli_extracts_trains_and_refuses_endless_data(tmp_path):
    from llamagen.cli import main

    codes = tmp_path / "codes.safetensors"
    assert main(["extract-codes", "--data", "shapes", "--tokenizer", "shapes-vq", "--out", str(codes)]) == 2
    assert not codes.exists()  # shapes never end: --count is required
    assert main(["extract-codes", "--data", "digits", "--tokenizer", "digits-vq", "--image-size", "32",
                 "--augment", "crops", "--out", str(codes)]) == 0  # fmt: skip
    info = CodesDataset(codes).info
    assert (info.images, info.views, info.grid) == (1500, 5, 8) and info.metadata["tokenizer"] == "digits-vq"
    config = json.dumps({**TINY_GENERATOR, "n_layer": 1})
    args = ["train", "gpt", "--codes", str(codes), "--config", config, "--out", str(tmp_path / "run"), "--steps", "2",
            "--batch-size", "2", "--fp32"]  # fmt: skip
    assert main(args) == 0
    assert load_gpt(tmp_path / "run" / "final.safetensors").config.block_size == 64
    live = ["train", "gpt", "--data", "digits", "--tokenizer", "digits-vq", "--image-size", "32", "--config", config,
            "--out", str(tmp_path / "live"), "--steps", "2", "--batch-size", "2", "--fp32"]  # fmt: skip
    assert main(live) == 0
    assert main([*live[:2], "--codes", str(codes), *live[2:]]) == 2  # both sources: refused
