"""Sampling: truncation rules, guidance, reproducibility, progress, and refusing bad options early."""

import pytest
import torch
from helpers import condition, logits_with_ties, small

from llamagen import generate, generation
from llamagen.fast import compiled, kernels
from llamagen.fast.top_k import top_k_candidates
from llamagen.gpt import GPT
from llamagen.gpt.sampling import guided, sample, sorted_top_k


def test_top_k_only_ever_samples_the_k_best():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0, 3.0]]).expand(500, 5)
    drawn = sample(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(drawn.flatten().tolist()) == {1, 3}


def _top_k_path(way: str, monkeypatch):
    """The sampler's top-k (a stable sort), or `llamagen.fast`'s through the CPU kernel or through torch's ops."""
    if way == "kernel" and not kernels.load():
        pytest.skip("this CPU lacks AVX-512 BF16: the kernel is not built")
    monkeypatch.setattr(kernels, "ready", way == "kernel")
    return sorted_top_k if way == "sort" else top_k_candidates


TOP_K_WAYS = ["sort", "kernel", "threshold"]


@pytest.mark.parametrize("way", TOP_K_WAYS)
def test_top_k_candidates_come_largest_first_and_equal_logits_by_token_id(way, monkeypatch):
    """The draw depends on the candidates' order, so equal logits (common in bf16) must not be left to an
    algorithm's whims: the order is that of a stable descending sort, with or without the CPU kernel."""
    top_k = _top_k_path(way, monkeypatch)
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, -0.0, 0.0, -1.0], [0.0, -0.0, 0.0, 5.0, 5.0, 7.0, -1.0, 0.0]])
    values, ids = top_k(logits, 4)
    assert ids.tolist() == [[1, 2, 4, 3], [5, 3, 4, 0]]
    assert torch.equal(values, logits.gather(-1, ids))


@pytest.mark.parametrize("way", ["kernel", "threshold"])
@pytest.mark.parametrize("vocab, k", [(16384, 2000), (97, 1), (97, 97), (40, 23)])  # 40: a partial register
def test_top_k_candidates_are_the_first_k_of_a_stable_sort(way, vocab, k, monkeypatch):
    """The kernel and torch's own ops give the same candidates in the same order, also on rows of equal
    values, infinities, signed zeros and NaN; all rows at once (the kernel's rows in parallel) and one by one
    (torch's ops take another path for a row with NaN)."""
    top_k_candidates = _top_k_path(way, monkeypatch)
    logits = logits_with_ties(vocab, seed=vocab + k)
    sorted_values, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    for rows in [slice(None), *(slice(row, row + 1) for row in range(len(logits)))]:
        values, ids = top_k_candidates(logits[rows], k)
        assert torch.equal(ids, order[rows, :k])
        torch.testing.assert_close(values, sorted_values[rows, :k], rtol=0, atol=0, equal_nan=True)


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().expand(2000, 4)
    drawn = sample(logits, top_p=0.75, generator=torch.Generator().manual_seed(0))
    assert set(drawn.flatten().tolist()) == {0, 1}  # 0.5 < 0.75, 0.5 + 0.3 >= 0.75: two tokens
    share = (drawn == 0).float().mean().item()
    assert share == pytest.approx(0.5 / 0.8, abs=0.04)  # renormalised within the nucleus
    assert set(sample(logits, top_p=0.3).flatten().tolist()) == {0}  # the most likely always stays


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[0.0, 1.0]]).expand(4000, 2)
    generator = torch.Generator().manual_seed(0)
    cold = (sample(logits, temperature=0.25, generator=generator) == 1).float().mean()
    hot = (sample(logits, temperature=4.0, generator=generator) == 1).float().mean()
    assert cold > 0.95 and 0.5 < hot < 0.65


