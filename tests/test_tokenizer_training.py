"""Tokenizer training: exact resume, clean stops, checkpoints, data determinism, export to an embedded model."""

import dataclasses
import errno
import json
import os
import signal

import numpy as np
import pytest
import torch

import llamagen.checkpoints as checkpoints
import llamagen.training.export as export_module
from llamagen import load_tokenizer
from llamagen.data.photos import PhotoCrops
from llamagen.evaluation.tokenizer import evaluate_tokenizer, held_out_crops
from llamagen.tokenizer import vq_preset
from llamagen.training.common import load_training_state
from llamagen.training.export import export_tokenizer
from llamagen.training.tokenizer import TokenizerTrainingConfig, train_tokenizer

MODEL = vq_preset("VQ-4-tiny", codebook_size=64)


def training(steps: int, **overrides) -> TokenizerTrainingConfig:
    values = {"batch_size": 2, "warmup_steps": 2, "log_every": 1, "checkpoint_every": 2, "bf16": False}
    return TokenizerTrainingConfig(steps=steps, **{**values, **overrides})


def crops() -> PhotoCrops:
    return PhotoCrops(size=16, seed=3)


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_photo_crops_are_a_pure_function_of_seed_and_index():
    a, b = PhotoCrops(size=24, seed=1), PhotoCrops(size=24, seed=1)
    assert torch.equal(a[5]["image"], b[5]["image"])
    assert not torch.equal(a[5]["image"], a[6]["image"])
    assert not torch.equal(a[5]["image"], PhotoCrops(size=24, seed=2)[5]["image"])
    image = a[0]["image"]
    assert image.shape == (3, 24, 24) and image.min() >= -1 and image.max() <= 1


def test_hue_jitter_turns_colours_and_keeps_greys():
    from PIL import Image

    from llamagen.data.photos import turn_hue

    red = Image.new("RGB", (4, 4), (220, 40, 40))
    turned = np.asarray(turn_hue(red, 85))[0, 0]  # a third of the circle: red becomes green
    assert turned[1] > 150 and turned[0] < 80 and turned[2] < 80
    grey = Image.new("RGB", (4, 4), (90, 90, 90))
    assert np.array_equal(np.asarray(turn_hue(grey, 100)), np.asarray(grey))
    plain, jittered = PhotoCrops(size=16), PhotoCrops(size=16, hue_jitter=True)
    changed = sum(not torch.equal(plain[i]["image"], jittered[i]["image"]) for i in range(100))
    assert 12 <= changed <= 40  # half of the colour photos' crops: about a quarter


class TerminatedAt(PhotoCrops):
    """Photo crops that send this process SIGTERM when a given sample is asked for."""

    def __init__(self, index: int, size: int = 16):
        super().__init__(size=size, seed=3)
        self.index = index

    def __getitem__(self, index: int) -> dict:
        if index == self.index:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__getitem__(index)


def test_sigterm_saves_and_resuming_continues_exactly(tmp_path):
    straight = train_tokenizer(MODEL, training(6), crops(), tmp_path / "straight", show_progress=False).model
    # SIGTERM while the batch of step 4 (samples 6-7) loads: the run saves after step 3 and stops.
    stopped = train_tokenizer(MODEL, training(6), TerminatedAt(6), tmp_path / "resumed", show_progress=False)
    assert (stopped.step, stopped.finished) == (3, False)
    assert load_training_state(tmp_path / "resumed")["step"] == 3
    assert not (tmp_path / "resumed" / "final.safetensors").exists()
    resumed = train_tokenizer(MODEL, training(6), crops(), tmp_path / "resumed", resume=True, show_progress=False).model
    for key, value in state_of(straight).items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_restarting_dead_codes_moves_codes_and_resumes_exactly(tmp_path, monkeypatch):
    import llamagen.tokenizer.quantizer as quantizer

    monkeypatch.setattr(quantizer, "USAGE_WINDOW", 64)  # fills in two steps of 2 x 4 x 4 codes
    restarting = training(6, restart_dead_codes_every=2)
    straight = train_tokenizer(MODEL, restarting, crops(), tmp_path / "straight", show_progress=False).model
    logged = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert logged[1]["restarted_codes"] > 0 and "restarted_codes" not in logged[0]
    stopped = train_tokenizer(MODEL, restarting, TerminatedAt(6), tmp_path / "resumed", show_progress=False)
    assert stopped.step == 3
    resumed = train_tokenizer(MODEL, restarting, crops(), tmp_path / "resumed", resume=True, show_progress=False)
    for key, value in state_of(straight).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_finished_run_is_loadable_and_its_usage_window_is_kept(tmp_path):
    outcome = train_tokenizer(MODEL, training(4), crops(), tmp_path / "run", show_progress=False)
    model = load_tokenizer(tmp_path / "run" / "final.safetensors", device="cpu")
    assert model.config == MODEL
    # The outcome holds both the EMA and the trained weights, as the last checkpoint does.
    state = load_training_state(tmp_path / "run")
    for key, value in outcome.trained.state_dict().items():
        assert torch.equal(value, state["model"][key]) and torch.equal(
            outcome.model.state_dict()[key], state["ema"][key]
        )
    assert 0 < model.codebook_usage() <= 1
    # The training checkpoint is in the original's layout too: {'model': ..., 'ema': ...}.
    assert load_tokenizer(tmp_path / "run" / "latest.pt", prefer_ema=True, device="cpu").config == MODEL


