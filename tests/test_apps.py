"""The Gradio apps through their API, as `gradio_client` calls them: every endpoint, bad inputs included, and
eight generate calls at once. The app runs in this process with the embedded models and a tiny
text-to-image generator that a models file adds."""

import io
import json
import logging
import re
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from helpers import small, small_tokenizer, tiny_encoder, tiny_motion_generator
from PIL import Image

from llamagen import save
from llamagen.analysis.codebook import code_counts
from llamagen.analysis.pictures import labelled_rows
from llamagen.apps.conditioning_tab import CAPTION_ROLES, GENERATED, HELD_OUT
from llamagen.checkpoints import embedded_card
from llamagen.images import tensor_to_pil
from llamagen.metrics import code_perplexity
from llamagen.pipeline import decode_tokens, image_grid, load_pipeline
from llamagen.tokenizer.reconstruction import reconstruct

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow

WAIT_S = 300
SAMPLING = {"cfg_scale": 4.0, "cfg_interval": -1, "cfg_schedule": "constant", "top_k": 0, "top_p": 1.0,
            "temperature": 1.0}  # fmt: skip


@pytest.fixture(scope="module")
def models_file(tmp_path_factory):
    """A models file naming a tiny random text-to-image generator (its tokenizer and CLIP beside it), and a tiny
    random text-to-motion generator read by the embedded motion judge."""
    folder = tmp_path_factory.mktemp("models")
    save(small_tokenizer(codebook_size=97), folder / "vq.safetensors")
    save(tiny_encoder(), folder / "clip.safetensors")
    metadata = {"tokenizer": str(folder / "vq.safetensors"), "text_encoder": str(folder / "clip.safetensors")}
    save(small(model_type="t2i", caption_dim=32, cls_token_num=12), folder / "t2i.safetensors", metadata=metadata)
    motion = tiny_motion_generator(folder)
    spec = {
        "generators": {"tiny-t2i": {"gpt": str(folder / "t2i.safetensors")}},
        "device": "cpu",
        "motion_generators": {"tiny-motion": {"gpt": str(motion), "judge": "motion-judge"}},
    }
    (folder / "models.json").write_text(json.dumps(spec))
    return folder / "models.json"


@pytest.fixture(scope="module")
def client(models_file, tmp_path_factory):
    from llamagen.apps import launch
    from llamagen.apps.models import ModelRegistry

    registry = ModelRegistry.embedded().add_from_file(models_file)
    app, url = launch(registry, port=_free_port())
    try:
        yield gradio_client.Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    finally:
        app.close()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def png(path) -> np.ndarray:
    """The pixels of a PNG file the app sent (refusing anything else: the apps must not send lossy WebP)."""
    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return np.asarray(Image.open(path).convert("RGB"))


def generate_call(client, seed: int, classes=("3",), count: int = 2, model="digits-c2i", prompt=""):
    options = SAMPLING.values()
    return client.predict(model, list(classes), prompt, *options, seed, count, api_name="/generate")


def expected_images(seed: int, classes=("3",), count: int = 2) -> list[np.ndarray]:
    pipe = load_pipeline("digits-c2i", device="cpu")
    output = pipe(class_labels=list(classes), seed=seed, num_images_per_condition=count, **SAMPLING)
    return [np.asarray(image) for image in output.images]


def test_generate_sends_the_pipelines_images_as_png(client):
    gallery, grids, sheet, timing = generate_call(client, seed=5, classes=("3", "7"), count=2)
    images = [png(item["image"]) for item in gallery]
    assert [item["caption"] for item in gallery] == ["3", "3", "7", "7"]
    for got, expected in zip(images, expected_images(5, ("3", "7"), 2), strict=True):
        assert got.shape == (32, 32, 3) and got.std() > 5 and np.array_equal(got, expected)
    assert len(grids) == 4 and png(grids[0]["image"]).shape == (128, 128, 3)  # 8x8 tokens, 16 pixels each
    assert png(sheet).shape == (2 + 2 * 34, 2 + 2 * 34, 3)  # a row per class, 2-pixel padding
    assert re.search(r"4 images of 32x32 pixels \(64 tokens each\) in [\d.]+ s: \*\*[\d.]+ s per image", timing)


