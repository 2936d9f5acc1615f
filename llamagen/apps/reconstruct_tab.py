"""The Reconstruct tab: an image through a tokenizer and back, what it costs, and token surgery on its codes."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import gradio as gr
import torch
from PIL import Image

from llamagen.analysis.codebook import nearest_codes
from llamagen.analysis.pictures import code_map, error_map, outlined, pixel_differences
from llamagen.apps.common import TOKENIZER_QUEUE, number_in_range, picture, shown_errors, uploaded_image
from llamagen.apps.durations import DurationModel, describe_estimate
from llamagen.apps.models import ModelRegistry
from llamagen.data.samples import SAMPLES, sample_image
from llamagen.images import enlarged
from llamagen.tokenizer.local_decode import DecodedCodes, decode_edit
from llamagen.tokenizer.reconstruction import reconstruct

REPLACE_BY = ("code index", "nearest neighbour")
# Edited images are shown at least this wide, enlarged with sharp pixels, so that the frame fits around a cell.
SHOWN_WIDTH = 256
# The code map is drawn at least this wide, so that a cell is big enough to click.
CODE_MAP_WIDTH = 256


def grid_shape(tokenizer, image: Image.Image) -> tuple[int, int]:
    factor = tokenizer.downsample_factor
    return math.ceil(image.height / factor), math.ceil(image.width / factor)


def code_map_cell(rows: int, columns: int) -> int:
    return max(1, math.ceil(CODE_MAP_WIDTH / max(rows, columns)))


@dataclass(frozen=True)
class Tokenized:
    """What a page keeps (Gradio state) of its reconstructed image: an edit decodes only the window around its
    cell again, from the decode kept here, instead of tokenizing and decoding the whole image."""

    tokenizer: str
    decoded: DecodedCodes
    reconstruction: Image.Image

    @property
    def codes(self) -> torch.Tensor:
        return self.decoded.codes


@shown_errors
def reconstruct_image(registry: ModelRegistry, durations: dict[str, DurationModel], tokenizer_name, image,
                      progress=gr.Progress()):  # noqa: B008 (how Gradio finds its progress bar)  # fmt: skip
    """Original, reconstruction, error map, code map, the numbers, and the codes kept for token surgery.

    While it runs, the page shows how long it should take: `durations` holds each tokenizer's times on this
    server, against the sizes of its images."""
    image = uploaded_image(image)
    tokenizer = registry.tokenizer(tokenizer_name)
    duration = durations.setdefault(tokenizer_name, DurationModel())
    pixels = image.width * image.height
    progress(0.0, desc=describe_estimate(duration.estimate(pixels), image.width, image.height, tokenizer_name))
    started = time.perf_counter()
    result = reconstruct(tokenizer, image, keep_for_edits=True)
    duration.record(pixels, time.perf_counter() - started)
    rows, columns = result.codes.shape
    size = tokenizer.config.codebook_size
    numbers = (
        f"| PSNR | SSIM | bits per pixel | tokens | distinct codes |\n|---|---|---|---|---|\n"
        f"| {result.psnr:.2f} dB | {result.ssim_text} | {result.bits_per_pixel:.4f} | "
        f"{columns}x{rows} = {rows * columns} | "
        f"{result.distinct_codes} ({100 * result.distinct_codes / size:.2f}% of {size}) |"
    )
    return (
        result.reconstruction,
        error_map(result.original, result.reconstruction),
        code_map(result.codes, size, code_map_cell(rows, columns)),
        numbers,
        Tokenized(tokenizer_name, result.decoded, result.reconstruction),
    )


def _tokenized(registry: ModelRegistry, tokenizer_name, image, kept: Tokenized | None) -> Tokenized:
    """The page's kept codes of the image, or (for a first edit, or a client that never reconstructed) the
    image tokenized now."""
    if kept is not None and kept.tokenizer == tokenizer_name:
        return kept
    result = reconstruct(registry.tokenizer(tokenizer_name), uploaded_image(image), keep_for_edits=True)
    return Tokenized(tokenizer_name, result.decoded, result.reconstruction)


@shown_errors
def edit_token(registry: ModelRegistry, tokenizer_name, image, row, column, replace_by, value, kept=None):
    """Token surgery: one cell of the image's code grid replaced, by a code index or by the n-th nearest code
    of the one there; the decoded result with the cell framed, what changed, and a note."""
    if image is None:
        raise ValueError("no image: upload one or pick a sample")
    tokenizer = registry.tokenizer(tokenizer_name)
    tokenized = _tokenized(registry, tokenizer_name, image, kept)
    codes = tokenized.codes
    rows, columns = codes.shape
    row = number_in_range("row", row, 0, rows - 1, integer=True)
    column = number_in_range("column", column, 0, columns - 1, integer=True)
    old = int(codes[row, column])
    if replace_by == "code index":
        new = number_in_range("code", value, 0, tokenizer.config.codebook_size - 1, integer=True)
    elif replace_by == "nearest neighbour":
        rank = number_in_range("neighbour rank", value, 1, min(64, tokenizer.config.codebook_size - 1), True)
        new = nearest_codes(tokenizer, old, rank)[rank - 1]
    else:
        raise ValueError(f"replace by {replace_by!r}? choose one of {', '.join(REPLACE_BY)}")
    width, height = tokenized.reconstruction.size
    edited = Image.fromarray(decode_edit(tokenizer, tokenized.decoded, row, column, new)[:height, :width])
    factor = tokenizer.downsample_factor
    cell = (column * factor, row * factor, (column + 1) * factor, (row + 1) * factor)
    # The difference is drawn on the scale of its own largest change: one code's edit may move a photo's pixels
    # by a few levels only, which the reconstruction error's scale (64 levels) would leave black.
    changes = pixel_differences(tokenized.reconstruction, edited)
    largest = float(changes.max())
    note = (
        f"cell (row {row}, column {column}), pixels {cell[0]}..{cell[2] - 1} across and {cell[1]}..{cell[3] - 1} "
        f"down: code {old} -> {new}; framed in magenta. {int((changes > 0).sum()):,} of {changes.size:,} pixels "
        f"changed, the most by {largest:.1f} levels of 255"
    )
    return (
        framed_cell(edited, cell),
        framed_cell(error_map(tokenized.reconstruction, edited, ceiling=max(largest, 1.0)), cell),
        note,
        tokenized,
    )


def framed_cell(image: Image.Image, cell: tuple[int, int, int, int]) -> Image.Image:
    """`image` enlarged with sharp pixels to at least `SHOWN_WIDTH`, the edited cell framed."""
    big, scale = enlarged(image, SHOWN_WIDTH)
    return outlined(big, tuple(scale * edge for edge in cell))


def forget_the_image():
    """A new image or tokenizer: the kept codes, the last edit, its cell and every result belong to the old one."""
    return None, 0, 0, None, None, "", None, None, None, ""


@shown_errors
def clicked_cell(registry: ModelRegistry, tokenizer_name, image, point: tuple[int, int] | None, kept=None):
    """The (row, column) of the code-map cell under a click at pixel (x, y)."""
    if point is None:
        raise ValueError("click inside the code map")
    if kept is not None and kept.tokenizer == tokenizer_name:
        rows, columns = kept.codes.shape
    else:
        rows, columns = grid_shape(registry.tokenizer(tokenizer_name), uploaded_image(image))
    cell = code_map_cell(rows, columns)
    x, y = point
    return min(rows - 1, y // cell), min(columns - 1, x // cell)


def build(registry: ModelRegistry) -> None:
    tokenizers = list(registry.tokenizers)
    with gr.Row():
        tokenizer = gr.Dropdown(tokenizers, value=tokenizers[0] if tokenizers else None, label="Tokenizer")
        sample = gr.Dropdown(SAMPLES, value=None, label="Or pick a bundled sample")
        run = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct-button")
    with gr.Row():
        original = picture("Image (upload)", upload=True, elem_id="reconstruct-input")
        reconstruction = picture("Reconstruction", elem_id="reconstruction")
        errors = picture("Error (black: exact; bright: 64+ levels off)")
    numbers = gr.Markdown(elem_id="reconstruct-numbers")
    gr.Markdown("### Token surgery\nClick a cell of the code map (or type its row and column), choose the new code, "
                "and see what the decoder draws.")  # fmt: skip
    with gr.Row():
        # Shown at its own size (at least 256 pixels wide): Gradio maps a click to the pixels of an image
        # that is not enlarged.
        codes = picture("Code map (click a cell)", height=None, pixels=False, interactive=False, elem_id="code-map")
        with gr.Column():
            with gr.Row():
                row = gr.Number(0, precision=0, label="Row", elem_id="edit-row")
                column = gr.Number(0, precision=0, label="Column", elem_id="edit-column")
            replace_by = gr.Radio(list(REPLACE_BY), value="nearest neighbour", label="Replace by")
            value = gr.Number(1, precision=0, label="Code index, or neighbour rank (1 = nearest)")
            edit = gr.Button("Replace the code", elem_id="edit-button")
            note = gr.Markdown(elem_id="edit-note")
    with gr.Row():
        edited = picture("Decoded after the edit (the cell framed)", height=None, elem_id="edited")
        difference = picture("What the edit changed (black: nothing; white: the largest change)", height=None,
                             elem_id="edit-difference")  # fmt: skip
    kept = gr.State(None)  # this page's codes of the image: an edit decodes them instead of tokenizing again

    sample.change(shown_errors(sample_image), sample, original, api_name="sample")
    durations: dict[str, DurationModel] = {}  # this server's reconstruction times, by tokenizer
    run.click(functools.partial(reconstruct_image, registry, durations), [tokenizer, original],
              [reconstruction, errors, codes, numbers, kept], api_name="reconstruct", **TOKENIZER_QUEUE)  # fmt: skip
    gr.on([original.upload, original.clear, sample.change, tokenizer.change], forget_the_image, None,
          [kept, row, column, reconstruction, errors, numbers, codes, edited, difference, note],
          api_visibility="private")  # fmt: skip

    def on_click(tokenizer_name, image, kept_codes, event: gr.SelectData):  # Gradio passes the click so
        return clicked_cell(registry, tokenizer_name, image, event.index, kept_codes)

    codes.select(on_click, [tokenizer, original, kept], [row, column], api_visibility="private")
    edit.click(functools.partial(edit_token, registry), [tokenizer, original, row, column, replace_by, value, kept],
               [edited, difference, note, kept], api_name="edit_token", **TOKENIZER_QUEUE)  # fmt: skip
