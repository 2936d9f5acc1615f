"""The motion tokenizer and its three quantizers: codes that read back as what the decoder saw, T2M-GPT's EMA
entries finding the latents' clusters, FSQ's grid, training that resumes exactly, errors measured in the
units they claim."""

from __future__ import annotations

import dataclasses
import os
import signal

import numpy as np
import pytest
import torch

from llamagen.data.motion import FEATURES, Motions
from llamagen.data.motion.features import FEATURE_SLICES
from llamagen.data.motion.skeleton import euler_rotations
from llamagen.data.motion.windows import MotionWindows, feature_statistics
from llamagen.motion import MotionVQ, arm_config, load_motion_tokenizer
from llamagen.motion.measures import code_statistics, evaluate_motion_tokenizer, joint_errors
from llamagen.motion.quantizers import EMAResetQuantizer, FSQuantizer, SphereQuantizer
from llamagen.tokenizer.quantizer import VectorQuantizer
from llamagen.training import motion_tokenizer
from llamagen.training.motion_tokenizer import train_motion_tokenizer
from llamagen.training.settings import MotionTokenizerTrainingConfig


def test_euler_rotations_are_y_after_z_after_x():
    def single(axis: int, angle: float) -> np.ndarray:
        c, s = np.cos(angle), np.sin(angle)
        return {
            0: np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            1: np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            2: np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
        }[axis]

    angles = np.random.default_rng(0).uniform(-3, 3, (6, 3))
    expected = [single(1, y) @ single(2, z) @ single(0, x) for x, y, z in angles]
    np.testing.assert_allclose(euler_rotations(angles), expected, atol=1e-12)


@pytest.mark.parametrize("arm", ["llamagen", "t2m", "fsq"])
def test_codes_read_back_as_what_the_decoder_saw(arm):
    torch.manual_seed(0)
    model = MotionVQ(arm_config(arm, 512, width=32, depth=1))
    model.train()
    model(torch.randn(4, 16, FEATURES))  # T2M-GPT's entries start from a first batch
    model.eval()
    features = torch.randn(3, 24, FEATURES)
    codes = model.tokenize(features)
    assert codes.shape == (3, 6) and codes.dtype == torch.int64 and codes.min() >= 0 and codes.max() < 512
    reconstruction, quantized = model(model.normalise(features))
    torch.testing.assert_close(model.quantize.lookup(codes), quantized.quantized)
    torch.testing.assert_close(model.detokenize(codes), model.denormalise(reconstruction))
    with pytest.raises(ValueError, match="multiple of 4"):
        model.tokenize(torch.randn(1, 22, FEATURES))
    with pytest.raises(ValueError, match=r"0\.\.511"):
        model.detokenize(torch.full((1, 4), 512))


def test_the_sphere_quantizer_is_the_image_quantizer_over_a_row():
    torch.manual_seed(0)
    sphere = SphereQuantizer(64, 8)
    image = VectorQuantizer(64, 8, 0.25, 0.0, True, show_usage=False)
    image.load_state_dict(sphere.inner.state_dict())
    z = torch.randn(2, 8, 10)
    out, reference = sphere(z), image(z.unsqueeze(2))
    assert torch.equal(out.codes, reference.codes[:, 0])
    torch.testing.assert_close(out.compared.norm(dim=-1), torch.ones(2, 10))
    torch.testing.assert_close(sphere.codebook().norm(dim=-1), torch.ones(64))


def test_ema_entries_find_the_latents_clusters_and_dead_entries_move_onto_latents():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 5
    quantizer = EMAResetQuantizer(8, 16, decay=0.9).train()
    for _ in range(100):
        latents = (centres[torch.randint(4, (256,))] + 0.01 * torch.randn(256, 16)).t().unsqueeze(0)
        out = quantizer(latents)
    # every entry sits on a cluster (the ones no latent takes are moved onto latents), each cluster has one
    distances = torch.cdist(quantizer.codebook(), centres)
    assert distances.min(dim=1).values.max() < 0.1
    assert (distances.min(dim=0).values < 0.1).all()
    frozen = quantizer.codebook().clone()
    out = quantizer.eval()(latents)
    assert torch.equal(quantizer.codebook(), frozen)  # no updates outside training
    assert (quantizer.codebook()[out.codes[0]] - latents[0].t()).norm(dim=1).max() < 0.2


