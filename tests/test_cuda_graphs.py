"""Decoding steps in fixed shapes, the step a CUDA graph replays: the same generations as the usual steps. The
graphs themselves need a GPU; their tests run where there is one."""

import pytest
import torch
from helpers import condition, decode, decode_module_by_module, small

from llamagen import generate
from llamagen.gpt import GPT
from llamagen.gpt.cuda_graphs import use_cuda_graphs

needs_a_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@pytest.fixture
def fixed_shape_steps(monkeypatch):
    """generate's steps by `decode_step_at`, the position a tensor, module by module."""
    decode_module_by_module(monkeypatch)
    usual = GPT.decode_step
    monkeypatch.setattr(GPT, "decode_step", lambda model, tokens, position: decode(model, tokens, position, True))
    return usual


@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
def test_fixed_shape_steps_generate_what_the_usual_steps_do(model_type, fixed_shape_steps, monkeypatch):
    """Guidance that ends part-way (the first rows of the cache continue alone) and padded captions."""
    model = small(model_type=model_type, n_kv_head=2, cls_token_num=1 if model_type == "c2i" else 6, seed=3)
    cond, cond_mask = condition(model, batch=2)
    fixed = generate(model, cond, cond_mask, cfg_scale=2.0, cfg_interval=4, top_k=1)
    monkeypatch.setattr(GPT, "decode_step", fixed_shape_steps)
    assert torch.equal(fixed, generate(model, cond, cond_mask, cfg_scale=2.0, cfg_interval=4, top_k=1))


def test_cuda_graphs_serve_only_a_gpu_model_without_gradients():
    model = small()
    with torch.no_grad():
        assert not use_cuda_graphs(model)  # on the CPU
        if torch.cuda.is_available():
            assert use_cuda_graphs(model.cuda())
    if torch.cuda.is_available():
        assert not use_cuda_graphs(model)  # gradients enabled


@needs_a_gpu
@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
def test_cuda_graphs_generate_what_the_modules_do(model_type, monkeypatch):
    """Replayed graphs against steps through the modules, on the GPU, greedy and sampled with one seed: also when
    guidance ends part-way (a second graph, for half the rows) and with padded captions."""
    model = small(model_type=model_type, n_kv_head=2, cls_token_num=1 if model_type == "c2i" else 6, seed=4).cuda()
    cond, cond_mask = condition(model, batch=2)
    cond, cond_mask = cond.cuda(), None if cond_mask is None else cond_mask.cuda()

    def both(**options):
        return generate(model, cond, cond_mask, cfg_scale=2.0, cfg_interval=4, **options)

    graphed = [both(top_k=1), both(top_k=5, generator=torch.Generator("cuda").manual_seed(0))]
    decode_module_by_module(monkeypatch)
    assert torch.equal(graphed[0], both(top_k=1))
    assert torch.equal(graphed[1], both(top_k=5, generator=torch.Generator("cuda").manual_seed(0)))