def test_guidance_formula():
    cond = torch.tensor([[2.0, 0.0]])
    uncond = torch.tensor([[1.0, 1.0]])
    torch.testing.assert_close(guided(torch.cat([cond, uncond]), 3.0), torch.tensor([[4.0, -2.0]]))
    torch.testing.assert_close(guided(torch.cat([cond, uncond]), 0.0), uncond)


@pytest.mark.parametrize("model_type", ["c2i", "t2i"])
def test_a_seeded_generator_makes_results_reproducible_and_independent_of_other_calls(model_type):
    model = small(model_type=model_type, cls_token_num=1 if model_type == "c2i" else 4)
    cond, mask = condition(model, batch=2)

    def run(seed):
        return generate(model, cond, mask, cfg_scale=2.0, top_k=20, generator=torch.Generator().manual_seed(seed))

    first = run(7)
    torch.manual_seed(123)  # the global RNG, or another request in between, must not matter
    run(8)
    assert torch.equal(run(7), first)
    assert not torch.equal(run(8), first)


def test_progress_is_reported_for_every_token():
    model = small()
    calls = []
    generate(model, torch.tensor([1]), top_k=1, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 16) for i in range(1, 17)]


def test_cfg_interval_guides_only_the_first_tokens(monkeypatch):
    """cfg_interval=n guides tokens 0..n+1 (the original's count); afterwards only the conditional half runs."""
    model = small()
    batch_rows = []
    original_decode = GPT.decode_step

    def recording_decode(self, tokens, position):
        batch_rows.append(tokens.shape[0])
        return original_decode(self, tokens, position)

    monkeypatch.setattr(GPT, "decode_step", recording_decode)
    generate(model, torch.tensor([1, 2]), cfg_scale=3.0, cfg_interval=3, top_k=1, decoding="plain")
    assert batch_rows == [4] * 4 + [2] * 11  # tokens 1..4 guided (doubled batch), tokens 5..15 not
    batch_rows.clear()
    generate(model, torch.tensor([1, 2]), cfg_scale=3.0, top_k=1, decoding="plain")
    assert batch_rows == [4] * 15


def test_guidance_interval_equals_full_guidance_while_it_lasts():
    model = small()
    labels = torch.tensor([0, 4])
    full = generate(model, labels, cfg_scale=3.0, top_k=1)
    interval = generate(model, labels, cfg_scale=3.0, cfg_interval=5, top_k=1)
    assert torch.equal(full[:, :7], interval[:, :7])


def test_scale_one_is_the_conditional_model_alone():
    model = small()
    labels = torch.tensor([0, 4])
    tokens = generate(model, labels, cfg_scale=1.0, top_k=1)
    logits = model(tokens[:, :-1], labels)
    assert torch.equal(tokens, logits.argmax(-1))


def test_guided_greedy_tokens_are_the_argmax_of_guided_full_forward_logits():
    model = small(model_type="t2i", cls_token_num=4)
    cond, mask = condition(model, batch=2)
    tokens = generate(model, cond, mask, cfg_scale=2.5, top_k=1)
    both = torch.cat([model(tokens[:, :-1], cond, mask), model(tokens[:, :-1], model.unconditional(cond), mask)])
    assert torch.equal(tokens, guided(both, 2.5).argmax(-1))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cfg_scale": -1.0}, "cfg_scale must be >= 0"),
        ({"temperature": -0.5}, "temperature must be >= 0"),
        ({"top_k": 98}, r"top_k must be in \[0, 97\]"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ],
)
def test_bad_options_are_refused_before_any_work(options, message, monkeypatch):
    model = small()
    monkeypatch.setattr(GPT, "prefill", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=message):
        generate(model, torch.tensor([0]), **options)


def test_unknown_classes_and_the_null_class_are_refused_as_input():
    model = small()
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 4\]"):
        generate(model, torch.tensor([5]))
    with pytest.raises(ValueError, match="empty"):
        generate(model, torch.zeros(0, dtype=torch.long))


