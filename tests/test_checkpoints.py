"""Loading is safe (no code runs) and strict (every mismatch named); saving is atomic and self-describing."""

import argparse
import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import llamagen.checkpoints as checkpoints
from llamagen import load_tokenizer, save
from llamagen.tokenizer import VQModel, vq_preset
from llamagen.tokenizer.loading import infer_vq_config


def perturbed(state: dict[str, torch.Tensor], offset: float) -> dict[str, torch.Tensor]:
    return {k: v + offset if v.is_floating_point() and not k.endswith("codebook_used") else v for k, v in state.items()}


def first_conv(model: VQModel) -> torch.Tensor:
    return model.encoder.conv_in.weight


@pytest.mark.parametrize(
    "layout",
    [
        lambda sd: {"model": sd, "optimizer": {}, "steps": 5},  # the original's DDP training script
        lambda sd: sd,  # FSDP: the bare state dict
        lambda sd: {"module": sd},
        lambda sd: {"state_dict": sd},
        lambda sd: {"ema": sd},  # an EMA-only export
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},  # saved through the DDP wrapper
        lambda sd: {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}},  # saved from torch.compile
    ],
    ids=["model", "bare", "module", "state_dict", "ema-only", "ddp-prefix", "compile-prefix"],
)
def test_every_layout_of_the_original_loads(tmp_path, vq_reference_state, layout):
    path = tmp_path / "vq.pt"
    torch.save(layout(vq_reference_state), path)
    model = load_tokenizer(path, device="cpu")
    assert torch.equal(first_conv(model), vq_reference_state["encoder.conv_in.weight"])


def test_ema_weights_are_taken_when_asked(tmp_path, vq_reference_state):
    path = tmp_path / "vq.pt"
    torch.save({"model": vq_reference_state, "ema": perturbed(vq_reference_state, 1.0)}, path)
    plain = load_tokenizer(path, device="cpu")
    ema = load_tokenizer(path, device="cpu", prefer_ema=True)
    assert torch.equal(first_conv(plain), vq_reference_state["encoder.conv_in.weight"])
    assert torch.equal(first_conv(ema), vq_reference_state["encoder.conv_in.weight"] + 1.0)


def test_asking_for_missing_ema_weights_is_an_error(published_vq_file):
    with pytest.raises(ValueError, match="no 'ema' entry"):
        load_tokenizer(published_vq_file, device="cpu", prefer_ema=True)


def test_training_arguments_saved_beside_the_weights_are_accepted(tmp_path, vq_reference_state):
    path = tmp_path / "vq.pt"
    args = argparse.Namespace(vq_model="VQ-16", codebook_size=512, image_size=256)
    torch.save({"model": vq_reference_state, "args": args, "steps": 10}, path)
    assert torch.equal(first_conv(load_tokenizer(path, device="cpu")), vq_reference_state["encoder.conv_in.weight"])