def test_starting_over_an_existing_run_is_refused(tmp_path):
    train_tokenizer(MODEL, training(2), crops(), tmp_path / "run", show_progress=False)
    with pytest.raises(ValueError, match="already holds a training run"):
        train_tokenizer(MODEL, training(2), crops(), tmp_path / "run", show_progress=False)


def test_resuming_with_another_model_is_refused(tmp_path):
    train_tokenizer(MODEL, training(2), crops(), tmp_path / "run", show_progress=False)
    other = vq_preset("VQ-4-tiny", codebook_size=128)
    with pytest.raises(ValueError, match="another model config"):
        train_tokenizer(other, training(4), crops(), tmp_path / "run", resume=True, show_progress=False)


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_a_kill_or_a_full_disk_during_a_checkpoint_write_keeps_the_last_checkpoint(tmp_path, monkeypatch, failure):
    train_tokenizer(MODEL, training(2), crops(), tmp_path / "run", show_progress=False)
    before = (tmp_path / "run" / "latest.pt").read_bytes()

    def dies_half_way(obj, path):
        with open(path, "wb") as file:
            file.write(b"partial")
        raise failure

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(type(failure)):
        train_tokenizer(MODEL, training(4), crops(), tmp_path / "run", resume=True, show_progress=False,
                        changes=["steps"])  # fmt: skip
    monkeypatch.undo()
    assert (tmp_path / "run" / "latest.pt").read_bytes() == before
    assert load_training_state(tmp_path / "run")["step"] == 2
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_bad_training_settings_are_refused():
    with pytest.raises(ValueError, match="steps must be at least 1"):
        TokenizerTrainingConfig(steps=0)
    with pytest.raises(ValueError, match="ema_decay"):
        TokenizerTrainingConfig(ema_decay=1.0)


def test_export_writes_weights_and_a_card_loadable_by_name(tmp_path, monkeypatch):
    train_tokenizer(MODEL, training(1), crops(), tmp_path / "run", show_progress=False, command="llamagen train ...")
    train_tokenizer(MODEL, training(2), crops(), tmp_path / "run", resume=True, show_progress=False,
                    changes=["steps"])  # fmt: skip
    assert export_module.finished_run(tmp_path / "run", None)[3] == ["llamagen train ..."]  # as the run recorded it
    # A run fine-tuned from another's weights is reproduced by both commands, in order, then the export.
    commands = ["llamagen train tokenizer --out first", "llamagen train tokenizer --init-from first/final.safetensors"]
    card = export_tokenizer(tmp_path / "run", "tiny-vq", "photo crops", commands, assets_dir=tmp_path)
    assert card["steps"] == 2 and card["reproduce"][:2] == commands
    # The settings the run finished with, and when they changed (config.json keeps those it started with).
    assert card["training"]["steps"] == 2 and card["training"]["changed_on_resume"] == [{"step": 1, "steps": [1, 2]}]
    assert card["reproduce"][2].startswith(f"llamagen export tokenizer {tmp_path / 'run'} --name tiny-vq")
    assert card["evaluation"]["images"] == 15
    assert 0 < card["evaluation"]["psnr"] < 60
    whole = card["evaluation"]["whole_photos"]  # a photo tokenizer is read on the photos whole as well
    assert len(whole["psnr_per_photo"]) == 3 and whole["psnr"] == pytest.approx(np.mean(whole["psnr_per_photo"]))
    monkeypatch.setattr(checkpoints, "ASSETS_DIR", tmp_path)
    assert "tiny-vq" in checkpoints.embedded_models()
    assert load_tokenizer("tiny-vq", device="cpu").config == MODEL


