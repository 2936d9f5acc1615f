"""The pipeline: conditions in (ids, names), images and tokens out, reproducible by seed; refusals before work."""

import pytest
import torch
from helpers import small, small_tokenizer

from llamagen import save
from llamagen.gpt import GPT
from llamagen.pipeline import Pipeline, imagenet_class_names, load_pipeline

NAMES = ["zero", "one", "two"]


def small_gpt(**overrides) -> GPT:
    return small(**{"vocab_size": 64, "num_classes": 3, **overrides})


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline(small_gpt(), small_tokenizer(), class_names=NAMES)


def test_images_and_tokens_for_ids_and_names(pipe):
    steps = []
    output = pipe(class_labels=["two", 0], num_images_per_condition=2, seed=3, progress=lambda d, t: steps.append(d))
    assert output.tokens.shape == (4, 16) and output.pixels.shape == (4, 3, 16, 16)
    assert [image.size for image in output.images] == [(16, 16)] * 4
    assert output.conditions == ["two", "two", "zero", "zero"]
    assert steps == list(range(1, 17))
    assert pipe.image_size == 16 and pipe.class_names == NAMES


def test_the_same_seed_gives_the_same_images_and_another_seed_others(pipe):
    a = pipe(class_labels=[1, 2], seed=5)
    b = pipe(class_labels=[1, 2], seed=5)
    c = pipe(class_labels=[1, 2], seed=6)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pixels, b.pixels)
    assert not torch.equal(a.tokens, c.tokens)


def test_greedy_tokens_are_the_generators_argmax_chain(pipe):
    """With top_k=1 the pipeline's tokens are, position by position, the argmax of the full forward."""
    tokens = pipe(class_labels=[1], top_k=1, cfg_scale=1.0).tokens
    logits = pipe.gpt(tokens[:, :-1], torch.tensor([1]))
    assert torch.equal(logits.argmax(-1), tokens)


def test_tokens_decode_to_the_images(pipe):
    output = pipe(class_labels=[0], seed=1)
    expected = pipe.tokenizer.detokenize(output.tokens.view(1, 4, 4)).clamp(-1, 1)
    torch.testing.assert_close(output.pixels, expected)


def test_refusals_name_the_problem(pipe):
    with pytest.raises(ValueError, match="unknown class 'tow'; did you mean 'two'"):
        pipe(class_labels=["tow"])
    with pytest.raises(ValueError, match=r"class id 3 is outside 0\.\.2"):
        pipe(class_labels=[3])
    with pytest.raises(ValueError, match="class-conditional: give class_labels"):
        pipe(prompts=["a red circle"])
    with pytest.raises(ValueError, match="either class_labels or prompts"):
        pipe()
    with pytest.raises(ValueError, match="class_labels is empty"):
        pipe(class_labels=[])
    with pytest.raises(ValueError, match="top_k"):
        pipe(class_labels=[0], top_k=-1)
    with pytest.raises(ValueError, match="num_images_per_condition"):
        pipe(class_labels=[0], num_images_per_condition=0)
    with pytest.raises(ValueError, match="not trained together"):
        Pipeline(small_gpt(), small_tokenizer(codebook_size=32))
    with pytest.raises(ValueError, match="2 class names for a generator of 3 classes"):
        Pipeline(small_gpt(), small_tokenizer(), class_names=["a", "b"])
    with pytest.raises(ValueError, match="needs its text encoder"):
        Pipeline(small_gpt(model_type="t2i", caption_dim=8, cls_token_num=4), small_tokenizer())


def test_load_pipeline_from_files_reads_the_generators_metadata(tmp_path):
    import json

    save(small_tokenizer(), tmp_path / "vq.safetensors")
    metadata = {"tokenizer": str(tmp_path / "vq.safetensors"), "class_names": json.dumps(NAMES)}
    save(small_gpt(), tmp_path / "gpt.safetensors", metadata=metadata)
    pipe = load_pipeline(tmp_path / "gpt.safetensors")
    assert pipe.class_names == NAMES and pipe(class_labels=["one"]).tokens.shape == (1, 16)
    save(small_gpt(), tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="does not name its tokenizer"):
        load_pipeline(tmp_path / "bare.safetensors")
    assert load_pipeline(tmp_path / "bare.safetensors", tokenizer=tmp_path / "vq.safetensors").class_names is None


def test_imagenet_models_get_the_imagenet_names():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[207] == "golden retriever"


def test_sampling_defaults_are_the_cards_beside_the_weights_or_else_the_originals(tmp_path):
    import json

    save(small_tokenizer(codebook_size=4096), tmp_path / "vq.safetensors")
    metadata = {"tokenizer": str(tmp_path / "vq.safetensors")}
    save(small_gpt(vocab_size=4096), tmp_path / "gpt.safetensors", metadata=metadata)
    # No card: the original's sample_c2i.py (guidance 4, top-k 2000, temperature 1, top-p 1).
    pipe = load_pipeline(tmp_path / "gpt.safetensors")
    assert pipe.sampling.values() == {"cfg_scale": 4.0, "cfg_interval": -1, "cfg_schedule": "constant",
                                      "top_k": 2000, "top_p": 1.0, "temperature": 1.0}  # fmt: skip
    card = tmp_path / "gpt.json"
    card.write_text(json.dumps({"sampling": {"cfg_scale": 1.5, "top_k": 5, "temperature": 0.5, "measured": "a test"}}))
    pipe = load_pipeline(tmp_path / "gpt.safetensors")
    assert pipe.sampling.values() == {"cfg_scale": 1.5, "cfg_interval": -1, "cfg_schedule": "constant",
                                      "top_k": 5, "top_p": 1.0, "temperature": 0.5}  # fmt: skip
    assert "gpt's card" in pipe.sampling.describe()
    # Options left out take the card's values; each one given replaces only itself.
    by_default = pipe(class_labels=[0, 1, 2], seed=2, num_images_per_condition=4).tokens
    spelled_out = pipe(class_labels=[0, 1, 2], seed=2, num_images_per_condition=4, cfg_scale=1.5, top_k=5,
                       temperature=0.5, top_p=1.0, cfg_interval=-1).tokens  # fmt: skip
    hotter = pipe(class_labels=[0, 1, 2], seed=2, num_images_per_condition=4, temperature=1.0).tokens
    assert torch.equal(by_default, spelled_out) and not torch.equal(by_default, hotter)
    card.write_text(json.dumps({"sampling": {"cfg": 2.0}}))
    with pytest.raises(ValueError, match=r"gpt's card: unknown sampling settings \['cfg'\]"):
        load_pipeline(tmp_path / "gpt.safetensors")
    card.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the model card"):
        load_pipeline(tmp_path / "gpt.safetensors")
