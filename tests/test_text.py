"""Text encoders and text-to-image: left-padded per-token features, truncation said, CLIP training that resumes
exactly, loading (the project's files, local open_clip checkpoints), and a text-to-image run end to end."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_CLIP, tiny_encoder

from llamagen import save
from llamagen.text import ClipConfig, load_text_encoder


def test_features_are_the_towers_per_token_features_moved_to_the_end():
    encoder = tiny_encoder()
    encoded = encoder.encode(["a red star", "a picture of a large blue circle"])
    assert encoded.features.shape == (2, 12, 32) and encoded.mask.dtype == torch.bool
    ids, lengths, notes = encoder.token_ids(["a red star"])
    assert lengths.tolist() == [5] and notes == []  # start, a, red, star, end
    alone = encoder.token_features(ids)[0, :5]
    torch.testing.assert_close(encoded.features[0, -5:], alone)
    assert encoded.mask[0].tolist() == [False] * 7 + [True] * 5
    assert encoded.features[0, :7].abs().max() == 0
    # A prompt's features do not depend on the others in its batch.
    torch.testing.assert_close(encoder.encode(["a red star"]).features[0], encoded.features[0])


def test_a_long_prompt_is_cut_and_the_cut_is_said():
    encoder = tiny_encoder()
    encoded = encoder.encode(["a red star " * 10])
    assert encoded.mask.all() and len(encoded.notes) == 1
    assert "prompt 0 has 32 tokens" in encoded.notes[0] and "cut to 12" in encoded.notes[0]
    ids, _, _ = encoder.token_ids(["a red star " * 10])
    assert ids[0, -1] == encoder.tokenizer.eot_token_id  # still ends with the end-of-text token


def test_saved_encoders_load_strictly_and_by_kind(tmp_path):
    encoder = tiny_encoder()
    save(encoder, tmp_path / "clip.safetensors")
    loaded = load_text_encoder(tmp_path / "clip.safetensors")
    torch.testing.assert_close(loaded.encode(["a cat"]).features, encoder.encode(["a cat"]).features)
    from helpers import small_tokenizer

    save(small_tokenizer(), tmp_path / "vq.safetensors")
    with pytest.raises(ValueError, match="is a 'vq' checkpoint, not a CLIP text encoder"):
        load_text_encoder(tmp_path / "vq.safetensors")
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_text_encoder("open_clip:ViT-B-32:/nowhere/model.bin")
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-Q-99'"):
        load_text_encoder("open_clip:ViT-Q-99:/nowhere/model.bin")


def test_a_local_open_clip_checkpoint_loads_without_download(tmp_path):
    """A real model's checkpoint as open_clip writes it (here a registered tiny architecture): its per-token
    features and CLIP embeddings come through, images resized and normalised as open_clip expects."""
    import open_clip

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "llamagen-test-tiny.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "configs")
    torch.manual_seed(1)
    model = open_clip.create_model("llamagen-test-tiny")
    torch.save(model.state_dict(), tmp_path / "open_clip_model.bin")
    encoder = load_text_encoder(f"open_clip:llamagen-test-tiny:{tmp_path / 'open_clip_model.bin'}")
    ids, _, _ = encoder.token_ids(["a dog"])
    reference = model.encode_text(ids, normalize=True)
    torch.testing.assert_close(encoder.embed_text(["a dog"]), reference)
    assert encoder.published and encoder.embed_images(torch.zeros(1, 3, 40, 40)).shape == (1, 16)


@pytest.mark.parametrize("hard_negatives", [False, True])
def test_clip_training_resumes_exactly(tmp_path, hard_negatives):
    from llamagen.data.shapes import Shapes
    from llamagen.training.clip import ClipTrainingConfig, train_clip

    def training(steps):
        return ClipTrainingConfig(steps=steps, batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=2,
                                  bf16=False, final_lr_ratio=1.0, lr=1e-3, hard_negatives=hard_negatives)  # fmt: skip

    config, data = ClipConfig.from_dict(TINY_CLIP), Shapes(size=16, captioned=True)
    straight, _, _ = train_clip(config, training(4), data, tmp_path / "straight", show_progress=False)
    train_clip(config, training(2), data, tmp_path / "resumed", show_progress=False)
    resumed, step, finished = train_clip(config, training(4), data, tmp_path / "resumed", resume=True,
                                         show_progress=False, changes=["steps"])  # fmt: skip
    assert (step, finished) == (4, True)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    loaded = load_text_encoder(tmp_path / "straight" / "final.safetensors")
    torch.testing.assert_close(loaded.encode(["a red star"]).features, straight.encode(["a red star"]).features)


def test_the_contrastive_loss_is_open_clips_and_hard_negatives_only_push_images_away():
    """With no extra captions it is open_clip's loss; extra captions add only to the images' side: far from
    every image they change nothing, close to one they cost."""
    from open_clip.loss import ClipLoss

    from llamagen.training.clip import contrastive_loss

    torch.manual_seed(0)
    # Every image and caption leans towards the first axis, so its opposite is far from all of them.
    axis = torch.eye(8)[0]
    images, texts = (F.normalize(torch.randn(6, 8) + 3 * axis, dim=1) for _ in range(2))
    scale = torch.tensor(30.0)
    plain = contrastive_loss(images, texts, scale)
    torch.testing.assert_close(plain, ClipLoss()(images, texts, scale))
    close, far = F.normalize(images + 0.1 * torch.randn(6, 8), dim=1), -axis.expand(6, 8)
    torch.testing.assert_close(contrastive_loss(images, torch.cat([texts, far]), scale), plain)
    assert contrastive_loss(images, torch.cat([texts, close]), scale) > plain + 0.1


def test_hard_negatives_rephrase_each_caption_for_another_shape_and_colour_never_a_held_out_pair():
    from llamagen.data.batches import collate_images
    from llamagen.data.shapes import COLOURS, HELD_OUT_PAIRS, SHAPES, Shapes, recaption
    from llamagen.training.clip import hard_negative_captions

    items = [Shapes(seed=3, captioned=True)[i] for i in range(64)]
    batch = collate_images(items)
    negatives = hard_negative_captions(batch, torch.Generator().manual_seed(0))
    assert negatives == hard_negative_captions(batch, torch.Generator().manual_seed(0))  # resumable
    assert len(negatives) == 2 * len(items)
    for item, other_shape, other_colour in zip(items, negatives[: len(items)], negatives[len(items) :], strict=True):
        shape, colour = item["attributes"]["shape"], item["attributes"]["colour"]
        shapes = [s for s in SHAPES if s != shape and (s, colour) not in HELD_OUT_PAIRS]
        colours = [c for c in COLOURS if c != colour and (shape, c) not in HELD_OUT_PAIRS]
        assert other_shape in {recaption(item, shape=s) for s in shapes}
        assert other_colour in {recaption(item, colour=c) for c in colours}
    assert negatives != hard_negative_captions(batch, torch.Generator().manual_seed(1))  # drawn, not fixed


def test_hard_negatives_need_shapes_captions_and_say_so_before_any_work(tmp_path):
    from llamagen.training.clip import ClipTrainingConfig, train_clip

    captions = [{"image": torch.zeros(3, 16, 16), "caption": "a photo of a cat"}]
    training = ClipTrainingConfig(steps=2, batch_size=2, hard_negatives=True)
    with pytest.raises(ValueError, match="--data shapes"):
        train_clip(ClipConfig.from_dict(TINY_CLIP), training, captions, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_text_to_image_from_codes_to_pipeline(tmp_path):
    """Captioned codes, a text-conditional generator trained on them through a CLIP, and the pipeline's prompts."""
    from helpers import small_tokenizer

    from llamagen.data.codes import CodesDataset, extract_codes
    from llamagen.data.shapes import Shapes
    from llamagen.gpt import GPTConfig
    from llamagen.pipeline import load_pipeline
    from llamagen.training.gpt import GPTTrainingConfig, generator_config_for, train_gpt

    save(small_tokenizer(), tmp_path / "vq.safetensors")
    save(tiny_encoder(), tmp_path / "clip.safetensors")
    encoder = load_text_encoder(tmp_path / "clip.safetensors")
    codes = tmp_path / "codes.safetensors"
    extract_codes(small_tokenizer(), Shapes(size=16, captioned=True), codes, 16, count=12, condition="caption",
                  description={"tokenizer": str(tmp_path / "vq.safetensors")}, show_progress=False)  # fmt: skip
    info = CodesDataset(codes).info
    assert info.conditioning == "t2i" and info.images == 12 and info.class_names == []
    config = generator_config_for(info, GPTConfig(dim=32, n_layer=1, n_head=2, multiple_of=8), encoder)
    assert (config.model_type, config.cls_token_num, config.caption_dim) == ("t2i", 12, 32)
    with pytest.raises(ValueError, match="train with a text encoder"):
        train_gpt(config, GPTTrainingConfig(steps=2, batch_size=4), codes, tmp_path / "no-encoder", show_progress=False)
    training = GPTTrainingConfig(steps=2, batch_size=4, bf16=False, log_every=1)
    train_gpt(config, training, codes, tmp_path / "run", text_encoder=encoder, show_progress=False)

    pipe = load_pipeline(tmp_path / "run" / "final.safetensors")  # the file names its tokenizer and encoder
    output = pipe(prompts=["a red star", "a blue circle on the left"], num_images_per_condition=2, seed=1)
    assert output.pixels.shape == (4, 3, 16, 16) and output.conditions[2] == "a blue circle on the left"
    again = pipe(prompts=["a red star", "a blue circle on the left"], num_images_per_condition=2, seed=1)
    assert torch.equal(output.tokens, again.tokens)
    assert pipe(prompts=["a red star " * 10]).notes  # cut, and said so
    with pytest.raises(ValueError, match=r"prompt\(s\) \[1\] are empty"):
        pipe(prompts=["a red star", "  "])
    with pytest.raises(ValueError, match="text-conditional: give prompts"):
        pipe(class_labels=[1])