def test_generate_decodes_in_parallel_when_asked(client):
    """A window of draft tokens per model call: the pipeline's images for that window and seed, in fewer calls
    than tokens, said in the summary; a window past the slider's end is refused."""
    gallery, _, _, timing = client.predict("digits-c2i", ["3"], "", *SAMPLING.values(), 5, 2, 8, api_name="/generate")
    pipe = load_pipeline("digits-c2i", device="cpu")
    output = pipe(class_labels=["3"], seed=5, num_images_per_condition=2, jacobi_window=8, **SAMPLING)
    for item, expected in zip(gallery, output.images, strict=True):
        assert np.array_equal(png(item["image"]), np.asarray(expected))
    calls = int(re.search(r", (\d+) model calls", timing).group(1))
    assert 0 < calls < 63  # fewer than one a token after the first
    with pytest.raises(Exception, match="Value 17 is greater than maximum value 16"):
        client.predict("digits-c2i", ["3"], "", *SAMPLING.values(), 5, 2, 17, api_name="/generate")


def test_text_generator_takes_a_prompt_and_refuses_an_empty_one(client):
    gallery, _, _, _ = generate_call(client, seed=0, classes=(), count=3, model="tiny-t2i", prompt="a red star")
    assert len(gallery) == 3 and png(gallery[0]["image"]).shape == (16, 16, 3)
    assert gallery[0]["caption"] == "a red star"
    with pytest.raises(Exception, match="the prompt is empty"):
        generate_call(client, seed=0, classes=(), model="tiny-t2i", prompt="   ")
    classes, prompt, *_ = client.predict("tiny-t2i", api_name="/model_inputs")
    assert classes["visible"] is False and prompt["visible"] is True
    # Back to the class-conditional generator: the app checks this client's classes against its choices again.
    classes, prompt, *_ = client.predict("digits-c2i", api_name="/model_inputs")
    assert classes["visible"] is True and prompt["visible"] is False and len(classes["choices"]) == 10


def _card_settings(name: str) -> list:
    sampling = embedded_card(name)["sampling"]
    return [sampling["cfg_scale"], -1, "constant", sampling["top_k"], sampling["top_p"], sampling["temperature"]]


@pytest.mark.parametrize(
    ("model", "expected", "source"),
    [
        # Embedded generators: their cards' best guidance scale (shapes-c2i's judge: 95.4% right at 2, 82.1% at 4).
        ("shapes-c2i", [2.0, -1, "constant", 0, 1.0, 1.0], "shapes-c2i's card"),
        ("digits-c2i", _card_settings("digits-c2i"), "digits-c2i's card"),
        # A file without a card: the original's sample_t2i.py (its top-k of 1000 keeps all 97 codes: 0).
        ("tiny-t2i", [7.5, -1, "constant", 0, 1.0, 1.0], "the original's sample_t2i.py defaults"),
    ],
)
def test_choosing_a_generator_sets_its_own_sampling_defaults_and_clears_the_results(client, model, expected, source):
    _, _, *values, note, gallery, grids, sheet, timing = client.predict(model, api_name="/model_inputs")
    assert values == expected and source in note
    assert not gallery and not grids and sheet is None and not timing


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"classes": ()}, "pick at least one class"),
        ({"classes": ("3",) * 9}, "9 classes x 2 images is over the limit of 16"),
        ({"classes": ("eleven",)}, "unknown class 'eleven'"),
        ({"cfg_interval": 1000}, "guidance interval must be between -1 and 64"),
        ({"top_k": -1}, "top-k must be between 0 and"),
        ({"top_k": 10**6}, "top-k must be between 0 and"),
        ({"seed": -3}, "seed must be between"),
        # Gradio itself refuses values outside a slider's bounds, with a message that says so.
        ({"cfg_scale": 99.0}, "Value 99.0 is greater than maximum value 20.0"),
        ({"top_p": 0.0}, "Value 0.0 is less than minimum value 0.05"),
        ({"temperature": -1.0}, "Value -1.0 is less than minimum value 0.0"),
        ({"count": 0}, "Value 0 is less than minimum value 1"),
    ],
)
def test_generate_refuses_out_of_range_values_sent_through_the_api(client, change, message):
    values = {"classes": ["3"], **SAMPLING, "seed": 0, "count": 2, **change}
    args = ["digits-c2i", list(values.pop("classes")), "", *[values[k] for k in SAMPLING], values["seed"]]
    with pytest.raises(Exception, match=re.escape(message)):
        client.predict(*args, values["count"], api_name="/generate")


def test_eight_concurrent_generate_calls_all_complete_correctly(client):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda seed: generate_call(client, seed, count=1), range(8)))
    for seed, (gallery, _, _, _) in enumerate(results):
        assert np.array_equal(png(gallery[0]["image"]), expected_images(seed, count=1)[0])


