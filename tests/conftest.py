import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llamagen.tokenizer import VQModel, vq_preset

FIXTURES = Path(__file__).parent / "fixtures"


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