@pytest.fixture(scope="module")
def tiny_t5_folder(tmp_path_factory):
    """A FLAN-T5 stand-in as save_pretrained writes one: a 1-layer encoder and a sentencepiece tokenizer
    trained here on a few sentences (the real model is 2048 wide; its folder loads the same way)."""
    import sentencepiece
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    folder = tmp_path_factory.mktemp("t5")
    sentences = ["a red star in the corner", "a picture of a blue circle", "green square on a white background"]
    (folder / "text.txt").write_text("\n".join(sentences * 20))
    sentencepiece.SentencePieceTrainer.train(input=str(folder / "text.txt"), model_prefix=str(folder / "spiece"),
                                             vocab_size=30, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                             minloglevel=2)  # fmt: skip
    T5Tokenizer(vocab_file=str(folder / "spiece.model"), extra_ids=0).save_pretrained(folder / "flan-t5")
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=30, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(
        folder / "flan-t5"
    )
    return folder / "flan-t5"


def test_flan_t5_features_are_left_padded_to_120(tiny_t5_folder):
    encoder = load_text_encoder(f"t5:{tiny_t5_folder}")
    assert (encoder.context_length, encoder.width) == (120, 16)
    encoded = encoder.encode(["a red star", "a blue circle " * 60])
    assert encoded.features.shape == (2, 120, 16)
    ids = encoder.tokenizer("a red star", return_tensors="pt")["input_ids"]
    alone = encoder.model(input_ids=ids).last_hidden_state[0]
    n = ids.shape[1]
    assert encoded.mask[0].sum() == n and encoded.mask[0, -n:].all()
    torch.testing.assert_close(encoded.features[0, -n:], alone, rtol=1e-4, atol=1e-5)
    assert encoded.features[0, :-n].abs().max() == 0
    assert len(encoded.notes) == 1 and encoded.notes[0].startswith("prompt 1 has")
    with pytest.raises(FileNotFoundError, match="no FLAN-T5 folder"):
        load_text_encoder("t5:/nowhere/flan-t5-xl")