def test_a_generation_does_not_wait_behind_a_reconstruction(client, tmp_path):
    """Generators and tokenizers queue apart: while two reconstructions of a photo are running or waiting, a
    generation is served at once, before either of them is done. (With one queue of two places for both, it
    waited until a reconstruction ended.)"""
    from gradio_client.utils import Status

    from llamagen.data.samples import sample_image

    photo = tmp_path / "photo.png"
    sample_image("coffee").resize((700, 700)).save(photo)  # seconds of work
    running = (Status.PROCESSING, Status.PROGRESS)  # a reconstruction reports its progress while it runs

    def wait_until(job, states: tuple) -> None:
        deadline = time.monotonic() + WAIT_S
        while job.status().code not in states:
            assert not job.done(), f"the reconstruction ended before it was seen in {states}"
            assert time.monotonic() < deadline, f"the reconstruction was not seen in {states} within {WAIT_S} s"
            time.sleep(0.05)

    generate_call(client, seed=0, count=1)  # the generator loaded before the clock starts
    slow = []
    for _ in range(2):  # one at a time: the first running before the second is queued behind it
        slow.append(client.submit("photo-vq", gradio_client.handle_file(str(photo)), api_name="/reconstruct"))
        wait_until(slow[-1], (*running, Status.IN_QUEUE))
    wait_until(slow[0], running)
    quick = client.submit("digits-c2i", ["3"], "", *SAMPLING.values(), 0, 1, api_name="/generate")
    gallery, *_ = quick.result(timeout=WAIT_S)
    assert not any(job.done() for job in slow)
    assert np.array_equal(png(gallery[0]["image"]), expected_images(0, count=1)[0])
    for job in slow:
        assert "dB" in job.result(timeout=WAIT_S)[3]


def test_reconstruct_reports_the_librarys_numbers(client, tmp_path):
    sample = client.predict("shapes 1", api_name="/sample")
    reconstruction, errors, codes, numbers = client.predict(
        "shapes-vq", gradio_client.handle_file(sample), api_name="/reconstruct"
    )
    from llamagen.tokenizer.loading import load_tokenizer

    expected = reconstruct(load_tokenizer("shapes-vq", device="cpu", dtype="auto"), Image.open(sample).convert("RGB"))
    assert np.array_equal(png(reconstruction), np.asarray(expected.reconstruction))
    assert f"{expected.psnr:.2f} dB" in numbers and f"{expected.ssim:.4f}" in numbers
    assert "8x8 = 64" in numbers and f"{expected.distinct_codes} (" in numbers
    assert png(errors).shape == (64, 64, 3) and png(codes).shape == (256, 256, 3)  # 8 cells of 32 pixels


MAGENTA = (255, 0, 255)


def test_token_surgery_edits_one_cell_and_frames_it(client):
    sample = client.predict("shapes 1", api_name="/sample")
    image = gradio_client.handle_file(sample)
    reconstruction, *_ = client.predict("shapes-vq", image, api_name="/reconstruct")
    edited, changed, note = client.predict("shapes-vq", image, 2, 5, "nearest neighbour", 1, api_name="/edit_token")
    old, new = map(int, re.search(r"code (\d+) -> (\d+)", note).groups())
    assert "cell (row 2, column 5), pixels 40..47 across and 16..23 down" in note and old != new
    changed_pixels = int(re.search(r"([\d,]+) of 4,096 pixels changed", note).group(1).replace(",", ""))
    assert 0 < changed_pixels <= 4096
    # Shown 4x (64 -> 256 pixels, nearest neighbour): the cell, pixels 40..47 x 16..23, is 160..191 x 64..95,
    # framed by two magenta pixels on each side, outside it.
    edited, changed, before = png(edited), png(changed), png(reconstruction).repeat(4, 0).repeat(4, 1)
    assert edited.shape == changed.shape == (256, 256, 3)
    for picture in (edited, changed):
        assert (picture[62:98, 158:160] == MAGENTA).all() and (picture[62:98, 192:194] == MAGENTA).all()
        assert (picture[62:64, 158:194] == MAGENTA).all() and (picture[96:98, 158:194] == MAGENTA).all()
    frame = np.zeros((256, 256), bool)
    frame[62:98, 158:194], frame[64:96, 160:192] = True, False
    difference = np.abs(edited.astype(int) - before.astype(int)).sum(-1)
    assert difference[~frame].any() and (changed[~frame].sum(-1) > 0).any()
    assert difference[64:96, 160:192].mean() > difference[:, :96].mean()  # the edit shows most where the cell is
    same, unchanged, note = client.predict("shapes-vq", image, 2, 5, "code index", old, api_name="/edit_token")
    assert np.array_equal(png(same)[~frame], before[~frame]) and f"code {old} -> {old}" in note
    assert "0 of 4,096 pixels changed, the most by 0.0 levels" in note
    assert (png(unchanged)[~frame] <= 4).all()  # black (inferno at 0 is 0, 0, 4): nothing changed
    with pytest.raises(Exception, match="row must be between 0 and 7"):
        client.predict("shapes-vq", image, 8, 0, "code index", 3, api_name="/edit_token")
    with pytest.raises(Exception, match="code must be between 0 and 511"):
        client.predict("shapes-vq", image, 0, 0, "code index", 512, api_name="/edit_token")