class PlantsAFile:
    """Unpickling this object would create a file: the stand-in for any code a malicious checkpoint runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_checkpoint_that_would_run_code_is_refused_and_its_code_never_runs(tmp_path, vq_reference_state, writer):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    payload = {"model": vq_reference_state, "extra": PlantsAFile(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as file:
            pickle.dump(payload, file)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"refused|not a readable PyTorch file"):
        load_tokenizer(path, device="cpu")
    assert not marker.exists()


def test_torch_save_payload_is_refused_with_an_explanation(tmp_path, vq_reference_state):
    path = tmp_path / "evil.pt"
    torch.save({"model": vq_reference_state, "extra": PlantsAFile(tmp_path / "x")}, path)
    with pytest.raises(ValueError, match="would run code when unpickled"):
        load_tokenizer(path, device="cpu")


def test_a_wrong_config_names_the_mis_shaped_keys(published_vq_file):
    with pytest.raises(
        ValueError,
        match=r"mis-shaped key\(s\): quantize\.embedding\.weight: file \(512, 8\), model \(1024, 8\)",
    ):
        load_tokenizer(published_vq_file, config=vq_preset("VQ-4-tiny", codebook_size=1024), device="cpu")


def test_missing_and_unexpected_keys_are_each_named(tmp_path, vq_reference_state):
    state = dict(vq_reference_state)
    del state["decoder.conv_out.bias"]
    state["decoder.extra_layer.weight"] = torch.zeros(3)
    path = tmp_path / "vq.pt"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError) as error:
        load_tokenizer(path, config="VQ-4-tiny", device="cpu")
    message = str(error.value)
    assert "1 missing key(s): decoder.conv_out.bias" in message
    assert "1 unexpected key(s): decoder.extra_layer.weight" in message


def test_a_config_of_another_architecture_is_refused_not_half_loaded(published_vq_file):
    with pytest.raises(ValueError, match=r"missing key\(s\).*and \d+ more"):
        load_tokenizer(published_vq_file, config="VQ-16", device="cpu")


def test_the_usage_window_is_optional_either_way(tmp_path, vq_reference_state):
    without = {k: v for k, v in vq_reference_state.items() if k != "quantize.codebook_used"}
    path = tmp_path / "no_usage.pt"
    torch.save({"model": without}, path)
    assert load_tokenizer(path, device="cpu").codebook_usage() == 0.0
    no_tracking = vq_preset("VQ-4-tiny", codebook_show_usage=False)
    model = load_tokenizer(tmp_path / "no_usage.pt", config=no_tracking, device="cpu")
    assert model.quantize.codebook_used is None


def test_project_checkpoints_carry_their_config(tmp_path):
    torch.manual_seed(0)
    model = VQModel(vq_preset("VQ-4-tiny", codebook_size=256, commit_loss_beta=0.5)).eval()
    path = save(model, tmp_path / "sub" / "tok.safetensors")
    loaded = load_tokenizer(path, device="cpu")
    assert loaded.config == model.config
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded.tokenize(images), model.tokenize(images))
    with safe_open(path, "pt") as file:
        assert file.metadata()["kind"] == "vq"
        assert file.metadata()["format"] == "llamagen"
    assert [p.name for p in path.parent.iterdir()] == ["tok.safetensors"]  # no temporary left behind


def test_bf16_assets_keep_exact_usage_counts(tmp_path):
    model = VQModel(vq_preset("VQ-4-tiny")).train()
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64) * 2 - 1)
    path = save(model, tmp_path / "tok.safetensors", weights_dtype=torch.bfloat16)
    with safe_open(path, "pt") as file:
        assert file.get_tensor("encoder.conv_in.weight").dtype == torch.bfloat16
        assert torch.equal(file.get_tensor("quantize.codebook_used"), model.quantize.codebook_used)
    loaded = load_tokenizer(path, device="cpu")
    assert loaded.dtype == torch.float32
    assert loaded.codebook_usage() == model.codebook_usage()
    assert load_tokenizer(path, device="cpu", dtype="bf16").dtype == torch.bfloat16


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    model = VQModel(vq_preset("VQ-4-tiny"))
    path = save(model, tmp_path / "tok.safetensors")
    before = path.read_bytes()

    def write_half_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as file:
            file.write(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save(VQModel(vq_preset("VQ-4-tiny")), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["tok.safetensors"]


def test_a_generator_checkpoint_is_not_taken_for_a_tokenizer(tmp_path, monkeypatch):
    model = VQModel(vq_preset("VQ-4-tiny"))
    monkeypatch.setattr(model, "checkpoint_kind", "gpt")
    path = save(model, tmp_path / "gpt.safetensors")
    with pytest.raises(ValueError, match="is a 'gpt' checkpoint, not a tokenizer"):
        load_tokenizer(path, device="cpu")


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"", "empty.pt", "empty file"),
        (b"this is not a checkpoint", "text.pt", "not a readable PyTorch file"),
        (b"this is not a checkpoint", "text.safetensors", "not a readable safetensors file"),
    ],
)
def test_unreadable_files_get_clear_errors(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_tokenizer(path, device="cpu")


def test_a_file_without_weights_is_refused(tmp_path):
    path = tmp_path / "nothing.pt"
    torch.save({"steps": 3, "optimizer": {}}, path)
    with pytest.raises(ValueError, match="no state dict under"):
        load_tokenizer(path, device="cpu")


def test_an_unknown_source_lists_the_embedded_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file or embedded model named 'no-such-model'"):
        load_tokenizer("no-such-model")
    with pytest.raises(ValueError, match="is not a file"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("preset", ["VQ-16", "VQ-8", "VQ-8-small", "VQ-4-tiny"])
def test_the_architecture_is_read_off_the_weights(preset):
    config = vq_preset(preset)
    assert infer_vq_config(VQModel(config).state_dict(), "test") == config


def test_cuda_asked_for_without_a_gpu_is_an_error(published_vq_file):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no usable CUDA GPU"):
        load_tokenizer(published_vq_file, device="cuda")


def test_an_unknown_dtype_is_an_error(published_vq_file):
    with pytest.raises(ValueError, match="unknown dtype"):
        load_tokenizer(published_vq_file, device="cpu", dtype="float8")


def test_checking_a_checkpoint_against_the_meta_skeleton_computes_nothing():
    """The skeleton on the meta device only carries shapes: a value computed on it would import torch's compiler,
    a second added to every command that loads a tokenizer."""
    script = (
        "import sys\n"
        "from llamagen import load_tokenizer\n"
        "load_tokenizer('shapes-vq', device='cpu')\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
