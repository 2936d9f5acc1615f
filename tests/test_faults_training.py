"""Misuse of training, as a new user commits it: resuming what is not there or with other settings, broken
checkpoints, two writers, a full disk, a killed launcher, a frozen process. Each ends with one clear line
and nothing lost: no log truncated, no record rewritten, no checkpoint left half-written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_GENERATOR, digit_tokenizer, generator_config, generator_training, one_line_error

from llamagen.cli import main
from llamagen.training.common import load_training_state, lock_run_folder
from llamagen.training.gpt import train_gpt


def train(codes, out, steps=2, resume=False, changes=(), **settings):
    return train_gpt(generator_config(codes), generator_training(steps, **settings), codes, out, resume=resume,
                     show_progress=False, changes=changes)  # fmt: skip


def records(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def test_resuming_what_is_not_there_is_refused_and_loses_nothing(tmp_path, digit_codes):
    run = tmp_path / "run"
    train(digit_codes, run)
    kept = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "config.json")}
    (run / "latest.pt").unlink()
    (run / "previous.pt").unlink()
    with pytest.raises(ValueError, match=r"nothing to resume .* latest\.pt is missing; previous\.pt is missing"):
        train(digit_codes, run, resume=True)
    assert {name: (run / name).read_bytes() for name in kept} == kept
    with pytest.raises(ValueError, match="holds no training run"):
        train(digit_codes, tmp_path / "mistyped", resume=True)
    assert not (tmp_path / "mistyped").exists()


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_an_unreadable_checkpoint_falls_back_to_the_one_before(tmp_path, digit_codes, capsys, damage):
    straight = train(digit_codes, tmp_path / "straight", steps=3)
    run = tmp_path / "run"
    train(digit_codes, run, steps=3)  # checkpoints after steps 2 and 3: previous.pt and latest.pt
    assert load_training_state(run)["step"] == 3
    whole = (run / "latest.pt").read_bytes()
    (run / "latest.pt").write_bytes({"empty": b"", "garbage": os.urandom(4096), "truncated": whole[:3000]}[damage])
    resumed = train(digit_codes, run, steps=3, resume=True)
    assert "resuming from previous.pt: latest.pt is unreadable" in capsys.readouterr().err
    for name, value in straight.trained.state_dict().items():
        assert torch.equal(value, resumed.trained.state_dict()[name]), name
    assert (run / "latest.pt.unreadable").exists()
    assert [record["step"] for record in records(run, "metrics.jsonl")] == [1, 2, 3]
    assert [record["checkpoint"] for record in records(run, "history.jsonl")[1:]] == ["previous.pt"]

    (run / "latest.pt").write_bytes(b"")
    (run / "previous.pt").write_bytes(b"junk")
    error = one_line_error(capsys, "train", "gpt", "--codes", str(digit_codes), "--config", json.dumps(TINY_GENERATOR),
                     "--out", str(run), "--resume")  # fmt: skip
    assert "nothing to resume" in error and "latest.pt is unreadable" in error and "previous.pt is unreadable" in error


def test_resuming_with_other_settings_is_refused_unless_overridden_and_then_recorded(tmp_path, digit_codes):
    run = tmp_path / "run"
    train(digit_codes, run)
    kept = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "config.json", "latest.pt")}
    other_codes = tmp_path / "fewer.safetensors"
    from llamagen.data.codes import extract_codes
    from llamagen.data.digits import Digits

    extract_codes(digit_tokenizer(), Digits(size=16), other_codes, 16, count=20, show_progress=False,
                  description={"tokenizer": "digits-vq"})  # fmt: skip
    changes = {"lr": {"lr": 5e-4}, "batch_size": {"batch_size": 2}, "seed": {"seed": 1}, "steps": {"steps": 3},
               "ema_decay": {"ema_decay": 0.0}, "bf16": {"bf16": True},
               "weight_decay": {"weight_decay": 0.1}}  # fmt: skip
    for name, settings in changes.items():
        steps = settings.pop("steps", 2)
        with pytest.raises(ValueError, match=f"other settings \\({name}: the run used"):
            train(digit_codes, run, steps=steps, resume=True, **settings)
    with pytest.raises(ValueError, match="other settings \\(data: the run used"):
        train(other_codes, run, resume=True)
    assert {name: (run / name).read_bytes() for name in kept} == kept

    train(digit_codes, run, steps=3, resume=True, changes=["steps", "weight_decay"], weight_decay=0.1)
    decays = [group["weight_decay"] for group in load_training_state(run)["optimizer"]["param_groups"]]
    assert decays == [0.1, 0.0]  # matrices only, at the new value (not the checkpoint's 0.05)
    history = records(run, "history.jsonl")
    assert [record["event"] for record in history] == ["start", "resume"]
    assert history[1]["changed"] == {"steps": [2, 3], "weight_decay": [0.05, 0.1]}
    assert (run / "config.json").read_bytes() == kept["config.json"]
    with pytest.raises(ValueError, match=r"weight_decay: the run used 0\.1, this asks for 0\.05"):
        train(digit_codes, run, steps=3, resume=True)  # what was changed is what the run now uses


def test_the_command_line_overrides_by_name_and_value(tmp_path, digit_codes, capsys):
    argv = ["train", "gpt", "--codes", str(digit_codes), "--config", json.dumps(TINY_GENERATOR), "--out",
            str(tmp_path / "run"), "--steps", "2", "--batch-size", "4", "--log-every", "1", "--fp32",
            "--ema-decay", "0"]  # fmt: skip
    assert main(argv) == 0
    assert "finished    2 steps; weights in" in capsys.readouterr().out  # no EMA is kept, none is named
    error = one_line_error(capsys, *argv, "--resume", "--lr", "3e-4")
    assert "lr: the run used 0.0001, this asks for 0.0003" in error and "--override" in error
    assert main([*argv, "--resume", "--override", "steps=3", "--override", "lr=3e-4"]) == 0
    assert records(tmp_path / "run", "history.jsonl")[1]["changed"] == {"steps": [2, 3], "lr": [1e-4, 3e-4]}
    unknown = one_line_error(capsys, *argv, "--resume", "--override", "learning_rate=1")
    assert "no training setting 'learning_rate'" in unknown
    assert "goes with --resume" in one_line_error(capsys, *argv, "--override", "lr=1")


def test_a_folder_being_written_is_refused_to_a_second_run(tmp_path, digit_codes):
    run = tmp_path / "run"
    train(digit_codes, run)
    holder = lock_run_folder(run)  # as a run in progress holds it
    try:
        with pytest.raises(ValueError, match=f"is being written by a training run \\(process {os.getpid()}\\)"):
            train(digit_codes, run, resume=True)
    finally:
        holder.close()
    (run / ".latest.pt.x1y2.tmp").write_bytes(b"what a kill left")
    train(digit_codes, run, steps=3, resume=True, changes=["steps"])
    assert not list(run.glob("*.tmp")) and load_training_state(run)["step"] == 3


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, digit_codes, capsys):
    disk = tmp_path / "small_disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this machine does not let the tests mount a small tmpfs")
    try:
        argv = ["train", "gpt", "--codes", str(digit_codes), "--config", json.dumps(TINY_GENERATOR), "--out",
                str(disk / "run"), "--steps", "2", "--batch-size", "4", "--log-every", "1", "--fp32"]  # fmt: skip
        assert main(argv) == 0
        capsys.readouterr()
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 64 * 1024))
        error = one_line_error(capsys, *argv, "--resume", "--override", "steps=4")
        assert "no space left" in error.lower() or "No space left" in error
        assert load_training_state(disk / "run")["step"] == 2 and not list((disk / "run").glob("*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --- under torchrun ----------------------------------------------------------------------------------------


def torchrun(codes, out, steps, *extra, env=None) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "llamagen", "train", "gpt", "--codes", str(codes), "--config", json.dumps(TINY_GENERATOR), "--out",
               str(out), "--steps", str(steps), "--batch-size", "4", "--log-every", "1", "--fp32", *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def rank_of(pid: int) -> int:
    variables = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    return int(next(v for v in variables if v.startswith(b"RANK=")).split(b"=")[1])


def wait_for_steps(out: Path, steps: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= steps:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {steps} steps logged in {timeout} s")


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_under_torchrun_each_process_draws_its_own_masks_and_a_resume_continues_exactly(tmp_path, digit_codes):
    """With dropout on, two processes seed their streams apart (each checkpoint keeps both), and a run stopped
    after 2 steps and resumed to 4 ends on the weights of one never stopped. A refused resume is reported once."""
    straight = torchrun(digit_codes, tmp_path / "straight", 4)
    assert straight.wait(timeout=300) == 0, straight.stderr.read()[-3000:]
    first = torchrun(digit_codes, tmp_path / "resumed", 2)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    streams = load_training_state(tmp_path / "resumed")["rng"]
    assert len(streams) == 2 and not torch.equal(streams[0]["cpu"], streams[1]["cpu"])
    refused = torchrun(digit_codes, tmp_path / "resumed", 4, "--resume")
    _, stderr = refused.communicate(timeout=300)
    assert refused.returncode != 0 and stderr.count("llamagen train: error: resuming") == 1  # the first one says it
    second = torchrun(digit_codes, tmp_path / "resumed", 4, "--resume", "--override", "steps")
    assert second.wait(timeout=300) == 0, second.stderr.read()[-3000:]
    one = load_training_state(tmp_path / "straight")["model"]
    two = load_training_state(tmp_path / "resumed")["model"]
    for key, value in one.items():
        assert torch.equal(value, two[key]), key


@pytest.mark.slow
def test_a_killed_launcher_ends_its_workers_after_they_save(tmp_path, digit_codes):
    out = tmp_path / "run"
    launcher, workers = torchrun(digit_codes, out, 100_000, "--checkpoint-every", "100000"), []
    try:
        wait_for_steps(out, 3)
        workers = children(launcher.pid)
        assert len(workers) == 2
        launcher.kill()  # kill -9: it cannot pass anything on
        deadline = time.time() + 60
        while any(alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in workers)
    finally:
        launcher.kill()
        launcher.wait()
        for pid in workers:  # orphans now, if they outlived their launcher
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    state = load_training_state(out)
    assert state is not None, "no checkpoint; the workers said: " + launcher.stderr.read()[-3000:]
    assert state["step"] >= 3 and state["step"] >= records(out, "metrics.jsonl")[-1]["step"]
    lock_run_folder(out).close()  # nobody holds the folder any more


@pytest.mark.slow
def test_a_frozen_process_makes_the_others_stop_with_one_line(tmp_path, digit_codes):
    out = tmp_path / "run"
    launcher = torchrun(digit_codes, out, 100_000, env={"LLAMAGEN_COLLECTIVE_TIMEOUT": "5"})
    frozen = None
    try:
        wait_for_steps(out, 2)
        workers = {rank_of(pid): pid for pid in children(launcher.pid)}
        frozen = workers[1]
        os.kill(frozen, signal.SIGSTOP)
        deadline = time.time() + 120
        while alive(workers[0]) and time.time() < deadline:
            time.sleep(0.2)
        assert not alive(workers[0])
        os.kill(frozen, signal.SIGKILL)  # what the launcher would do after its grace period
        _, stderr = launcher.communicate(timeout=180)
    finally:
        if frozen is not None and alive(frozen):
            os.kill(frozen, signal.SIGKILL)
        launcher.kill()
        launcher.wait()
    assert launcher.returncode != 0
    assert "llamagen train: error: another process did not answer within 5 s" in stderr