def test_an_edit_from_the_sessions_kept_codes_equals_one_that_tokenizes_the_image_again(tmp_path):
    from llamagen.apps.models import ModelRegistry
    from llamagen.apps.reconstruct_tab import edit_token, reconstruct_image
    from llamagen.data.samples import sample_image

    registry = ModelRegistry.embedded()
    path = tmp_path / "photo.png"
    sample_image("coffee").resize((96, 64)).save(path)
    *_, kept = reconstruct_image(registry, {}, "photo-vq", str(path))
    from_kept = edit_token(registry, "photo-vq", str(path), 3, 7, "nearest neighbour", 2, kept)
    afresh = edit_token(registry, "photo-vq", str(path), 3, 7, "nearest neighbour", 2, None)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(from_kept[:2], afresh[:2], strict=True))
    assert from_kept[2] == afresh[2] and torch.equal(from_kept[3].codes, kept.codes)


def test_a_reconstruction_announces_how_long_an_image_of_its_size_takes(tmp_path):
    """Gradio's own estimate is the mean of past durations whatever the size; the page says what this size
    costs, from the line through this server's runs (tests/test_durations.py checks the line)."""
    from llamagen.apps.durations import DurationModel, describe_estimate
    from llamagen.apps.models import ModelRegistry
    from llamagen.apps.reconstruct_tab import reconstruct_image
    from llamagen.data.samples import sample_image

    registry, durations, said = ModelRegistry.embedded(), {}, []
    sizes = ((64, 48), (128, 96), (96, 64))
    for width, height in sizes:
        path = tmp_path / f"{width}.png"
        sample_image("coffee").resize((width, height)).save(path)
        expected = durations.get("photo-vq", DurationModel()).estimate(width * height)
        reconstruct_image(registry, durations, "photo-vq", str(path), progress=lambda _, desc: said.append(desc))
        assert said[-1] == describe_estimate(expected, width, height, "photo-vq")
    assert "no estimate yet" in said[0] and all("about" in desc for desc in said[1:])
    assert [pixels for pixels, _ in durations["photo-vq"]._runs] == [width * height for width, height in sizes]


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says width x height: what a decompression bomb shows before its pixels."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's data starts at byte 16; its CRC covers bytes 12..28
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()[:2000]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"notes, not pixels", "the uploaded image is not an image that PIL can read"),
        (truncated_png(), "the uploaded image is truncated or corrupt"),
        (png_claiming(40_000, 40_000), "the uploaded image is far over the size limit of 1 megapixel"),
        (png_claiming(2000, 1000), "the uploaded image is 2000x1000 = 2,000,000 pixels; the limit is 1,000,000"),
    ],
    ids=["not-an-image", "truncated", "bomb", "too-large"],
)
def test_a_broken_upload_gets_the_clis_message_one_log_line_and_no_internals(client, tmp_path, caplog, capfd,
                                                                             content, message):  # fmt: skip
    upload = tmp_path / "upload.png"
    upload.write_bytes(content)
    with caplog.at_level(logging.INFO, logger="llamagen.apps"), pytest.raises(Exception) as refused:
        client.predict("shapes-vq", gradio_client.handle_file(str(upload)), api_name="/reconstruct")
    shown = str(refused.value)
    assert message in shown and str(tmp_path) not in shown and "gradio" not in shown.lower(), shown
    assert [record.getMessage() for record in caplog.records] == [f"refused reconstruct_image: {shown}"]
    assert "Traceback" not in capfd.readouterr().err


def test_reconstruct_refuses_huge_images_and_takes_odd_ones(client, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("RGB", (1500, 1000), (10, 200, 30)).save(huge)
    with pytest.raises(Exception, match=r"1500x1000 = 1,500,000 pixels; the limit is 1,000,000 pixels \(1 megapixel\)"):
        client.predict("photo-vq", gradio_client.handle_file(str(huge)), api_name="/reconstruct")
    with pytest.raises(Exception, match="no image: upload one or pick a sample"):
        client.predict("photo-vq", None, api_name="/reconstruct")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (5, 3, 4), dtype=np.uint8), "RGBA").save(tiny)
    reconstruction, _, _, numbers = client.predict(
        "shapes-vq", gradio_client.handle_file(str(tiny)), api_name="/reconstruct"
    )
    assert png(reconstruction).shape == (5, 3, 3) and "n/a (image under 11 pixels)" in numbers


