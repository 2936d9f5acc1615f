"""Speculative Jacobi decoding: a window forward computes what one-token steps compute, and with greedy
sampling the tokens are sequential decoding's, for classes and captions, with guidance and a kept prefix."""

import pytest
import torch

from llamagen.generation import generate
from llamagen.pipeline import load_pipeline


@pytest.fixture(scope="module")
def digits():
    return load_pipeline("digits-c2i").gpt


def test_a_window_forward_gives_the_logits_of_one_token_steps(digits):
    gpt, cond = digits, torch.tensor([3, 7])
    tokens = torch.randint(0, gpt.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    gpt.setup_cache(2)
    gpt.prefill(cond)
    stepped = torch.stack([gpt.decode_step(tokens[:, i : i + 1], gpt.prefix_length + i) for i in range(6)], 1)
    gpt.prefill(cond)
    windowed = gpt.decode_window(tokens, gpt.prefix_length)
    assert windowed.shape == stepped.shape == (2, 6, gpt.config.vocab_size)
    assert torch.allclose(windowed, stepped, atol=1e-4)
    # What a window writes past the accepted tokens is overwritten before it is read: a second window from the
    # middle, with other tokens there, gives the steps' logits for those tokens.
    other = tokens[:, 3:].flip(0)
    gpt.prefill(cond)
    gpt.decode_window(tokens[:, :3], gpt.prefix_length)
    stepped_other = torch.stack([gpt.decode_step(other[:, i : i + 1], gpt.prefix_length + 3 + i) for i in range(3)], 1)
    gpt.prefill(cond)
    gpt.decode_window(tokens, gpt.prefix_length)
    assert torch.allclose(gpt.decode_window(other, gpt.prefix_length + 3), stepped_other, atol=1e-4)


@pytest.mark.parametrize("window", [1, 3, 16])
def test_greedy_jacobi_decoding_gives_sequential_decodings_tokens(digits, window):
    cond = torch.tensor([0, 4, 9])
    for options in ({"cfg_scale": 4.0, "top_k": 1}, {"cfg_scale": 1.0, "temperature": 0.0},
                    {"cfg_scale": 4.0, "top_k": 1, "cfg_interval": 10}):  # fmt: skip
        sequential = generate(digits, cond, decoding="plain", **options)
        assert torch.equal(generate(digits, cond, jacobi_window=window, **options), sequential)
    kept = {"cfg_scale": 4.0, "top_k": 1, "prefix_tokens": sequential[:, :5]}
    assert torch.equal(generate(digits, cond, jacobi_window=window, **kept), generate(digits, cond, **kept))


def test_greedy_jacobi_decoding_of_captions_gives_sequential_decodings_tokens():
    pipe = load_pipeline("shapes-t2i")
    cond, cond_mask, _, _ = pipe.encode_conditions(prompts=["a red star", "a small blue circle"])
    sequential = generate(pipe.gpt, cond, cond_mask, cfg_scale=2.0, top_k=1, decoding="plain")
    assert torch.equal(generate(pipe.gpt, cond, cond_mask, cfg_scale=2.0, top_k=1, jacobi_window=8), sequential)


def test_sampling_draws_valid_tokens_and_reports_progress(digits):
    seen = []
    generators = [torch.Generator().manual_seed(seed) for seed in range(2)]
    tokens = generate(digits, torch.tensor([1, 2]), cfg_scale=4.0, top_k=50, top_p=0.9, jacobi_window=8,
                      generator=generators, progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert tokens.shape == (2, digits.config.block_size)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < digits.config.vocab_size
    assert seen[-1] == (digits.config.block_size,) * 2 and [done for done, _ in seen] == sorted(
        done for done, _ in seen
    )
    assert len(seen) < digits.config.block_size  # fewer model calls than tokens


@pytest.mark.parametrize("window", [-1, 1.5, True])
def test_a_window_that_is_not_a_count_is_refused(digits, window):
    with pytest.raises(ValueError, match="jacobi_window must be a whole number of tokens >= 0"):
        generate(digits, torch.tensor([1]), jacobi_window=window)


@pytest.mark.slow
def test_sampling_keeps_sequential_decodings_distribution():
    """shapes-c2i at its card's settings, 512 images per way (each class alike): the token histograms of
    Jacobi decoding and of sequential decoding pass a two-sample test at every position together, where a
    control, sequential decoding at temperature 0.75, fails it; and the judge's measures of the two sets
    (class accuracy, FID in its features, precision, recall) agree within their 95% intervals."""
    from llamagen.analysis.statistics import token_histograms_differ
    from llamagen.evaluation.generation import condition_labels, score_images
    from llamagen.evaluation.judges import load_judge
    from llamagen.pipeline import decode_tokens

    pipe = load_pipeline("shapes-c2i")
    gpt, options = pipe.gpt, pipe.sampling.values()
    labels = torch.arange(512) % gpt.config.num_classes

    def sampled(seed, **changes):
        return generate(gpt, labels, **{**options, **changes}, generator=torch.Generator().manual_seed(seed))

    sequential, jacobi, cooler = sampled(0), sampled(1, jacobi_window=4), sampled(2, temperature=0.75)
    assert token_histograms_differ(sequential, jacobi, (labels, labels)).p_value > 0.05
    assert token_histograms_differ(sequential, cooler, (labels, labels)).p_value < 0.01

    judge = load_judge("shapes-judge")
    stated = condition_labels("shapes", labels)
    with torch.no_grad():
        judged = [score_images(judge, "shapes", decode_tokens(pipe.tokenizer, tokens), stated, labels)
                  for tokens in (sequential, jacobi)]  # fmt: skip
    for measure in ("fid", "precision", "recall"):
        a, b = (getattr(scores, measure) for scores in judged)
        assert a.low <= b.high and b.low <= a.high, (measure, a, b)  # the intervals overlap
    a, b = (scores.accuracy["class"] for scores in judged)
    assert a.low <= b.high and b.low <= a.high, ("class accuracy", a, b)
