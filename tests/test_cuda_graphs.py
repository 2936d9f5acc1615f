"""Decoding steps replayed from CUDA graphs (`llamagen.fast.cuda_graphs`): they generate what the model's step
does. The step a graph records is the model's own, with the position a tensor; that it computes what the full
forward does is checked in test_gpt_model.py. The graphs themselves need a GPU; their tests run where there is
one."""

import pytest
import torch
from helpers import cached_logits, condition, small

from llamagen import generate
from llamagen.fast import cuda_graphs
from llamagen.gpt import GPT

needs_a_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def small_of(model_type: str, seed: int) -> GPT:
    return small(model_type=model_type, n_kv_head=2, cls_token_num=1 if model_type == "c2i" else 6, seed=seed)


@pytest.mark.slow
def test_the_step_compiles_whole_with_the_position_a_tensor(monkeypatch):
    """The step that the GPU's graphs record with compile, traced whole (no graph breaks) and run on the CPU.
    Tracing is what is checked here, so the traced graph runs through autograd's tracer without inductor's
    code generation (`aot_eager`), which took most of this test's time on the CPU."""
    model = small_of("t2i", seed=6)
    cond, cond_mask = condition(model, batch=2)
    options = {"cfg_scale": 2.0, "cfg_interval": 4, "top_k": 1, "decoding": "plain"}
    eager = generate(model, cond, cond_mask, **options)
    compiled = torch.compile(GPT.decode_step, fullgraph=True, backend="aot_eager")

    def compiled_step(model, tokens, position):
        return compiled(model, tokens, torch.tensor([position]))

    monkeypatch.setattr(GPT, "decode_step", compiled_step)
    assert torch.equal(
        eager, generate(model, cond, cond_mask, cfg_scale=2.0, cfg_interval=4, top_k=1, decoding="plain")
    )


def test_the_window_compiles_whole_with_its_start_a_tensor():
    """Parallel decoding's step as the GPU's graphs record it with compile: traced whole with the start a
    tensor, and computing what it computes with the start an int (`aot_eager`, as above)."""
    model = small_of("t2i", seed=6)
    cond, cond_mask = condition(model, batch=2)
    tokens = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(GPT.decode_window, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        model.setup_cache(2)
        model.prefill(cond, cond_mask)
        expected = model.decode_window(tokens, model.prefix_length + 3)
        model.prefill(cond, cond_mask)
        got = compiled(model, tokens, torch.tensor([model.prefix_length + 3]))
    torch.testing.assert_close(got, expected)


def test_cuda_graphs_serve_only_a_gpu_model_without_gradients():
    model = small()
    with torch.no_grad():
        assert not cuda_graphs.serves(model)  # on the CPU
        if torch.cuda.is_available():
            assert cuda_graphs.serves(model.cuda())
    if torch.cuda.is_available():
        assert not cuda_graphs.serves(model)  # gradients enabled


@needs_a_gpu
@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
def test_cuda_graphs_replay_what_the_plain_step_computes(model_type):
    """Generations from replayed graphs against the model's step run eagerly, token for token, greedy and sampled
    with one seed: guidance ending part-way (a second graph, for half the rows), and a second generation, whose
    different conditions (captions of other lengths) the graphs recorded for the first must read."""
    model = small_of(model_type, seed=4).cuda()

    def generations(decoding):
        tokens = []
        for seed in (0, 1):
            cond, cond_mask = condition(model, batch=2, seed=seed)
            if cond_mask is not None:
                cond_mask = (cond_mask if seed == 0 else cond_mask.flip(0)).cuda()  # the padding in the other row
            cond = cond.cuda()
            for options in ({"top_k": 1}, {"top_k": 5, "generator": torch.Generator("cuda").manual_seed(seed)}):
                tokens.append(
                    generate(model, cond, cond_mask, cfg_scale=2.0, cfg_interval=4, decoding=decoding, **options)
                )
        return tokens

    for expected, replayed in zip(generations("plain"), generations("fastest"), strict=True):
        assert torch.equal(expected, replayed)


@needs_a_gpu
@pytest.mark.parametrize(("dtype", "atol", "rtol"), [(torch.float32, 1e-4, 0), (torch.bfloat16, 0.1, 0.05)])
@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graphs_logits_are_the_modules(model_type, dtype, atol, rtol, compile):
    """The replayed step's logits, compiled or not, against the modules' step."""
    model = small_of(model_type, seed=5).cuda().to(dtype)
    cond, cond_mask = condition(model, batch=2)
    cond, cond_mask = cond.cuda(), None if cond_mask is None else cond_mask.cuda()
    tokens = torch.randint(0, 97, (2, 15), generator=torch.Generator().manual_seed(1)).cuda()
    usual = cached_logits(model, tokens, cond, cond_mask)
    with torch.no_grad():
        model.setup_cache(2)
        steps, replayed = cuda_graphs.graphed_decode_steps(model, compile), [model.prefill(cond, cond_mask)]
        for i in range(tokens.shape[1]):
            replayed.append(steps(tokens[:, i : i + 1], model.prefix_length + i))
    torch.testing.assert_close(torch.stack(replayed, 1), usual, atol=atol, rtol=rtol)


@needs_a_gpu
def test_cuda_graphs_complete_a_kept_prefix_as_the_plain_step_does():
    """Completion on a GPU: the kept tokens prefilled in one forward, the rest replayed from graphs, with a
    generator per image, token for token what the model's step run eagerly draws."""
    model = small_of("c2i", seed=4).cuda()
    cond = condition(model, batch=2)[0].cuda()
    kept = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(2)).cuda()

    def complete(decoding):
        generators = [torch.Generator("cuda").manual_seed(seed) for seed in (3, 4)]
        return generate(model, cond, None, cfg_scale=2.0, top_k=5, generator=generators, prefix_tokens=kept,
                        decoding=decoding)  # fmt: skip

    expected = complete("plain")
    assert torch.equal(expected[:, :5], kept) and torch.equal(complete("fastest"), expected)


@needs_a_gpu
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graphs_replay_parallel_decodings_windows(compile):
    """Each window size a graph of its own: the replayed windows' logits against the modules', and greedy Jacobi
    decoding through them the tokens of sequential decoding."""
    model = small_of("c2i", seed=4).cuda()
    cond = condition(model, batch=2)[0].cuda()
    tokens = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        model.setup_cache(2)
        steps = cuda_graphs.graphed_decode_steps(model, compile)
        for width, start in ((4, 0), (3, 2), (4, 4)):  # a second width, and the first again at another start
            model.prefill(cond)
            expected = model.decode_window(tokens[:, :width], model.prefix_length + start)
            model.prefill(cond)
            replayed = steps.window(tokens[:, :width], model.prefix_length + start)
            torch.testing.assert_close(replayed, expected, atol=1e-4, rtol=0)
    sequential = generate(model, cond, cfg_scale=2.0, top_k=1, decoding="plain")
    assert torch.equal(generate(model, cond, cfg_scale=2.0, top_k=1, jacobi_window=4, compile=compile), sequential)