def test_guidance_rows_keep_the_seed_across_scales(client):
    rows = client.predict("digits-c2i", "4", "", "1, 3", 3, 11, api_name="/guidance_rows")
    pipe = load_pipeline("digits-c2i", device="cpu")
    grids = [pipe(class_labels=["4"], cfg_scale=s, seed=11, num_images_per_condition=3).grid(3) for s in (1.0, 3.0)]
    assert np.array_equal(png(rows), np.asarray(labelled_rows(grids, ["guidance 1", "guidance 3"])))
    with pytest.raises(Exception, match="give 1 to 8 guidance scales"):
        client.predict("digits-c2i", "4", "", " , ", 3, 11, api_name="/guidance_rows")


def test_class_blends_start_and_end_at_the_two_classes(client):
    blends = client.predict("digits-c2i", "2", "5", 3, 4.0, 9, api_name="/interpolate_classes")
    assert [b["caption"] for b in blends] == ["w = 0.00", "w = 0.50", "w = 1.00"]
    pipe = load_pipeline("digits-c2i", device="cpu")
    for blend, label in ((blends[0], "2"), (blends[2], "5")):
        expected = pipe(class_labels=[label], cfg_scale=4.0, seed=9).images[0]
        assert np.array_equal(png(blend["image"]), np.asarray(expected))
    with pytest.raises(Exception, match="needs a class-conditional generator"):
        client.predict("tiny-t2i", None, None, 3, 4.0, 9, api_name="/interpolate_classes")


def test_caption_comparison_needs_a_text_generator(client, models_file):
    rows = client.predict("tiny-t2i", "a red star", "a star, red", "a star", 2.0, 2, 0, api_name="/compare_captions")
    pipe = load_pipeline(json.loads(models_file.read_text())["generators"]["tiny-t2i"]["gpt"], device="cpu")
    grids = [
        pipe(prompts=[p], cfg_scale=2.0, num_images_per_condition=2).grid(2)
        for p in ("a red star", "a star, red", "a star")
    ]
    assert np.array_equal(png(rows), np.asarray(labelled_rows(grids, list(CAPTION_ROLES))))
    with pytest.raises(Exception, match="needs a text-conditional generator"):
        client.predict("digits-c2i", "a", "b", "c", 2.0, 2, 0, api_name="/compare_captions")


@pytest.mark.parametrize(("model", "class_name", "prompt"), [("digits-c2i", "6", ""), ("tiny-t2i", None, "a star")])
def test_the_condition_use_tab_shows_the_librarys_measures(client, models_file, model, class_name, prompt):
    """The tab's numbers are those of `condition_use`, `loss_gaps` and `prefix_attention` under the condition, the
    null one and a wrong one, on the image the pipeline makes with that seed (the measures are checked on models
    with known answers in test_condition_use)."""
    from llamagen.analysis.attention import prefix_attention
    from llamagen.analysis.condition_use import condition_use, loss_gaps

    image, picture, summary = client.predict(model, class_name, prompt, GENERATED, 0, 4.0, 1, api_name="/condition_use")
    source = model if model == "digits-c2i" else json.loads(models_file.read_text())["generators"][model]["gpt"]
    pipe = load_pipeline(source, device="cpu")
    condition, wrong = (
        ({"class_labels": [6]}, {"class_labels": [7]})
        if class_name
        else ({"prompts": [prompt]}, {"prompts": ["a cross"]})
    )
    output = pipe(**condition, cfg_scale=4.0, seed=1)
    cond, cond_mask, _, _ = pipe.encode_conditions(**condition)
    other, other_mask, described, _ = pipe.encode_conditions(**wrong)
    assert f"the wrong one {described[0]!r}" in summary
    kl = condition_use(pipe.gpt, output.tokens, cond, cond_mask).kl[0]
    grid = pipe.gpt.config.grid_size
    assert f"nats: {kl.sum():.3f} in all, per row of the grid " in summary
    assert ", ".join(f"{value:.3f}" for value in kl.view(grid, grid).mean(1)) in summary
    gaps = loss_gaps(pipe.gpt, output.tokens, cond, other, cond_mask, other_mask)
    assert f"{gaps['true'][0]:.3f} under the condition, {gaps['null'][0]:.3f} under the null one, " in summary
    assert f"{gaps['wrong'][0]:.3f} under the wrong one" in summary
    for name, prefix, mask in (("null", pipe.gpt.unconditional(cond), cond_mask), ("wrong", other, other_mask)):
        share = prefix_attention(pipe.gpt, output.tokens, prefix, mask)[:, 0].float().mean(1)
        shown = "the null condition" if name == "null" else "the wrong one"
        assert f"under {shown}: " + ", ".join(f"{value:.3f}" for value in share) in summary
    assert np.array_equal(png(image), np.asarray(output.images[0]))
    assert png(picture).shape[1] > png(picture).shape[0]


