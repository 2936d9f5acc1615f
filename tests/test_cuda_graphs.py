"""Decoding steps in fixed shapes, the step a CUDA graph replays: the same generations as the usual steps. The
graphs themselves need a GPU; their tests run where there is one."""

import pytest
import torch
from helpers import cached_logits, condition, decode, decode_module_by_module, small

from llamagen import generate
from llamagen.gpt import GPT
from llamagen.gpt.cuda_graphs import graphed_decode_steps, use_cuda_graphs

needs_a_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@pytest.fixture
def fixed_shape_steps(monkeypatch):
    """generate's steps by `decode_step_at` (the position a tensor), eagerly and module by module; returns the
    usual `GPT.decode_step`."""
    decode_module_by_module(monkeypatch)
    usual = GPT.decode_step
    monkeypatch.setattr(GPT, "decode_step", lambda model, tokens, position: decode(model, tokens, position, True))
    return usual


def small_of(model_type: str, seed: int) -> GPT:
    return small(model_type=model_type, n_kv_head=2, cls_token_num=1 if model_type == "c2i" else 6, seed=seed)


@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
def test_fixed_shape_steps_generate_what_the_usual_steps_do(model_type, fixed_shape_steps, monkeypatch):
    """Guidance that ends part-way (the first rows of the cache continue alone) and padded captions."""
    model = small_of(model_type, seed=3)
    cond, cond_mask = condition(model, batch=2)
    fixed = generate(model, cond, cond_mask, cfg_scale=2.0, cfg_interval=4, top_k=1)
    monkeypatch.setattr(GPT, "decode_step", fixed_shape_steps)
    assert torch.equal(fixed, generate(model, cond, cond_mask, cfg_scale=2.0, cfg_interval=4, top_k=1))


@pytest.mark.slow
def test_the_compiled_fixed_shape_step_generates_what_it_does_eagerly(fixed_shape_steps, monkeypatch):
    """The step that the GPU's graphs record with compile, traced whole (no graph breaks) and run on the CPU."""
    model = small_of("t2i", seed=6)
    cond, cond_mask = condition(model, batch=2)
    eager = generate(model, cond, cond_mask, cfg_scale=2.0, cfg_interval=4, top_k=1)
    compiled = torch.compile(GPT.decode_step_at, fullgraph=True)

    def compiled_step(model, tokens, position):
        return compiled(model, tokens, torch.tensor([position]), model.visible_keys)

    monkeypatch.setattr(GPT, "decode_step", compiled_step)
    assert torch.equal(eager, generate(model, cond, cond_mask, cfg_scale=2.0, cfg_interval=4, top_k=1))


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
@pytest.mark.usefixtures("fixed_shape_steps")
def test_cuda_graphs_replay_what_the_fixed_shape_step_computes(model_type, monkeypatch):
    """Generations from replayed graphs against the same steps run eagerly, token for token, greedy and sampled
    with one seed: guidance ending part-way (a second graph, for half the rows), and a second generation, whose
    different conditions (captions of other lengths) the graphs recorded for the first must read."""
    model = small_of(model_type, seed=4).cuda()

    def generations():
        tokens = []
        for seed in (0, 1):
            cond, cond_mask = condition(model, batch=2, seed=seed)
            if cond_mask is not None:
                cond_mask = (cond_mask if seed == 0 else cond_mask.flip(0)).cuda()  # the padding in the other row
            cond = cond.cuda()
            for options in ({"top_k": 1}, {"top_k": 5, "generator": torch.Generator("cuda").manual_seed(seed)}):
                tokens.append(generate(model, cond, cond_mask, cfg_scale=2.0, cfg_interval=4, **options))
        return tokens

    eager = generations()
    monkeypatch.setattr("llamagen.gpt.sampling.use_cuda_graphs", use_cuda_graphs)  # undo decode_module_by_module
    graphed = generations()
    for expected, replayed in zip(eager, graphed, strict=True):
        assert torch.equal(expected, replayed)


@needs_a_gpu
@pytest.mark.parametrize(("dtype", "atol", "rtol"), [(torch.float32, 1e-4, 0), (torch.bfloat16, 0.1, 0.05)])
@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graphs_logits_are_the_modules(model_type, dtype, atol, rtol, compile):
    """The replayed step's logits, compiled or not, against the modules' step over the cache's first positions
    only."""
    model = small_of(model_type, seed=5).cuda().to(dtype)
    cond, cond_mask = condition(model, batch=2)
    cond, cond_mask = cond.cuda(), None if cond_mask is None else cond_mask.cuda()
    tokens = torch.randint(0, 97, (2, 15), generator=torch.Generator().manual_seed(1)).cuda()
    usual = cached_logits(model, tokens, cond, cond_mask)
    with torch.no_grad():
        model.setup_cache(2)
        steps, replayed = graphed_decode_steps(model, compile), [model.prefill(cond, cond_mask)]
        for i in range(tokens.shape[1]):
            replayed.append(steps(tokens[:, i : i + 1], model.prefix_length + i))
    torch.testing.assert_close(torch.stack(replayed, 1), usual, atol=atol, rtol=rtol)