def test_guidance_needs_a_null_class():
    model = small(class_dropout_prob=0.0)
    with pytest.raises(ValueError, match="no null class"):
        generate(model, torch.tensor([0]), cfg_scale=2.0)
    assert generate(model, torch.tensor([0]), top_k=1).shape == (1, 16)


def test_a_batch_that_cannot_fit_in_memory_is_refused(monkeypatch):
    model = small()
    monkeypatch.setattr(generation, "available_memory_bytes", lambda device: 10_000_000)
    with pytest.raises(ValueError, match=r"doubled for guidance.*use a smaller batch"):
        generate(model, torch.zeros(4000, dtype=torch.long), cfg_scale=4.0)


def test_the_cache_is_reused_and_a_failed_generation_leaves_no_trace(monkeypatch):
    model = small()
    labels = torch.tensor([0, 3])
    expected = generate(model, labels, cfg_scale=2.0, top_k=1)
    cache = model.layers[0].attention.kv_cache.k_cache
    monkeypatch.setattr(generation, "sample", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        generate(model, torch.tensor([4, 1]), cfg_scale=2.0)
    monkeypatch.undo()
    assert torch.equal(generate(model, labels, cfg_scale=2.0, top_k=1), expected)
    assert model.layers[0].attention.kv_cache.k_cache is cache  # same rows: the same buffers
    generate(model, labels, top_k=1)  # no guidance: half the rows, a new cache
    assert model.layers[0].attention.kv_cache.k_cache.shape[0] == 2
    model.clear_cache()
    assert all(layer.attention.kv_cache is None for layer in model.layers)


@pytest.fixture
def quick_compiles(monkeypatch):
    """The compile manager as generate uses it, without autotuning the products: what these tests check is which
    graphs run and what they compute, not how fast (autotuning a tiny model's products took most of a minute)."""
    monkeypatch.setattr(compiled, "CPU_MODE", "default")


@pytest.mark.slow
@pytest.mark.usefixtures("quick_compiles")
def test_compiled_decoding_generates_what_eager_decoding_does():
    """The compiled step (weights frozen into the graph on the CPU) follows the model, also when models
    alternate, after its weights change and when guidance ends part-way (a smaller batch). Models share one
    code object and so torch's recompilation limit: a step that fell back to eager decoding past it would fail
    here."""
    first, second = small(seed=0, n_kv_head=2), small(seed=1, n_kv_head=2)
    labels = torch.tensor([1, 2])
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        # The first again: after the first steps, only the guards that tell the graphs apart are run, and they
        # must still tell the two models apart.
        for model in (first, second, first):
            assert torch.equal(
                generate(model, labels, cfg_scale=2.0, top_k=1, compile=True, decoding="plain"),
                generate(model, labels, cfg_scale=2.0, top_k=1, decoding="plain"),
            )
        with torch.no_grad():
            first.output.weight.normal_(std=0.5)
        assert torch.equal(
            generate(first, labels, cfg_scale=2.0, cfg_interval=3, top_k=1, compile=True, decoding="plain"),
            generate(first, labels, cfg_scale=2.0, cfg_interval=3, top_k=1, decoding="plain"),
        )


@pytest.mark.slow
@pytest.mark.usefixtures("quick_compiles")
def test_compiled_decoding_with_caption_masks_generates_what_eager_decoding_does():
    """Captions of different lengths: the padded prefix positions stay hidden in the compiled step's attention as
    in eager decoding, also for the next caption's padding (the step reads the mask that each prefill writes; a
    mask frozen into the graph would keep the first caption's)."""
    model = small(model_type="t2i", cls_token_num=6, seed=2)
    cond, cond_mask = condition(model, batch=2)
    assert not cond_mask.all()  # some prefix positions are padding
    other_mask = cond_mask.flip(0)
    for mask in (cond_mask, other_mask):
        assert torch.equal(
            generate(model, cond, mask, cfg_scale=2.0, top_k=1, compile=True, decoding="plain"),
            generate(model, cond, mask, cfg_scale=2.0, top_k=1, decoding="plain"),
        )