def test_the_condition_use_tab_reads_held_out_real_images_of_the_class(client):
    """A held-out real 3 of the digits' test split: the tab measures its tokens under the class "3", and the
    image it shows is those tokens decoded."""
    from llamagen.analysis.condition_use import condition_use
    from llamagen.evaluation.judges import held_out

    image, _, summary = client.predict("digits-c2i", "3", "", HELD_OUT, 2, 4.0, 0, api_name="/condition_use")
    pipe = load_pipeline("digits-c2i", device="cpu")
    images, labels = held_out("digits")
    third = images[(labels["digit"] == 3).nonzero()[2, 0]][None]
    tokens = pipe.tokenizer.tokenize(third).flatten(1)
    kl = condition_use(pipe.gpt, tokens, torch.tensor([3])).kl[0]
    assert (
        summary.startswith("A held-out real image: condition '3', the wrong one '4'.")
        and f"nats: {kl.sum():.3f} in all" in summary
    )
    assert np.array_equal(png(image), np.asarray(image_grid(decode_tokens(pipe.tokenizer, tokens))))
    with pytest.raises(Exception, match="has no held-out real images here"):
        client.predict("tiny-t2i", None, "a star", HELD_OUT, 0, 4.0, 0, api_name="/condition_use")
    with pytest.raises(Exception, match="held-out image"):
        client.predict("digits-c2i", "3", "", HELD_OUT, 10**6, 4.0, 0, api_name="/condition_use")


def test_the_complete_tab_continues_a_held_out_image_as_the_library_does(client):
    """A held-out real digit picked by number, its first 3 of 8 token rows kept under another class: each
    completion is the pipeline's, framed where the kept rows end, and the judge's reading of it is its caption;
    the page's state keeps the picked image's class. Every row kept gives back the image as the tokenizer
    reconstructs it."""
    from llamagen.apps.complete_tab import CHOSEN, NULL, SHOWN_WIDTH
    from llamagen.evaluation.generation import read_images
    from llamagen.evaluation.judges import held_out, load_judge

    image, shown_class, _ = client.predict("digits-c2i", 5, api_name="/held_out_pick")
    images, labels = held_out("digits")
    own = int(labels["digit"][5])
    assert shown_class == str(own) and np.array_equal(png(image), np.asarray(tensor_to_pil(images[5:6])[0]))
    other = str((own + 1) % 10)
    gallery, summary = client.predict("digits-c2i", gradio_client.handle_file(image), 3, other, "", CHOSEN, 4.0, 7, 2,
                                      api_name="/complete")  # fmt: skip
    pipe = load_pipeline("digits-c2i", device="cpu")
    output = pipe(class_labels=[other], images=Image.open(image), keep_rows=3, cfg_scale=4.0, seed=7,
                  num_images_per_condition=2)  # fmt: skip
    read = [str(int(d)) for d in read_images(load_judge("digits-judge"), output.pixels).predicted["digit"]]
    scale = SHOWN_WIDTH // 32
    for item, expected, reading in zip(gallery, output.images, read, strict=True):
        got = png(item["image"])
        assert got.shape == (SHOWN_WIDTH, SHOWN_WIDTH, 3)
        # Below the frame (3 token rows of 4 pixels, enlarged), the completion's own pixels, unmarked.
        kept = 3 * 4 * scale
        assert np.array_equal(got[kept:], np.asarray(expected)[3 * 4 :].repeat(scale, 0).repeat(scale, 1))
        assert (got[kept - 1] == (255, 0, 255)).all()  # the frame's bottom edge
        assert item["caption"].endswith(f": read as {reading}")
    assert summary.startswith(f"2 completions of the first 3 of 8 token rows (24 of 64 tokens kept, framed) under "
                              f"'{other}' (the image's own is '{own}') at guidance 4, seed 7")  # fmt: skip
    assert (f"The judge reads {read.count(str(own))} of 2 as the image's own class ('{own}') and "
            f"{read.count(other)} of 2 as the condition's ('{other}')") in summary  # fmt: skip
    whole, summary = client.predict("digits-c2i", gradio_client.handle_file(image), 8, other, "", NULL, 4.0, 0, 1,
                                    api_name="/complete")  # fmt: skip
    reconstruction = decode_tokens(pipe.tokenizer, pipe.tokenizer.tokenize(pipe.images_to_complete(
        Image.open(image), 1)).flatten(1))  # fmt: skip
    enlarged = np.asarray(tensor_to_pil(reconstruction)[0]).repeat(scale, 0).repeat(scale, 1)
    assert np.array_equal(png(whole[0]["image"])[2:-2, 2:-2], enlarged[2:-2, 2:-2])  # inside the frame around it all
    assert "under the null condition" in summary
    with pytest.raises(Exception, match="greater than maximum value 8"):  # Gradio's slider refuses it first
        client.predict(
            "digits-c2i", gradio_client.handle_file(image), 9, other, "", CHOSEN, 4.0, 0, 1, api_name="/complete"
        )
    with pytest.raises(Exception, match="has no held-out real images here"):
        client.predict("tiny-t2i", 0, api_name="/held_out_pick")


