"""The apps in a real browser: Debian's headless Chromium, driven by Playwright, through every tab.

It generates and checks that the images arrive as PNGs of the right size that are not blank, completes a
held-out image, uploads an image to reconstruct, picks a cell by clicking the code map and edits its token, runs
each comparison, maps the codebook, and saves a screenshot of each tab with the test artifacts
(outputs/screenshots by default).

`make test` installs Chromium and sets LLAMAGEN_REQUIRE_BROWSER, so that there a missing browser fails the
test; elsewhere it is skipped with the reason.
"""

import io
import os
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("LLAMAGEN_TEST_ARTIFACTS", "outputs/screenshots"))
WAIT_MS = 120_000

pytestmark = pytest.mark.slow


def _browser_or_skip():
    if CHROMIUM.is_file():
        return
    reason = f"no Chromium at {CHROMIUM} (apt-get install chromium; `make test` does)"
    if os.environ.get("LLAMAGEN_REQUIRE_BROWSER"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def page():
    _browser_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api")

    from llamagen.apps import launch
    from llamagen.apps.models import ModelRegistry

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app, url = launch(ModelRegistry.embedded(), port=port)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        page.goto(url)
        page.get_by_text("LlamaGen explorer").first.wait_for()
        try:
            yield page
        finally:
            browser.close()
            app.close()


def fetched_png(page, selector: str, index: int = 0) -> np.ndarray:
    """The pixels of an image the page shows, fetched from its source, which must be a PNG."""
    source = page.locator(selector).nth(index).get_attribute("src")
    body = page.request.get(source if source.startswith("http") else page.url.rstrip("/") + source).body()
    assert body[:8] == b"\x89PNG\r\n\x1a\n", f"{selector} [{index}] is not a PNG: {source}"
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def guidance_shown(page) -> float:
    return float(page.locator("#generate-cfg-scale input[type=number]").input_value())


def choose(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_generate_tab(page):
    from llamagen.checkpoints import embedded_card

    open_tab(page, "Generate")
    # The first generator's own best guidance scale, from its card, and the note that says where it comes from.
    assert guidance_shown(page) == embedded_card("digits-c2i")["sampling"]["cfg_scale"]
    assert "digits-c2i's card" in page.locator("#generate-defaults").inner_text()
    page.click("#generate-button")
    page.wait_for_function("document.querySelectorAll('#generate-gallery img').length >= 4")
    page.locator("#generate-timing", has_text="s per image").wait_for()
    for index in range(4):
        image = fetched_png(page, "#generate-gallery img", index)
        assert image.shape == (32, 32, 3) and image.std() > 5
    # Each caption in a line of its own, under its image.
    image_box = page.locator("#generate-gallery .thumbnail-item img").first.bounding_box()
    caption_box = page.locator("#generate-gallery .caption-label").first.bounding_box()
    assert caption_box["y"] >= image_box["y"] + image_box["height"] - 1
    page.screenshot(path=ARTIFACTS / "generate.png", full_page=True)
    # Parallel decoding: a window of 8 drafts a call, and the summary counts the calls.
    window = page.locator("#generate-jacobi-window input[type=number]")
    window.fill("8")
    window.press("Enter")
    page.click("#generate-button")
    page.locator("#generate-timing", has_text="model calls").wait_for()
    assert page.locator("#generate-gallery img").count() >= 4
    # Another generator: its own guidance, and the last one's images gone.
    choose(page, "Generator", "shapes-c2i")
    page.wait_for_function("document.querySelector('#generate-cfg-scale input[type=number]').value === '2'")
    assert "shapes-c2i's card" in page.locator("#generate-defaults").inner_text()
    assert page.locator("#generate-gallery img").count() == 0
    choose(page, "Generator", "digits-c2i")


def test_complete_tab(page):
    open_tab(page, "Complete")
    page.click("#complete-pick")  # held-out real image 0, its own class chosen
    page.locator("#complete-preview img").wait_for()
    assert fetched_png(page, "#complete-preview img").shape == (192, 192, 3)
    page.click("#complete-button")
    page.wait_for_function("document.querySelectorAll('#complete-gallery img').length >= 4")
    summary = page.locator("#complete-summary", has_text="The judge reads")
    summary.wait_for()
    assert "(the image's own)" in summary.inner_text()
    for index in range(4):
        completion = fetched_png(page, "#complete-gallery img", index)
        assert completion.shape == (192, 192, 3) and completion.std() > 5
    page.screenshot(path=ARTIFACTS / "complete.png", full_page=True)


def test_reconstruct_tab_with_an_upload_and_a_token_edit(page, tmp_path):
    from llamagen.data.samples import sample_image

    upload = tmp_path / "photo.png"
    sample_image("coffee").save(upload)  # 600x400: photo-vq's 75x50 codes
    open_tab(page, "Reconstruct")
    page.locator("#reconstruct-input input[type=file]").set_input_files(str(upload))
    page.locator("#reconstruct-input img").first.wait_for()
    choose(page, "Tokenizer", "photo-vq")
    page.click("#reconstruct-button")
    page.locator("#reconstruct-numbers", has_text="dB").wait_for()
    assert fetched_png(page, "#reconstruction img").shape == (400, 600, 3)

    code_map = page.locator("#code-map img")
    box = code_map.bounding_box()
    code_map.click(position={"x": box["width"] * 5.5 / 75, "y": box["height"] * 2.5 / 50})  # row 2, column 5
    page.wait_for_function("document.querySelector('#edit-row input').value === '2'")
    assert page.locator("#edit-column input").input_value() == "5"
    started = time.perf_counter()
    page.click("#edit-button")
    page.locator("#edit-note", has_text="cell (row 2, column 5)").wait_for()
    # The edit decodes only the window around its cell, from the decode the page kept: well under a second.
    assert time.perf_counter() - started < 1.0
    edited = fetched_png(page, "#edited img")  # the cell, pixels 40..47 across and 16..23 down, framed
    assert edited.shape == (400, 600, 3) and (edited[14:16, 38:50] == (255, 0, 255)).all()
    assert fetched_png(page, "#edit-difference img").shape == (400, 600, 3)
    page.screenshot(path=ARTIFACTS / "reconstruct.png", full_page=True)

    # A file that is not an image: the CLI's message in the page, no internals; the last image's results gone.
    broken = tmp_path / "notes.png"
    broken.write_text("notes, not pixels")
    page.locator("#reconstruct-input input[type=file]").set_input_files(str(broken))
    page.wait_for_function("document.querySelector('#edit-row input').value === '0'")
    assert page.locator("#edited img").count() == 0
    page.click("#reconstruct-button")
    page.get_by_text("the uploaded image is not an image that PIL can read").first.wait_for()
    assert str(tmp_path) not in page.content()


def test_compare_conditioning_tab(page):
    open_tab(page, "Compare conditioning")
    page.click("#guidance-button")
    page.locator("#guidance-rows img").wait_for()
    assert fetched_png(page, "#guidance-rows img").shape[0] == 4 * 3 * 36 + 3 * 4  # 4 rows of 36 pixels, x3
    page.click("#blend-button")
    page.wait_for_function("document.querySelectorAll('#blend-gallery img').length >= 5")
    page.click("#condition-button")
    page.locator("#condition-map img").wait_for()
    assert fetched_png(page, "#condition-map img").std() > 0
    page.get_by_label("a held-out real image").check()
    page.click("#condition-button")
    page.locator("#condition-summary", has_text="A held-out real image").wait_for()
    page.click("#side-by-side-button")
    page.locator("#side-by-side-table", has_text="how the condition enters").wait_for()
    assert fetched_png(page, "#side-by-side img").shape[1] > 300
    page.screenshot(path=ARTIFACTS / "conditioning.png", full_page=True)


def test_codebook_tab(page):
    open_tab(page, "Codebook")
    page.click("#codebook-button")
    page.locator("#codebook-summary", has_text="perplexity").wait_for()
    assert fetched_png(page, "#codebook-map img").shape[0] > 300
    page.screenshot(path=ARTIFACTS / "codebook.png", full_page=True)


def test_motion_tab_plays_a_generated_motion(page):
    open_tab(page, "Motion")
    page.click("#motion-button")
    page.locator("#motion-summary", has_text="the judge reads").first.wait_for()
    plot = page.locator("#motion-animation .js-plotly-plot")
    plot.wait_for()
    # The slider's label says the frame shown; playing moves it on.
    frame = plot.locator(".slider-label", has_text="frame ")
    assert frame.text_content().strip() == "frame 0"
    plot.locator(".updatemenu-button", has_text="play").click()
    page.wait_for_function(
        "[...document.querySelectorAll('#motion-animation .slider-label')].some("
        "label => /^frame [1-9]/.test(label.textContent.trim()))"
    )
    page.screenshot(path=ARTIFACTS / "motion.png", full_page=True)


def test_a_generation_returns_while_a_reconstruction_runs(page, tmp_path):
    """Tokenizers and generators queue apart: a photo reconstructing does not hold up a generation."""
    from llamagen.data.samples import sample_image

    photo = tmp_path / "photo.png"
    sample_image("coffee").resize((900, 600)).save(photo)  # half a megapixel: seconds of work
    open_tab(page, "Reconstruct")
    page.locator("#reconstruct-input input[type=file]").set_input_files(str(photo))
    page.locator("#reconstruct-input img").first.wait_for()
    choose(page, "Tokenizer", "photo-vq")
    page.click("#reconstruct-button")
    # Its size and tokenizer, and how long they take here (Gradio's own figure is the mean of past calls).
    page.get_by_text(re.compile(r"900x600 pixels through photo-vq: (about [0-9.]+ s|the first)")).first.wait_for()
    open_tab(page, "Generate")
    page.click("#generate-button")
    page.locator("#generate-timing", has_text="s per image").wait_for()
    assert "dB" not in page.locator("#reconstruct-numbers").text_content()  # the reconstruction is still running
    open_tab(page, "Reconstruct")
    page.locator("#reconstruct-numbers", has_text="dB").wait_for()
