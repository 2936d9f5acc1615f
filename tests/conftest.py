import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llamagen.tokenizer import VQModel, vq_preset

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def digit_codes(tmp_path_factory) -> Path:
    """A codes file of 40 digits, five crops each, by a random tokenizer (`helpers.write_digit_codes`)."""
    from helpers import write_digit_codes

    path = tmp_path_factory.mktemp("codes") / "digits.safetensors"
    write_digit_codes(path)
    return path


@pytest.fixture(scope="session")
def vq_reference() -> dict[str, torch.Tensor]:
    """Weights, inputs and outputs of the original implementation's small tokenizer."""
    return load_file(FIXTURES / "vq_small.safetensors")


@pytest.fixture(scope="session")
def vq_reference_state(vq_reference) -> dict[str, torch.Tensor]:
    return {key.removeprefix("state."): value for key, value in vq_reference.items() if key.startswith("state.")}


@pytest.fixture(scope="session")
def official_keys() -> dict[str, dict[str, list[int]]]:
    return json.loads((FIXTURES / "official_state_dict_keys.json").read_text())


@pytest.fixture
def reference_tokenizer(vq_reference_state) -> VQModel:
    """The reference weights in a VQModel built from the matching preset."""
    model = VQModel(vq_preset("VQ-4-tiny")).eval()
    model.load_state_dict(vq_reference_state)
    return model


@pytest.fixture
def published_vq_file(tmp_path, vq_reference_state) -> Path:
    """The reference weights saved the way the original's training script saves a tokenizer."""
    path = tmp_path / "vq_small.pt"
    torch.save({"model": vq_reference_state, "optimizer": {"state": {}}, "steps": 100}, path)
    return path


def reference_gpt_config(name: str):
    """The GPTConfig of a reference file, from the original's field names in its metadata."""
    from safetensors import safe_open

    from llamagen.gpt import GPTConfig

    with safe_open(FIXTURES / f"{name}.safetensors", "pt") as file:
        original = json.loads(file.metadata()["config"])
    fields = (
        "dim",
        "n_layer",
        "n_head",
        "n_kv_head",
        "vocab_size",
        "block_size",
        "model_type",
        "cls_token_num",
        "num_classes",
        "caption_dim",
        "multiple_of",
        "rope_base",
        "norm_eps",
    )
    return GPTConfig(**{field: original[field] for field in fields})


@pytest.fixture(params=["gpt_c2i_small", "gpt_t2i_small"])
def gpt_reference(request):
    """(model with the original's weights, tensors of the reference file) for each conditioning kind."""
    from llamagen.gpt import GPT

    tensors = load_file(FIXTURES / f"{request.param}.safetensors")
    model = GPT(reference_gpt_config(request.param)).eval()
    model.load_state_dict({k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")})
    return model, tensors
