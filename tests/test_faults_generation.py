"""Misuse of generation and loading, as a new user commits it: each gives the right answer or one clear line
(exit status 2 from the command line), never a wrong result, a traceback or an allocation the file lied into."""

import json
import threading

import pytest
import torch
from helpers import one_line_error, small
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from llamagen import load_gpt, save
from llamagen.cli import main
from llamagen.generation import generate
from llamagen.gpt import GPT


def test_threads_generating_on_one_model_each_get_what_they_get_alone():
    """The model has one KV cache; threads that shared it unguarded overwrote each other's keys and values."""
    model = small(block_size=64)
    jobs = [(seed, torch.arange(rows) % 5) for seed, rows in ((0, 1), (1, 3), (2, 2), (3, 1))]

    def tokens(seed, cond):
        return generate(model, cond, cfg_scale=2.0, generator=torch.Generator().manual_seed(seed))

    alone = [tokens(seed, cond) for seed, cond in jobs]
    together: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(jobs))}
    start = threading.Barrier(len(jobs))

    def work(i):
        start.wait()
        together[i].extend(tokens(*jobs[i]) for _ in range(3))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, expected in enumerate(alone):
        assert len(together[i]) == 3 and all(torch.equal(got, expected) for got in together[i]), i


@pytest.mark.parametrize(
    ("lie", "message"),
    [
        ({"n_layer": 3000}, "holds 2 layer\\(s\\), but the config asks for 3000"),
        ({"dim": 8192, "n_head": 64}, "does not match the model's configuration: 18 mis-shaped key"),
    ],
)
def test_a_config_that_lies_about_the_weights_is_refused_before_anything_is_allocated(tmp_path, monkeypatch, lie,
                                                                                     message):  # fmt: skip
    """A 4 MB file whose config claims 3,000 layers, or layers 128 times wider: nothing is built on a device, at
    most a skeleton on the meta device, which allocates nothing, and the mismatch is named."""
    path = save(small(), tmp_path / "honest.safetensors")
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    metadata["config"] = json.dumps({**json.loads(metadata["config"]), **lie})
    save_file(load_file(path), tmp_path / "lying.safetensors", metadata=metadata)
    built_on = []
    build = GPT.__init__

    def recording(self, config):
        built_on.append(torch.empty(0).device)
        build(self, config)

    monkeypatch.setattr(GPT, "__init__", recording)
    with pytest.raises(ValueError, match=message):
        load_gpt(tmp_path / "lying.safetensors")
    assert all(device == torch.device("meta") for device in built_on)


def test_weights_that_are_not_numbers_are_refused(tmp_path):
    model = small()
    with torch.no_grad():
        model.layers[1].attention.wo.weight[0, 0] = float("nan")
    save(model, tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match=r"NaN or infinite weights: 1 tensor.*layers\.1\.attention\.wo\.weight"):
        load_gpt(tmp_path / "nan.safetensors")


def test_files_are_read_by_what_they_hold_and_refused_without_advice_to_run_their_code(tmp_path):
    model = small()
    renamed = tmp_path / "project_file.pt"
    renamed.write_bytes(save(model, tmp_path / "m.safetensors").read_bytes())
    assert torch.equal(load_gpt(renamed).output.weight, model.output.weight)

    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    torch.save({"model": model.state_dict(), "extra": Payload()}, tmp_path / "pickle.pt")
    with pytest.raises(ValueError, match="run code when unpickled") as refused:
        load_gpt(tmp_path / "pickle.pt")
    assert "weights_only" not in str(refused.value) and len(str(refused.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is an empty file"),
        (b"\x00garbage" * 50, "is not a readable"),
        ("truncated", "is not a readable safetensors file"),
    ],
)
def test_a_broken_generator_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "broken.safetensors"
    if content == "truncated":
        content = save(small(), tmp_path / "whole.safetensors").read_bytes()[:5000]
    path.write_bytes(content)
    error = one_line_error(capsys, "generate", "--gpt", str(path), "--class", "0", "--out", str(tmp_path / "g.png"))
    assert message in error


def test_the_metadata_of_a_broken_file_is_one_line(tmp_path):
    from llamagen.pipeline import generator_metadata

    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        generator_metadata(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("garbage{", "is not valid JSON"),
        ("42", "holds a JSON int, not an object"),
        ('"GPT-B"', "holds a JSON str, not an object"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_a_config_file_that_is_no_config_is_one_line(tmp_path, capsys, text, message):
    config = tmp_path / "config.json"
    config.write_text(text)
    error = one_line_error(capsys, "generate", "--gpt", "shapes-c2i", "--class", "0", "--gpt-config", str(config),
                           "--out", str(tmp_path / "g.png"))  # fmt: skip
    assert message in error


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--cfg-scale", "nan"], "cfg_scale must be >= 0"),
        (["--temperature", "nan"], "temperature must be >= 0"),
        (["--seed", str(2**70)], "seed must be a whole number from 0 to 2**64 - 1"),
        (["--class", "1.5"], "unknown class '1.5'"),
        (["--out", "/proc/grid.png"], "cannot be written"),
    ],
)
def test_bad_generation_options_are_one_line_before_any_work(tmp_path, capsys, option, message):
    argv = {"--gpt": "shapes-c2i", "--class": "0", "--out": str(tmp_path / "g.png")}
    argv.update({option[0]: option[1]})
    error = one_line_error(capsys, "generate", *[part for pair in argv.items() for part in pair])
    assert message in error
    assert not (tmp_path / "g.png").exists()


def test_bad_values_for_the_library_are_refused_with_what_to_give():
    from llamagen.pipeline import load_pipeline

    model = small()
    with pytest.raises(ValueError, match=r"top_k must be a whole number of tokens, got 2\.5"):
        generate(model, torch.tensor([1]), top_k=2.5)
    with pytest.raises(ValueError, match=r"cond must be a tensor .*got a list"):
        generate(model, [1, 2])
    pipe = load_pipeline("shapes-c2i")
    for label in (True, 1.5):
        with pytest.raises(ValueError, match=r"give a class id .* or a class name"):
            pipe(class_labels=[label])
    for seed in (2**70, -1, 1.5):
        with pytest.raises(ValueError, match="seed must be a whole number"):
            pipe(class_labels=[0], seed=seed)


def test_ssim_of_an_image_too_small_for_its_window_says_so(tmp_path, capsys):
    Image.new("RGB", (1, 32), "red").save(tmp_path / "thin.png")
    assert main(["reconstruct", str(tmp_path / "thin.png"), "--tokenizer", "shapes-vq", "--out",
                 str(tmp_path / "r.png")]) == 0  # fmt: skip
    assert "SSIM        n/a (image under 11 pixels)" in capsys.readouterr().out


def test_a_broken_open_clip_file_is_one_line(tmp_path):
    from llamagen.text import load_text_encoder

    (tmp_path / "clip.bin").write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(ValueError, match="is not a readable ViT-B-32 checkpoint") as refused:
        load_text_encoder(f"open_clip:ViT-B-32:{tmp_path / 'clip.bin'}")
    assert len(str(refused.value).splitlines()) == 1
