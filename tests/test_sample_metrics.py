"""`llamagen eval samples`: the standard measures on cases with a known answer, and read by the judges and by
Inception-v3."""

import json

import numpy as np
import pytest
import torch

from llamagen.cli import main
from llamagen.evaluation.judges import held_out
from llamagen.evaluation.sample_metrics import InceptionReader, Readings, compare, inception_score, read_set
from llamagen.images import tensor_to_uint8


def test_the_inception_score_of_known_readings():
    assert inception_score(torch.full((12, 5), 0.2)) == pytest.approx(1.0)  # every image reads alike
    one_hot = torch.eye(4).repeat(3, 1)  # each image one class for sure, the 4 classes equally common
    assert inception_score(one_hot) == pytest.approx(4.0)
    # Splits take their marginals apart: two splits of one class each score 1, though the whole set scores 2.
    two_kinds = torch.cat([torch.eye(2)[:1].repeat(6, 1), torch.eye(2)[1:].repeat(6, 1)])
    assert inception_score(two_kinds) == pytest.approx(2.0)
    assert inception_score(two_kinds, split=6) == pytest.approx(1.0)


def test_a_set_compared_with_itself_and_nested_sets():
    generator = torch.Generator().manual_seed(0)
    pool = torch.randn(200, 8, generator=generator)
    same = Readings(pool, pool[:, :4], torch.softmax(pool, -1))
    results = compare(same, same)
    assert abs(results["fid"]) < 1e-6 and abs(results["sfid"]) < 1e-6
    assert results["precision"] == results["recall"] == 1.0
    # Samples from one half of the reference's space: all of them inside it, half of it covered.
    real = Readings(torch.cat([pool[:100], pool[100:] + 50.0]), None, None)
    inside = compare(Readings(pool[:100], None, None), real)
    assert inside["precision"] == 1.0 and inside["recall"] == pytest.approx(0.5, abs=0.02)
    assert "sfid" not in inside and "inception_score" not in inside


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Two disjoint sets of held-out real shapes, and one of noise, as ADM-format .npz files."""
    folder = tmp_path_factory.mktemp("sets")
    real, _ = held_out("shapes", 240)
    noise = np.random.default_rng(0).integers(0, 256, (120, 64, 64, 3), dtype=np.uint8)
    for name, images in (("a", tensor_to_uint8(real[:120])), ("b", tensor_to_uint8(real[120:])), ("noise", noise)):
        np.savez(folder / f"{name}.npz", arr_0=images)
    return folder


def test_a_references_statistics_stand_for_its_readings():
    from llamagen.evaluation.fid import gaussian_statistics

    generator = torch.Generator().manual_seed(1)
    real = Readings(torch.randn(300, 6, generator=generator), torch.randn(300, 4, generator=generator), None)
    fake = Readings(torch.randn(200, 6, generator=generator) + 0.5, torch.randn(200, 4, generator=generator), None)
    (mu, sigma), (mu_s, sigma_s) = (gaussian_statistics(x.double().numpy()) for x in (real.pool, real.spatial))
    statistics = {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}
    assert compare(fake, real, statistics=statistics) == pytest.approx(compare(fake, real), rel=1e-9)
    shifted = compare(fake, real, statistics={**statistics, "mu": mu - 1})
    assert shifted["fid"] > compare(fake, real)["fid"] + 5  # read from the statistics, not the readings


def test_the_judge_tells_real_shapes_from_noise(sets, tmp_path):
    """A control of the measures: a second set of real shapes against the first, and noise against it."""
    out = tmp_path / "real.json"
    assert main(["eval", "samples", str(sets / "a.npz"), "--reference", str(sets / "b.npz"), "--judge", "shapes",
                 "--out", str(out)]) == 0  # fmt: skip
    real = json.loads(out.read_text())
    assert main(["eval", "samples", str(sets / "noise.npz"), "--reference", str(sets / "b.npz"), "--judge",
                 "shapes", "--out", str(out)]) == 0  # fmt: skip
    noise = json.loads(out.read_text())
    assert real["reader"] == "shapes-judge" and real["images"] == real["reference_images"] == 120
    assert noise["fid"] > 2 * real["fid"] and noise["recall"] < 0.05 < 0.5 < real["recall"]
    assert 40 >= real["inception_score"] > 2 * noise["inception_score"]  # at most the 40 classes


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "read the images with --inception WEIGHTS or with --judge shapes|digits, one of them"),
        (["--judge", "shapes", "--inception", "weights.pth"], "one of them"),
    ],
)
def test_the_reader_must_be_named_once(sets, capsys, extra, message):
    assert main(["eval", "samples", str(sets / "a.npz"), "--reference", str(sets / "b.npz"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_file_that_is_not_a_sample_batch_is_refused(tmp_path, sets, capsys):
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    assert main(["eval", "samples", str(tmp_path / "other.npz"), "--reference", str(sets / "b.npz"), "--judge",
                 "shapes"]) == 2  # fmt: skip
    assert "has no arr_0: not a sample batch" in capsys.readouterr().err


def test_inception_reads_pool_spatial_and_class_features(tmp_path):
    """torchvision's Inception-v3 (random weights here, in the file layout of the real ones): 2048 pool features,
    the first 7 channels of the 17x17 1x1 branch of the mixed_6 block, and 1000 class probabilities."""
    from torchvision.models import inception_v3

    weights = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    readings = read_set(InceptionReader(weights), images, batch_size=2)
    assert readings.pool.shape == (3, 2048) and readings.spatial.shape == (3, 7 * 17 * 17)
    assert readings.probabilities.shape == (3, 1000)
    assert torch.allclose(readings.probabilities.sum(1), torch.ones(3))


@pytest.mark.slow
def test_two_processes_under_torchrun_measure_what_one_does(sets, tmp_path):
    import os
    import subprocess
    import sys

    argv = ["eval", "samples", str(sets / "a.npz"), "--reference", str(sets / "b.npz"), "--judge", "shapes"]
    assert main([*argv, "--out", str(tmp_path / "one.json")]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "llamagen", *argv, "--out", str(tmp_path / "two.json")]  # fmt: skip
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one.keys() == two.keys() and all(
        two[key] == pytest.approx(one[key], rel=1e-6) for key in one if key not in ("reader", "fid_reference")
    )


@pytest.mark.slow
def test_shapes_c2i_sampled_at_1000_images_reads_close_to_real_shapes(tmp_path):
    """The two commands end to end: 25 images of each of shapes-c2i's 40 classes at its card's guidance, against
    1,000 held-out shapes, beside the floor (1,000 real training shapes against the same). The judge sees nearly
    real shapes: precision, recall and Inception Score near the floor's, FID above it (the values measured at
    2,000 images: benchmarks/results/sample_eval_shapes-c2i_*.md)."""
    from llamagen.evaluation.judges import judge_data, labelled

    reference = tmp_path / "held_out.npz"
    np.savez(reference, arr_0=tensor_to_uint8(held_out("shapes", 1000)[0]))
    training = judge_data("shapes", train=True)
    np.savez(tmp_path / "real.npz", arr_0=tensor_to_uint8(labelled([training[i] for i in range(1000)])[0]))
    assert main(["sample", "--gpt", "shapes-c2i", "--per-class", "25", "--out", str(tmp_path / "samples.npz")]) == 0
    measured = {}
    for name in ("samples", "real"):
        out = tmp_path / f"{name}.json"
        assert main(["eval", "samples", str(tmp_path / f"{name}.npz"), "--reference", str(reference), "--judge",
                     "shapes", "--out", str(out)]) == 0  # fmt: skip
        measured[name] = json.loads(out.read_text())
    samples, real = measured["samples"], measured["real"]
    assert samples["images"] == real["images"] == samples["reference_images"] == 1000
    assert real["fid"] < samples["fid"] < 4 * real["fid"]
    assert samples["precision"] > 0.9 and samples["recall"] > 0.85 and real["recall"] > 0.9
    assert real["inception_score"] - 4 < samples["inception_score"] <= 40
