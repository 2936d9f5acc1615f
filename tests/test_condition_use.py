"""Condition use read from the predictions (`llamagen.analysis.condition_use`), on tiny generators whose answer
is known: one that ignores its condition reads zero everywhere; one whose layers pass nothing between positions
reads the condition at the first position only, exactly as a hand computation gives; a random one reads it at
every position."""

import pytest
import torch
from helpers import condition, small

from llamagen.analysis.condition_use import condition_use, loss_per_image


def tokens_for(model, batch: int = 3):
    return torch.randint(0, model.config.vocab_size, (batch, model.config.block_size),
                         generator=torch.Generator().manual_seed(5))  # fmt: skip


def test_a_generator_that_ignores_its_condition_reads_zero():
    model = small()
    with torch.no_grad():
        table = model.cls_embedding.embedding_table.weight
        table.copy_(table[:1].expand_as(table))  # every class, the null one included, the same prefix
    labels, _ = condition(model)
    use = condition_use(model, tokens_for(model), labels)
    assert torch.equal(use.kl, torch.zeros_like(use.kl))
    assert torch.equal(use.log_ratio, torch.zeros_like(use.log_ratio))


def test_without_paths_between_positions_only_the_first_prediction_reads_the_condition():
    """Attention and feed-forward outputs zeroed: each position's output is its own input, so the prediction of
    token 0 (made at the prefix) is the only one the condition reaches."""
    model = small()
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
    labels, _ = condition(model)
    tokens = tokens_for(model)
    use = condition_use(model, tokens, labels)
    assert torch.equal(use.kl[:, 1:], torch.zeros_like(use.kl[:, 1:]))

    def first_prediction(classes):
        return torch.log_softmax(model.output(model.norm(model.cls_embedding.embedding_table(classes))), -1)

    with torch.no_grad():
        conditional, null = first_prediction(labels), first_prediction(model.unconditional(labels))
    expected_kl = (conditional.exp() * (conditional - null)).sum(-1)
    torch.testing.assert_close(use.kl[:, 0], expected_kl)
    expected_ratio = (conditional - null).gather(-1, tokens[:, :1])[:, 0]
    torch.testing.assert_close(use.log_ratio[:, 0], expected_ratio)


def test_a_random_generator_reads_its_condition_everywhere_and_captions_too():
    for model_type in ("c2i", "t2i"):
        model = small(model_type=model_type, cls_token_num=1 if model_type == "c2i" else 4)
        cond, mask = condition(model)
        use = condition_use(model, tokens_for(model), cond, mask)
        assert use.kl.shape == (3, model.config.block_size)
        assert (use.kl > 1e-6).all()


def test_the_loss_per_image_is_the_mean_cross_entropy():
    model = small()
    labels, _ = condition(model)
    tokens = tokens_for(model)
    logits = model(tokens[:, :-1], labels)
    expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens, reduction="none").mean(-1)
    torch.testing.assert_close(loss_per_image(model, tokens, labels), expected)


def test_the_generator_as_a_classifier_picks_the_class_whose_prefix_it_was_made_to_predict_from():
    """With paths between positions removed, log p(x|c) differs between classes only through the first token's
    prediction, so the class whose prefix makes the first token most likely wins: a known answer."""
    model = small()
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
    from llamagen.analysis.condition_use import class_log_likelihoods

    tokens = tokens_for(model, batch=6)
    scores = class_log_likelihoods(model, tokens, batch=4)
    assert scores.shape == (6, model.config.num_classes)
    with torch.no_grad():
        first = torch.log_softmax(model.output(model.norm(model.cls_embedding.embedding_table.weight[:-1])), -1)
    assert torch.equal(scores.argmax(1), first[:, tokens[:, 0]].argmax(0))


def test_the_loss_gap_is_none_for_a_generator_that_ignores_its_condition():
    from llamagen.analysis.condition_use import loss_gaps

    model = small()
    with torch.no_grad():
        table = model.cls_embedding.embedding_table.weight
        table.copy_(table[:1].expand_as(table))
    labels, _ = condition(model)
    gaps = loss_gaps(model, tokens_for(model), labels, (labels + 1) % 5)
    assert torch.equal(gaps["true"], gaps["null"]) and torch.equal(gaps["true"], gaps["wrong"])


def test_the_loss_gap_orders_true_null_wrong_for_images_made_from_their_class():
    """With paths between positions removed, the class reaches only the first token's prediction; images whose
    first token is the one their class predicts most are likelier under that class than under the null one, and
    than under a class that predicts another first token (a known answer)."""
    from llamagen.analysis.condition_use import loss_gaps

    model = small()
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
        first = torch.log_softmax(model.output(model.norm(model.cls_embedding.embedding_table.weight)), -1)
    favourite = first.argmax(-1)
    labels = torch.tensor([0, 1, 2])
    wrong = torch.tensor([next(c for c in range(5) if favourite[c] != favourite[t]) for t in labels.tolist()])
    tokens = tokens_for(model)
    tokens[:, 0] = favourite[labels]
    gaps = loss_gaps(model, tokens, labels, wrong)
    assert (gaps["true"] < gaps["null"]).all() and (gaps["true"] < gaps["wrong"]).all()
    # Only the first of the block's predictions differs: the gap is that token's log-ratio over the block.
    block = model.config.block_size
    null = model.unconditional(labels)
    torch.testing.assert_close(
        gaps["null"] - gaps["true"], (first[labels] - first[null]).gather(1, tokens[:, :1])[:, 0] / block
    )


def test_attention_to_the_prefix_comes_with_its_controls():
    from llamagen.analysis.attention import prefix_attention_with_controls

    model = small()
    labels, _ = condition(model)
    shares = prefix_attention_with_controls(model, tokens_for(model), labels, (labels + 1) % 5)
    assert set(shares) == {"true", "null", "wrong", "true - null"}
    torch.testing.assert_close(shares["true - null"], shares["true"] - shares["null"])
    assert not torch.equal(shares["true"], shares["null"])


@pytest.mark.slow
def test_the_text_generator_names_the_words_of_real_shapes_and_not_of_shuffled_ones():
    """The embedded shapes-t2i, read as a reader of words: on held-out real shapes it picks the right shape word
    and colour word for most images; the same images' tokens against another image's labels (a control with a
    known answer: those labels are wrong) get few right."""
    from llamagen.analysis.captions import word_choices
    from llamagen.evaluation.judges import held_out
    from llamagen.pipeline import load_pipeline

    pipe = load_pipeline("shapes-t2i")
    images, labels = held_out("shapes", 48)
    tokens = pipe.tokenizer.tokenize(images).flatten(1)
    labels = {name: labels[name] for name in ("shape", "colour")}
    chosen = word_choices(pipe, tokens, labels)
    for name in labels:
        assert (chosen[name] == labels[name]).float().mean() > 0.8, name
    shuffled = {name: value.roll(1) for name, value in labels.items()}
    for name in labels:
        right = (chosen[name] == shuffled[name]) & (labels[name] != shuffled[name])
        assert right.float().mean() < 0.2, name