def test_generators_side_by_side_draw_one_seed_each(client):
    figure, table = client.predict(["digits-c2i", "digits-c2i"], "5", "", 2.0, 4, api_name="/side_by_side")
    assert png(figure).shape[1] > 300
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2] == lines[3] and "| digits-c2i | prefix, prefix of 1 |" in lines[2]
    with pytest.raises(Exception, match="pick 1 to 8 generators"):
        client.predict([], "5", "", 2.0, 4, api_name="/side_by_side")
    with pytest.raises(Exception, match="unknown class 'red circle'"):  # a class one of them does not have
        client.predict(["shapes-c2i", "digits-c2i"], "red circle", "", 2.0, 4, api_name="/side_by_side")


def test_the_study_arms_come_side_by_side_each_with_how_its_class_enters(client):
    """The conditioning study's shipped arms, one seed through each: each row names the arm's way in, and its
    KL is the library's reading of the image that arm draws."""
    from llamagen.analysis.reading import read_condition

    arms = ("prefix", "prefix-4", "every-layer", "adaln-zero", "cross-attention")
    names = [f"shapes-c2i-arm-{arm}" for arm in arms]
    _, table = client.predict(names, "red circle", "", 2.0, 3, api_name="/side_by_side")
    rows = table.splitlines()[2:]
    entries = [
        "prefix, prefix of 1",
        "prefix, prefix of 4",
        "every_layer, prefix of 1",
        "adaln_zero, prefix of 1",
        "cross_attention, prefix of 1",
    ]
    assert [row.split(" | ")[1] for row in rows] == entries
    for name, row in zip(names, rows, strict=True):
        pipe = load_pipeline(name)
        tokens = pipe(class_labels=["red circle"], cfg_scale=2.0, seed=3).tokens
        reading = read_condition(pipe, tokens, {"class_labels": ["red circle"]})
        assert row.startswith(f"| {name} |") and f"| {reading.kl.sum():.3f} |" in row


def test_codebook_usage_is_counted_on_the_chosen_images(client):
    scatter, patch, neighbours, summary = client.predict("shapes-vq", "shapes (64)", 7, api_name="/codebook")
    from llamagen.data.samples import image_set
    from llamagen.tokenizer.loading import load_tokenizer

    counts = code_counts(load_tokenizer("shapes-vq", device="cpu", dtype="auto"), image_set("shapes (64)"))
    used = int((counts > 0).sum())
    assert f"4096 tokens use {used} of 512 codes" in summary and f"Code 7 is used {int(counts[7])} times" in summary
    assert f"perplexity {code_perplexity(counts):.1f}" in summary
    assert len(neighbours) == 8 and png(patch).shape == (96, 96, 3) and png(scatter).shape[0] > 300
    with pytest.raises(Exception, match="code must be between 0 and 511"):
        client.predict("shapes-vq", "shapes (64)", 600, api_name="/codebook")