def test_a_text_generator_ships_with_its_clip_and_is_scored_on_captions(tmp_path, monkeypatch):
    """`export clip` then `export gpt` of a text-conditional run: both loadable by name, the generator naming its
    CLIP and tokenizer by their embedded names, its card scored on captions seen and held out."""
    from llamagen import checkpoints
    from llamagen.data.codes import extract_codes
    from llamagen.data.shapes import Shapes
    from llamagen.gpt import GPTConfig
    from llamagen.pipeline import load_pipeline
    from llamagen.tokenizer import VQModel, vq_preset
    from llamagen.training.clip import ClipTrainingConfig, train_clip
    from llamagen.training.export import export_generator, export_text_encoder
    from llamagen.training.gpt import GPTTrainingConfig, generator_config_for, train_gpt

    assets = tmp_path / "assets"
    assets.mkdir()
    for suffix in (".safetensors", ".json"):  # the real judge scores the samples
        shutil.copy(checkpoints.ASSETS_DIR / f"shapes-judge{suffix}", assets)
    monkeypatch.setattr(checkpoints, "ASSETS_DIR", assets)
    # The judge reads 64x64 images: a random downsample-8 tokenizer of 8x8 tokens, a CLIP that sees 64x64.
    torch.manual_seed(0)
    tokenizer = VQModel(vq_preset("VQ-8-tiny", codebook_size=64)).eval()
    save(tokenizer, assets / "tiny-vq.safetensors")
    (assets / "tiny-vq.json").write_text('{"kind": "vq"}')
    clip_config = ClipConfig.from_dict({**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "image_size": 64,
                                                                    "patch_size": 16}})  # fmt: skip
    clip_training = ClipTrainingConfig(steps=2, batch_size=8, warmup_steps=1, log_every=1, bf16=False)
    train_clip(clip_config, clip_training, Shapes(size=64, captioned=True), tmp_path / "clip",
               show_progress=False, command="llamagen train clip ...")  # fmt: skip
    clip_card = export_text_encoder(tmp_path / "clip", "tiny-clip", "captioned shapes", assets_dir=assets,
                                    retrieval_images=20)  # fmt: skip
    evaluation = clip_card["evaluation"]
    assert clip_card["kind"] == "clip" and evaluation["candidates"] == 20
    assert 0 <= evaluation["text_to_image_top1"] <= 1 and 0 <= evaluation["image_to_text_top1"] <= 1
    assert set(evaluation["right_word"]) == set(evaluation["right_word_held_out_pairs"]) == {"shape", "colour"}
    encoder = load_text_encoder("tiny-clip")

    codes = tmp_path / "codes.safetensors"
    extract_codes(tokenizer, Shapes(size=64, captioned=True), codes, 64, count=12, condition="caption",
                  description={"tokenizer": "tiny-vq"}, show_progress=False)  # fmt: skip
    from llamagen.data.codes import CodesDataset

    config = generator_config_for(CodesDataset(codes).info, GPTConfig(dim=32, n_layer=1, n_head=2, multiple_of=8),
                                  encoder)  # fmt: skip
    training = GPTTrainingConfig(steps=2, batch_size=4, bf16=False, log_every=1)
    train_gpt(config, training, codes, tmp_path / "t2i", text_encoder=encoder, show_progress=False,
              command="llamagen train gpt ...")  # fmt: skip
    card = export_generator(tmp_path / "t2i", "tiny-t2i", "captioned shapes", cfg_scales=(1.0, 2.0), captions=6,
                            assets_dir=assets, text_encoder="tiny-clip")  # fmt: skip
    scores = card["evaluation"]
    assert (card["tokenizer"], card["text_encoder"]) == ("tiny-vq", "tiny-clip")
    # The codes were made here without a command to record, so the card starts at the training's.
    assert card["reproduce"][0] == "llamagen train gpt ..." and len(card["reproduce"]) == 2
    assert card["reproduce"][1].startswith(f"llamagen export gpt {tmp_path / 't2i'} --name tiny-t2i ")
    assert card["sampling"]["cfg_scale"] == scores["best_cfg_scale"]
    assert [row["cfg_scale"] for row in scores["by_cfg_scale"]] == [1.0, 2.0] and scores["best_cfg_scale"] in (1, 2)
    assert all(0 <= row["accuracy_all_stated"] <= 1 and row["clip_score"] >= 0 for row in scores["by_cfg_scale"])
    assert scores["held_out_pairs_at_best_cfg_scale"]["images"] == 6
    pipe = load_pipeline("tiny-t2i")
    assert pipe(prompts=["a red star"]).pixels.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="not an embedded model: export it first"):
        export_generator(tmp_path / "t2i", "other", "captioned shapes", assets_dir=assets,
                         text_encoder=str(tmp_path / "clip" / "final.safetensors"))  # fmt: skip