def test_ema_entries_start_as_latents_and_count_only_the_codes_chosen():
    """The first batch places the entries on its latents (T2M-GPT's start) and then counts the codes it chose:
    no latent is counted before codes are chosen. (Counting the batch as taking entry 0 would put it at the
    batch's mean, nearest to most latents of many dimensions, with a running count that keeps it there.)"""
    torch.manual_seed(0)
    quantizer = EMAResetQuantizer(64, 32).train()
    batch = torch.randn(1, 32, 512)
    taken = torch.bincount(quantizer(batch).codes.flatten(), minlength=64)
    alive = int((taken > 0).sum())
    # An entry that took t latents counts 0.99 + 0.01 t; one that took none fell below 1 and restarts at 1.
    expected = 0.99 * alive + 0.01 * 512 + (64 - alive)
    assert float(quantizer.entry_counts.sum()) == pytest.approx(expected, rel=1e-5)
    assert (quantizer.entry_counts <= 0.99 + 0.01 * taken.max() + 1e-5).all()


def test_fsq_codes_are_the_grid_and_every_one_is_reachable():
    quantizer = FSQuantizer((8, 5, 3))
    assert quantizer.codebook_size == 120
    grid = quantizer.codebook()
    assert grid.shape == (120, 3) and len(torch.unique(grid, dim=0)) == 120
    assert grid.abs().max() <= 1.0
    z = torch.randn(1, 3, 20000) * 3
    z.requires_grad_(True)
    out = quantizer(z)
    assert len(torch.unique(out.codes)) == 120  # every code reachable from the bounded latents
    torch.testing.assert_close(quantizer.lookup(out.codes), out.quantized.detach())
    out.quantized.sum().backward()
    assert z.grad.abs().sum() > 0  # straight through the rounding
    with pytest.raises(ValueError, match="at least 2 levels"):
        FSQuantizer((4, 1))


def test_arms_at_equal_codes():
    assert arm_config("fsq", 1024).fsq_levels == (8, 5, 5, 5) and arm_config("fsq", 1024).codebook_size == 1000
    assert arm_config("t2m", 512).code_dim == 512 and arm_config("t2m", 512).commit_beta == 0.02
    assert arm_config("llamagen", 16384).code_dim == 8 and arm_config("llamagen", 4096, code_dim=32).code_dim == 32
    with pytest.raises(ValueError, match="2\\^n codes"):
        arm_config("fsq", 1000)
    with pytest.raises(ValueError, match="unknown arm"):
        arm_config("vqgan", 512)
    with pytest.raises(ValueError, match="an fsq arm's code_dim follow from its levels"):
        arm_config("fsq", 1024, code_dim=8)


def test_joint_errors_are_in_millimetres():
    features = Motions(seed=3)[0]["features"].numpy().astype(np.float64)
    assert joint_errors(features, features) == (0.0, 0.0, 0.0, 0.0)
    raised = features.copy()
    raised[:, FEATURE_SLICES["root_height"]] += 0.1
    raised[:, FEATURE_SLICES["positions"].start + 1 : FEATURE_SLICES["positions"].stop : 3] += 0.1
    errors = joint_errors(features, raised)  # every joint 10 cm higher, moving as before: the body, not its path
    assert errors.mpjpe_mm == pytest.approx(100.0) and errors.pose_mpjpe_mm == pytest.approx(100.0)
    assert errors.root_error_mm == pytest.approx(100.0)
    assert errors.velocity_error_mm_s == pytest.approx(0.0, abs=1e-6)


def test_a_drifting_path_is_told_apart_from_the_pose():
    features = Motions(seed=3)[0]["features"].numpy().astype(np.float64)
    frames = len(features)
    sideways = features.copy()
    sideways[:, FEATURE_SLICES["root_velocity"].start] += 0.001  # 1 mm a frame to the body's left
    errors = joint_errors(features, sideways)
    assert errors.pose_mpjpe_mm == 0.0  # the same body, on a path that drifts
    # Each step is 1 mm off (20 mm/s), to the left of wherever the body faces then: after t frames the root is at
    # most t mm from its path (exactly t where the clip does not turn), and every joint with it.
    assert errors.velocity_error_mm_s == pytest.approx(20.0)
    assert 0 < errors.root_error_mm <= (frames - 1) / 2 + 1e-9
    assert errors.mpjpe_mm == pytest.approx(errors.root_error_mm, rel=1e-9)
    turning = features.copy()
    turning[:, FEATURE_SLICES["heading_velocity"]] += 0.01  # a turn of 0.57 degrees a frame more
    errors = joint_errors(features, turning)
    assert errors.pose_mpjpe_mm == 0.0 and errors.mpjpe_mm > errors.root_error_mm > 0


def test_code_statistics():
    assert code_statistics(torch.tensor([5, 5, 5, 5])) == pytest.approx((1.0, 4.0))
    assert code_statistics(torch.tensor([0, 9, 0, 0])) == pytest.approx((0.25, 1.0))