def test_evaluation_counts_codes():
    """Usage and perplexity are those of the codes the tokenizer gives the images, counted here on their own."""
    from llamagen.images import pil_to_tensor
    from llamagen.metrics import code_perplexity

    tokenizer = load_tokenizer_for_eval()
    images = held_out_crops(32)
    result = evaluate_tokenizer(tokenizer, images)
    codes = torch.cat([tokenizer.tokenize(pil_to_tensor(image)).flatten() for image in images])
    counts = torch.bincount(codes, minlength=64)
    assert result.images == 15 and result.used_codes == int((counts > 0).sum()) == 64 - result.dead_codes
    assert result.codebook_usage == result.used_codes / 64
    assert result.perplexity == pytest.approx(code_perplexity(counts))
    assert result.bits_per_pixel == pytest.approx(6 / 16)  # log2(64) bits per 4x4 pixels
    assert result.fid > 0 and result.fid_features == "random-conv"


def test_eval_cli_reports_and_saves_the_images_for_other_fid_tools(tmp_path, capsys):
    from llamagen.checkpoints import save
    from llamagen.cli import main

    save(load_tokenizer_for_eval(), tmp_path / "tiny.safetensors")
    out = tmp_path / "images"
    assert main(["eval", "tokenizer", "--tokenizer", str(tmp_path / "tiny.safetensors"), "--data", "digits",
                 "--save-images", str(out)]) == 0  # fmt: skip
    report = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert report["images"] == "297" and report["fid_features"] == "random-conv" and float(report["fid"]) > 0
    assert len(list((out / "originals").glob("*.png"))) == len(list((out / "reconstructions").glob("*.png"))) == 297


def load_tokenizer_for_eval():
    from llamagen.tokenizer import VQModel

    torch.manual_seed(0)
    return VQModel(MODEL).eval()


