"""load_gpt: published layouts, the architecture read off the weights, project files, strictness."""

import argparse
import dataclasses

import pytest
import torch
from conftest import FIXTURES, reference_gpt_config
from safetensors.torch import load_file

from llamagen import load_gpt, load_tokenizer, save
from llamagen.gpt import GPT, gpt_preset
from llamagen.tokenizer import VQModel, vq_preset


@pytest.fixture
def c2i_reference():
    tensors = load_file(FIXTURES / "gpt_c2i_small.safetensors")
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    return state, tensors


@pytest.mark.parametrize(
    "layout",
    [
        lambda sd: {"model": sd, "optimizer": {}, "steps": 9, "args": argparse.Namespace(gpt_model="GPT-B")},
        lambda sd: sd,  # FSDP's consolidated state dict (--from-fsdp in the original)
    ],
    ids=["ddp", "fsdp"],
)
def test_published_layouts_load_and_reproduce_the_reference(tmp_path, c2i_reference, layout):
    state, ref = c2i_reference
    path = tmp_path / "c2i.pt"
    torch.save(layout(state), path)
    # Depth 2 and width 64 match no preset, so the head count is given; the rest is read off the shapes.
    model = load_gpt(path, config={"n_head": 4, "block_size": 16}, device="cpu")
    expected = reference_gpt_config("gpt_c2i_small")
    for field in ("dim", "n_layer", "n_head", "n_kv_head", "vocab_size", "num_classes", "cls_token_num", "model_type"):
        assert getattr(model.config, field) == getattr(expected, field), field
    assert model.config.ffn_hidden_dim == expected.ffn_hidden_dim
    torch.testing.assert_close(model(ref["input.tokens"][:, :-1], ref["input.cond"]), ref["expected.logits"])


def test_derived_entries_the_original_may_have_saved_are_dropped(tmp_path, c2i_reference):
    state, _ = c2i_reference
    extra = dict(state)
    extra["freqs_cis"] = torch.zeros(17, 8, 2)
    extra["layers.0.attention.kv_cache.k_cache"] = torch.zeros(2, 4, 24, 16)
    extra["layers.0.attention.kv_cache.v_cache"] = torch.zeros(2, 4, 24, 16)
    path = tmp_path / "c2i.pt"
    torch.save({"model": extra}, path)
    model = load_gpt(path, config={"n_head": 4, "block_size": 16}, device="cpu")
    assert torch.equal(model.tok_embeddings.weight, state["tok_embeddings.weight"])


def test_a_head_count_no_preset_explains_is_asked_for(tmp_path, c2i_reference):
    path = tmp_path / "c2i.pt"
    torch.save({"model": c2i_reference[0]}, path)
    with pytest.raises(ValueError, match="no preset has 2 layers of width 64"):
        load_gpt(path, device="cpu")


def test_a_wrong_preset_names_the_mismatched_keys(tmp_path, c2i_reference):
    path = tmp_path / "c2i.pt"
    torch.save({"model": c2i_reference[0]}, path)
    layers = reference_gpt_config("gpt_c2i_small").n_layer
    wrong = gpt_preset("GPT-XS", num_classes=20, vocab_size=512, block_size=16, n_layer=layers)
    with pytest.raises(ValueError, match=r"mis-shaped key\(s\): cls_embedding.embedding_table.weight"):
        load_gpt(path, config=wrong, device="cpu")
    with pytest.raises(ValueError, match=rf"holds {layers} layer\(s\), but the config asks for {layers + 1}"):
        load_gpt(path, config=dataclasses.replace(wrong, n_layer=layers + 1), device="cpu")


def test_project_files_carry_their_config_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GPT(gpt_preset("GPT-XS", n_kv_head=2, model_type="t2i", cls_token_num=5, caption_dim=12)).eval()
    path = save(model, tmp_path / "g.safetensors", weights_dtype=torch.bfloat16)
    loaded = load_gpt(path, device="cpu")
    assert loaded.config == model.config
    reloaded = load_gpt(path, device="cpu", dtype="bf16")
    assert reloaded.dtype == torch.bfloat16 and reloaded.freqs_cis.dtype == torch.float32


def test_kinds_are_not_confused(tmp_path):
    vq_path = save(VQModel(vq_preset("VQ-4-tiny")), tmp_path / "vq.safetensors")
    gpt_path = save(GPT(gpt_preset("GPT-XS")), tmp_path / "gpt.safetensors")
    with pytest.raises(ValueError, match="'vq' checkpoint, not a generator"):
        load_gpt(vq_path)
    with pytest.raises(ValueError, match="'gpt' checkpoint, not a tokenizer"):
        load_tokenizer(gpt_path)