def test_windows_are_fixed_length_and_the_statistics_normalise():
    windows = MotionWindows(seed=2, frames=60)
    item = windows[5]["features"]
    clip = Motions(seed=2)[5]["features"]
    assert item.shape == (60, FEATURES)
    assert any(torch.equal(item, clip[start : start + 60]) for start in range(len(clip) - 59))
    mean, std = feature_statistics(seed=2, clips=32)
    assert mean.shape == std.shape == (FEATURES,) and std.min() >= 1e-2


class TerminatedAt(MotionWindows):
    """Windows that send SIGTERM while the batch of step 4 (samples 12-15, at 4 windows a step) loads."""

    def __getitem__(self, index: int) -> dict:
        if index == 12:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__getitem__(index)


@pytest.mark.parametrize("arm", ["llamagen", "t2m"])
def test_training_resumes_exactly_and_saves_a_loadable_tokenizer(tmp_path, monkeypatch, arm):
    config = arm_config(arm, 64, width=16, depth=1)
    settings = MotionTokenizerTrainingConfig(steps=6, batch_size=4, window=16, statistics_clips=8, warmup_steps=2,
                                             checkpoint_every=2, log_every=1)  # fmt: skip
    whole = train_motion_tokenizer(config, settings, tmp_path / "whole", show_progress=False)

    with monkeypatch.context() as patched:
        patched.setattr(motion_tokenizer, "MotionWindows", TerminatedAt)
        stopped = train_motion_tokenizer(config, settings, tmp_path / "parts", show_progress=False)
    assert (stopped.step, stopped.finished) == (3, False)
    with pytest.raises(ValueError, match="other settings"):
        other = dataclasses.replace(settings, window=8)
        train_motion_tokenizer(config, other, tmp_path / "parts", resume=True, show_progress=False)
    resumed = train_motion_tokenizer(config, settings, tmp_path / "parts", resume=True, show_progress=False)
    assert resumed.finished and resumed.step == 6
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    loaded = load_motion_tokenizer(tmp_path / "whole" / "final.safetensors")
    clips = [Motions(seed=9)[index]["features"] for index in range(3)]
    a, b = evaluate_motion_tokenizer(whole.model, clips), evaluate_motion_tokenizer(loaded, clips)
    assert a.mpjpe_mm == b.mpjpe_mm and torch.equal(a.counts, b.counts)
    assert a.counts.sum() == sum(len(clip) // 4 for clip in clips)


def test_restarts_move_the_unchosen_entries_and_resume_exactly(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(motion_tokenizer, "USAGE_WINDOW", 32)  # full after two steps of 4 windows x 4 tokens
    config = arm_config("llamagen", 64, width=16, depth=1)  # 64 entries, at most 32 chosen in the window
    settings = MotionTokenizerTrainingConfig(steps=6, batch_size=4, window=16, statistics_clips=8, warmup_steps=2,
                                             checkpoint_every=2, log_every=1, restart_dead_codes_every=2)  # fmt: skip
    whole = train_motion_tokenizer(config, settings, tmp_path / "whole", show_progress=False)
    logged = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert "restarted_codes" not in logged[0] and logged[1]["restarted_codes"] >= 32
    plain = train_motion_tokenizer(config, dataclasses.replace(settings, restart_dead_codes_every=None),
                                   tmp_path / "plain", show_progress=False)  # fmt: skip
    assert not torch.equal(plain.model.quantize.codebook(), whole.model.quantize.codebook())

    # Stopped after step 3 (restarts came after steps 2, 4 and 6): the resumed run restarts at 4 and 6 as one
    # never stopped does.
    with monkeypatch.context() as patched:
        patched.setattr(motion_tokenizer, "MotionWindows", TerminatedAt)
        stopped = train_motion_tokenizer(config, settings, tmp_path / "parts", show_progress=False)
    assert (stopped.step, stopped.finished) == (3, False)
    resumed = train_motion_tokenizer(config, settings, tmp_path / "parts", resume=True, show_progress=False)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    with pytest.raises(ValueError, match="option of the llamagen quantizer"):
        train_motion_tokenizer(arm_config("t2m", 64, width=16, depth=1), settings, tmp_path / "t2m")


def test_a_restart_forgets_the_moved_entries_moments_only():
    model = MotionVQ(arm_config("llamagen", 16, width=16, depth=1))
    weight = model.quantize.inner.embedding.weight
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    before = {name: optimizer.state[weight][name].clone() for name in ("exp_avg", "exp_avg_sq")}
    recent = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # entries 4-15 unchosen
    latents = torch.nn.functional.normalize(torch.randn(2, 30, 8), dim=-1)
    moved = motion_tokenizer._restart_dead_codes(model, optimizer, latents, recent, seed=0, step=9)
    assert moved == 12
    for name, values in before.items():
        assert torch.all(optimizer.state[weight][name][4:] == 0), name
        assert torch.equal(optimizer.state[weight][name][:4], values[:4]), name