def cli_train(out, steps, *extra):
    config = json.dumps(MODEL.to_dict())
    return [
        "train", "tokenizer", "--out", str(out), "--config", config, "--image-size", "16", "--batch-size", "2",
        "--steps", str(steps), "--checkpoint-every", "2", "--log-every", "1", "--fp32", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_kill_9_then_resume_continues_from_the_last_checkpoint(tmp_path):
    """A run killed outright (no chance to save) resumes from its last checkpoint and ends where an
    uninterrupted run ends."""
    import subprocess
    import sys
    import time

    # Every part runs in a process of its own with one thread: the same arithmetic, bit for bit.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args):
        return subprocess.Popen([sys.executable, "-m", "llamagen", *args], env=env, stdout=subprocess.PIPE, text=True)

    process = run(*cli_train(tmp_path / "killed", 400))
    deadline = time.time() + 120
    while time.time() < deadline:
        state = load_training_state(tmp_path / "killed") if (tmp_path / "killed" / "latest.pt").exists() else None
        if state is not None and state["step"] >= 4:
            break
        time.sleep(0.2)
    process.kill()
    process.wait()
    killed_at = load_training_state(tmp_path / "killed")["step"]
    assert 4 <= killed_at < 400

    resumed_run = run(*cli_train(tmp_path / "killed", killed_at + 4), "--resume", "--override", "steps")
    assert f"finished    {killed_at + 4} steps" in resumed_run.communicate()[0]
    assert run(*cli_train(tmp_path / "straight", killed_at + 4)).wait() == 0
    resumed = load_tokenizer(tmp_path / "killed" / "final.safetensors", device="cpu").state_dict()
    straight = load_tokenizer(tmp_path / "straight" / "final.safetensors", device="cpu").state_dict()
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


@pytest.mark.slow
def test_two_processes_under_torchrun_train_like_one(tmp_path):
    """torchrun with 2 CPU processes (DDP over gloo), each taking half of every batch, ends at the weights
    one process reaches on whole batches (up to the order of floating-point sums), and logs once per step."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*cli_train(tmp_path / "ddp", 4), "--data", "shapes", "--batch-size", "4"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    finished = subprocess.run([*launcher, "-m", "llamagen", *args], env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.count("finished    4 steps") == 1
    single = [*cli_train(tmp_path / "one", 4), "--data", "shapes", "--batch-size", "4"]
    assert subprocess.run([sys.executable, "-m", "llamagen", *single], env=env, capture_output=True).returncode == 0

    steps = [json.loads(line)["step"] for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    two = load_tokenizer(tmp_path / "ddp" / "final.safetensors", device="cpu").state_dict()
    one = load_tokenizer(tmp_path / "one" / "final.safetensors", device="cpu").state_dict()
    for key, value in one.items():
        if "codebook_used" not in key:  # each process counts only its own codes
            torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_the_gan_and_perceptual_losses_train_and_resume_exactly(tmp_path, monkeypatch):
    """From disc_start the discriminator trains too; a stop and --resume restore it and its optimizer."""
    from llamagen.evaluation.lpips import LPIPS

    torch.manual_seed(0)
    lpips = LPIPS()  # random weights: the loss's plumbing, not its judgement, is under test here
    for lin in lpips.lins:
        lin.weight.data.abs_()  # as LPIPS's own: non-negative
    gan = training(6, disc_start=2)
    big = PhotoCrops(size=32, seed=3)  # the PatchGAN needs 32 pixels
    straight = train_tokenizer(MODEL, gan, big, tmp_path / "straight", show_progress=False, lpips=lpips)
    logged = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert "adversarial" not in logged[1] and "adversarial" in logged[2] and "discriminator" in logged[2]
    assert all(record["perceptual"] > 0 for record in logged)
    assert "discriminator" in load_training_state(tmp_path / "straight")

    stopped = train_tokenizer(MODEL, gan, TerminatedAt(8, 32), tmp_path / "resumed", show_progress=False, lpips=lpips)
    assert stopped.step == 4
    resumed = train_tokenizer(MODEL, gan, big, tmp_path / "resumed", resume=True, show_progress=False, lpips=lpips)
    for key, value in state_of(straight.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    train_tokenizer(MODEL, training(2), crops(), tmp_path / "plain", show_progress=False)
    with pytest.raises(ValueError, match="disc_start: the run used None, this asks for 2"):
        train_tokenizer(MODEL, training(2, disc_start=2), crops(), tmp_path / "plain", resume=True, show_progress=False)
    with pytest.raises(ValueError, match="without a discriminator"):
        train_tokenizer(MODEL, training(2, disc_start=2), crops(), tmp_path / "plain", resume=True, show_progress=False,
                        changes=["disc_start"])  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config", '{"ch": 48}'], "GroupNorm"),
        (["--data", "folder:EMPTY"], "no images in"),
        (["--data", "shapes", "--hue-jitter"], "applies to the photos data sets only"),
        (["--data", "imagenet"], "unknown data set"),
    ],
)
def test_training_that_cannot_work_is_refused_before_it_starts(tmp_path, capsys, extra, message):
    from llamagen.cli import main

    (tmp_path / "empty").mkdir()
    extra = [arg.replace("EMPTY", str(tmp_path / "empty")) for arg in extra]
    assert main(["train", "tokenizer", "--out", str(tmp_path / "run"), "--steps", "2", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_started_from_weights_starts_on_them_and_trains_their_model(tmp_path, capsys):
    from llamagen.cli import main

    first = train_tokenizer(MODEL, training(2), crops(), tmp_path / "first", show_progress=False)
    weights = tmp_path / "first" / "final.safetensors"
    # At learning rate 0 nothing moves: the run's weights and their average are the ones it started from.
    still = train_tokenizer(None, training(1, lr=0.0, init_from=str(weights)), crops(), tmp_path / "still",
                            show_progress=False)  # fmt: skip
    for model in (still.trained, still.model):
        for name, value in model.named_parameters():
            assert torch.equal(value, dict(first.model.named_parameters())[name]), name
    with pytest.raises(ValueError, match="codebook_size differ"):
        other = vq_preset("VQ-4-tiny", codebook_size=32)
        train_tokenizer(other, training(1, init_from=str(weights)), crops(), tmp_path / "other", show_progress=False)
    with pytest.raises(ValueError, match="keeps their codebook"):
        training(1, init_from=str(weights), codebook_init="kmeans")
    # The command line trains their model when no --config is given, and may change what training reads.
    args = ["train", "tokenizer", "--init-from", str(weights), "--out", str(tmp_path / "tuned"), "--image-size", "16",
            "--steps", "1", "--batch-size", "2", "--fp32", "--entropy-loss", "0.1"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    recorded = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert recorded["model"] == {**MODEL.to_dict(), "entropy_loss_ratio": 0.1}
    assert recorded["training"]["init_from"] == str(weights)


def test_a_run_from_weights_may_grow_residual_blocks_that_start_as_the_identity(tmp_path):
    train_tokenizer(MODEL, training(2), crops(), tmp_path / "first", show_progress=False)
    weights = str(tmp_path / "first" / "final.safetensors")
    start = load_tokenizer(weights)
    deeper = dataclasses.replace(MODEL, num_res_blocks=MODEL.num_res_blocks + 1)
    images = torch.stack([crops()[i]["image"] for i in range(4)])
    # At learning rate 0 the grown model is the one it grew from: the same codes, the same pixels (to float32's
    # rounding: the two models' convolutions may take different kernels).
    still = train_tokenizer(deeper, training(1, lr=0.0, init_from=weights), crops(), tmp_path / "still",
                            show_progress=False)  # fmt: skip
    assert sum(p.numel() for p in still.model.parameters()) > sum(p.numel() for p in start.parameters())
    with torch.no_grad():
        codes = start.tokenize(images)
        assert torch.equal(still.model.tokenize(images), codes)
        torch.testing.assert_close(still.model.detokenize(codes), start.detokenize(codes))
    # Trained, the new blocks leave the identity: their last layers, zero at the start, move.
    grown = train_tokenizer(deeper, training(2, lr=1e-3, init_from=weights), crops(), tmp_path / "grown",
                            show_progress=False)  # fmt: skip
    new_block = grown.trained.decoder.conv_blocks[0].res[-1]
    assert new_block.conv2.weight.abs().sum() > 0
    assert load_tokenizer(str(tmp_path / "grown" / "final.safetensors")).config.num_res_blocks == 2
    with pytest.raises(ValueError, match="may add blocks, not remove them"):
        train_tokenizer(MODEL, training(1, init_from=str(tmp_path / "grown" / "final.safetensors")), crops(),
                        tmp_path / "shrunk", show_progress=False)  # fmt: skip


def test_a_decoder_trained_alone_keeps_every_code_and_may_be_a_wider_one(tmp_path):
    train_tokenizer(MODEL, training(2), crops(), tmp_path / "first", show_progress=False)
    weights = str(tmp_path / "first" / "final.safetensors")
    start = load_tokenizer(weights)
    images = torch.stack([crops()[i]["image"] for i in range(4)])
    wider = dataclasses.replace(MODEL, decoder_ch_mult=[2, 2, 4])
    for config, name in ((None, "same"), (wider, "wider")):
        outcome = train_tokenizer(config, training(3, lr=1e-3, init_from=weights, decoder_only=True), crops(),
                                  tmp_path / name, show_progress=False)  # fmt: skip
        for model in (outcome.trained, outcome.model):
            theirs = dict(model.named_parameters())
            for key, value in start.named_parameters():
                if not key.startswith(("decoder.", "post_quant_conv.")):
                    assert torch.equal(value, theirs[key]), key
            assert torch.equal(model.tokenize(images), start.tokenize(images))
        decoder = dict(outcome.trained.decoder.named_parameters())
        if config is None:  # the same decoder, moved from where it started
            assert any(not torch.equal(v, decoder[k]) for k, v in start.decoder.named_parameters())
        else:
            assert outcome.trained.config.decoder_ch_mult == [2, 2, 4]
    # Stopped while step 3's batch loads and resumed, the wider decoder's run ends where the straight one did.
    alone = training(3, lr=1e-3, init_from=weights, decoder_only=True)
    stopped = train_tokenizer(wider, alone, TerminatedAt(4), tmp_path / "resumed", show_progress=False)
    assert stopped.step == 2
    resumed = train_tokenizer(wider, alone, crops(), tmp_path / "resumed", resume=True, show_progress=False)
    for key, value in state_of(outcome.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    with pytest.raises(ValueError, match="decoder_ch_mult differ"):
        train_tokenizer(wider, training(1, init_from=weights), crops(), tmp_path / "refused", show_progress=False)
    with pytest.raises(ValueError, match="give it"):
        training(1, decoder_only=True)
    with pytest.raises(ValueError, match="no restart_dead_codes_every"):
        training(1, init_from=weights, decoder_only=True, restart_dead_codes_every=10)


def test_a_run_recorded_before_a_setting_existed_resumes_as_the_settings_default(tmp_path):
    stopped = train_tokenizer(MODEL, training(4), TerminatedAt(4), tmp_path / "run", show_progress=False)
    assert stopped.step == 2
    path = tmp_path / "run" / "latest.pt"
    state = torch.load(path, weights_only=False)
    del state["settings"]["decoder_only"]  # as a checkpoint written before the setting was added
    torch.save(state, path)
    assert train_tokenizer(MODEL, training(4), crops(), tmp_path / "run", resume=True, show_progress=False).finished


def test_training_hours_leave_out_the_pause_between_legs():
    from llamagen.training.export import training_hours

    # Log lines every 60 s, then a night between the two legs of a resumed run, then 60 s again.
    times = [0, 60, 120, 180, 180 + 36_000, 180 + 36_060]
    assert training_hours([{"time": t} for t in times]) == pytest.approx(240 / 3600)
    assert training_hours([{"time": 5}]) == 0.0