def test_clip_score_is_a_hundred_times_the_cosine_clamped_at_zero(monkeypatch):
    """Against open_clip's own towers and cosine, and on stand-in embeddings with known angles. Checked by hand
    once: a version without the normalisation of either embedding, or without the clamp, fails here."""
    encoder = load_text_encoder("shapes-clip")
    from llamagen.data.shapes import Shapes

    shapes = Shapes(size=encoder.model.visual.image_size[0], captioned=True, seed=5)
    items = [shapes[i] for i in range(6)]
    images, prompts = torch.stack([item["image"] for item in items]), [item["caption"] for item in items]
    ids, _, _ = encoder.token_ids(prompts)
    with torch.no_grad():
        cosine = F.cosine_similarity(encoder.model.encode_image(images), encoder.model.encode_text(ids), dim=-1)
    torch.testing.assert_close(encoder.clip_score(images, prompts), 100 * cosine.clamp(min=0))
    shuffled = prompts[1:] + prompts[:1]
    assert encoder.clip_score(images, prompts).mean() > encoder.clip_score(images, shuffled).mean()

    angles = torch.tensor([0.0, 60.0, 90.0, 180.0]).deg2rad()
    monkeypatch.setattr(encoder, "embed_images", lambda images: torch.tensor([[1.0, 0.0]]).expand(4, 2))
    monkeypatch.setattr(encoder, "embed_text", lambda prompts: torch.stack([angles.cos(), angles.sin()], dim=1))
    torch.testing.assert_close(encoder.clip_score(None, [""] * 4), torch.tensor([100.0, 50.0, 0.0, 0.0]))