def test_the_motion_tab_animates_the_pipelines_motions_and_says_what_the_judge_reads(client, models_file):
    from llamagen.apps.motion_tab import MAX_CAPTION_CHARACTERS
    from llamagen.motion.pipeline import STUDY_SAMPLING, load_motion_pipeline

    cfg_scale, temperature, top_k, note, *_ = client.predict("tiny-motion", api_name="/motion_inputs")
    assert (cfg_scale, temperature, top_k) == (STUDY_SAMPLING.cfg_scale, 1.0, 0)
    assert "the text-to-motion study's settings" in note and "walk fast" in note
    caption = "a person walks forward slowly, then turns left"
    plot, summary = client.predict("tiny-motion", caption, 3.0, 1.0, 0, 7, 2, api_name="/motion")
    entry = json.loads(models_file.read_text())["motion_generators"]["tiny-motion"]
    pipe = load_motion_pipeline(**entry)
    motions = pipe([caption] * 2, cfg_scale=3.0, temperature=1.0, top_k=0, seed=7)
    figure = json.loads(plot["plot"])
    titles = [note["text"] for note in figure["layout"]["annotations"]]
    drawn = [f"seed {7 + i}" for i, motion in enumerate(motions) if len(motion.features)]
    assert titles == drawn and len(figure["frames"]) == max(len(motion.features) for motion in motions)
    for index, motion in enumerate(motions):
        if len(motion.features):
            reading = pipe.read(motion)
            said = ", then ".join(action.action for action in reading) if reading else "no action"
            assert f"**seed {7 + index}**: {motion.seconds:.1f} s ({len(motion.features)} frames)" in summary
            assert said.split(",")[0] in summary.split(f"seed {7 + index}")[1]
    context = pipe.text_encoder.context_length
    _, summary = client.predict("tiny-motion", "walk " * context, 3.0, 1.0, 0, 7, 1, api_name="/motion")
    said = f"prompt 0 has {context + 2} tokens with its start and end markers; the text encoder reads {context}"
    assert said in summary
    with pytest.raises(Exception, match=f"the limit is {MAX_CAPTION_CHARACTERS}"):
        client.predict("tiny-motion", "walk " * 100, 3.0, 1.0, 0, 7, 2, api_name="/motion")
    with pytest.raises(Exception, match="a caption is empty"):
        client.predict("tiny-motion", "  ", 3.0, 1.0, 0, 7, 2, api_name="/motion")
    with pytest.raises(Exception, match="gone is not in the list of choices"):
        client.predict("gone", caption, 3.0, 1.0, 0, 7, 2, api_name="/motion")


def test_bad_models_files_and_missing_models_are_refused(tmp_path):
    from llamagen.apps.models import ModelRegistry

    (tmp_path / "bad.json").write_text('{"generators": {"x": {"tokenizer": "vq.pt"}}}')
    with pytest.raises(ValueError, match="generator 'x' needs 'gpt'"):
        ModelRegistry().add_from_file(tmp_path / "bad.json")
    (tmp_path / "motion.json").write_text('{"motion_generators": {"m": {"gpt": "m.safetensors", "vq": "x"}}}')
    with pytest.raises(ValueError, match="motion generator 'm' needs 'gpt' and takes only"):
        ModelRegistry().add_from_file(tmp_path / "motion.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read the models file"):
        ModelRegistry().add_from_file(tmp_path / "broken.json")
    (tmp_path / "tokenizer.json").write_text('{"tokenizers": {"t": {"config": "VQ-16"}}}')
    with pytest.raises(ValueError, match="tokenizer 't' is a path, or an object of source and config"):
        ModelRegistry().add_from_file(tmp_path / "tokenizer.json")
    missing = ModelRegistry(generators={"gone": {"gpt": str(tmp_path / "gone.pt"), "tokenizer": "shapes-vq"}})
    with pytest.raises(ValueError, match="cannot load generator 'gone': no checkpoint file"):
        missing.pipeline("gone")


def test_the_demo_command_serves_the_apps_and_prints_their_address(tmp_path):
    """`llamagen demo` (what `make demo` runs) in its own process: it prints the address, and the page answers."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    def ctrl_c_at_its_default():
        # A terminal's foreground job has Ctrl+C at its default, but a test runner started in the background
        # (`make test &`, CI) hands SIGINT on ignored, and Python keeps an inherited ignored SIGINT ignored:
        # the demo would never see the Ctrl+C below (the hang seen in background clean-clone runs).
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    port = _free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path)}
    command = [sys.executable, "-X", "faulthandler", "-m", "llamagen", "demo", "--port", str(port)]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=ctrl_c_at_its_default)  # fmt: skip
    try:
        line = ""
        while "LlamaGen explorer:" not in line:
            line = demo.stdout.readline()
            assert line or demo.poll() is None, "the demo exited before serving"
        assert f"http://127.0.0.1:{port}/" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read(2000).lower()
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl+C
        try:
            said = demo.communicate(timeout=60)[0]  # read on: a demo blocked on a full, unread pipe cannot exit
        except subprocess.TimeoutExpired:
            demo.send_signal(signal.SIGABRT)  # with -X faulthandler: every thread's stack, then exit
            pytest.fail(f"llamagen demo did not stop within 60 s of Ctrl+C; its threads:\n{demo.communicate()[0]}")
    assert demo.returncode == 0, said  # Ctrl+C is the way to stop it, not a crash
