"""The Reconstruct tab: an image through a tokenizer and back, what it costs, and token surgery on its codes."""

from __future__ import annotations

import functools
import math

import gradio as gr
from PIL import Image

from llamagen.analysis.codebook import nearest_codes, replace_code
from llamagen.analysis.pictures import code_map, error_map
from llamagen.apps.common import SHARED_QUEUE, number_in_range, picture, shown_errors, uploaded_image
from llamagen.apps.models import ModelRegistry
from llamagen.data.samples import SAMPLES, sample_image
from llamagen.images import tensor_to_pil
from llamagen.tokenizer.reconstruction import reconstruct, tokenize_image

REPLACE_BY = ("code index", "nearest neighbour")
# The code map is drawn at least this wide, so that a cell is big enough to click.
CODE_MAP_WIDTH = 256


def grid_shape(tokenizer, image: Image.Image) -> tuple[int, int]:
    factor = tokenizer.downsample_factor
    return math.ceil(image.height / factor), math.ceil(image.width / factor)


def code_map_cell(rows: int, columns: int) -> int:
    return max(1, math.ceil(CODE_MAP_WIDTH / max(rows, columns)))


@shown_errors
def reconstruct_image(registry: ModelRegistry, tokenizer_name, image):
    """Original, reconstruction, error map, code map and the numbers."""
    image = uploaded_image(image)
    tokenizer = registry.tokenizer(tokenizer_name)
    result = reconstruct(tokenizer, image)
    rows, columns = result.codes.shape
    size = tokenizer.config.codebook_size
    numbers = (
        f"| PSNR | SSIM | bits per pixel | tokens | distinct codes |\n|---|---|---|---|---|\n"
        f"| {result.psnr:.2f} dB | {result.ssim_text} | {result.bits_per_pixel:.4f} | "
        f"{columns}x{rows} = {rows * columns} | "
        f"{result.distinct_codes} ({100 * result.distinct_codes / size:.2f}% of {size}) |"
    )
    return (
        result.original,
        result.reconstruction,
        error_map(result.original, result.reconstruction),
        code_map(result.codes, size, code_map_cell(rows, columns)),
        numbers,
    )


@shown_errors
def edit_token(registry: ModelRegistry, tokenizer_name, image, row, column, replace_by, value):
    """Token surgery: one cell of the image's code grid replaced, by a code index or by the n-th nearest code
    of the one there; the decoded result and what changed."""
    image = uploaded_image(image)
    tokenizer = registry.tokenizer(tokenizer_name)
    codes = tokenize_image(tokenizer, image)
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
    decoded = replace_code(tokenizer, codes, row, column, new)[:, : image.height, : image.width]
    factor = tokenizer.downsample_factor
    note = (
        f"cell (row {row}, column {column}), pixels {column * factor}..{(column + 1) * factor - 1} across and "
        f"{row * factor}..{(row + 1) * factor - 1} down: code {old} -> {new}"
    )
    return tensor_to_pil(decoded[None])[0], note


@shown_errors
def clicked_cell(registry: ModelRegistry, tokenizer_name, image, point: tuple[int, int] | None):
    """The (row, column) of the code-map cell under a click at pixel (x, y)."""
    if point is None:
        raise ValueError("click inside the code map")
    tokenizer = registry.tokenizer(tokenizer_name)
    rows, columns = grid_shape(tokenizer, uploaded_image(image))
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
        edited = picture("Decoded after the edit", elem_id="edited")

    sample.change(shown_errors(sample_image), sample, original, api_name="sample")
    run.click(functools.partial(reconstruct_image, registry), [tokenizer, original],
              [original, reconstruction, errors, codes, numbers], api_name="reconstruct", **SHARED_QUEUE)  # fmt: skip

    def on_click(tokenizer_name, image, event: gr.SelectData):  # Gradio passes the click by this annotation
        return clicked_cell(registry, tokenizer_name, image, event.index)

    codes.select(on_click, [tokenizer, original], [row, column], api_visibility="private")
    edit.click(functools.partial(edit_token, registry), [tokenizer, original, row, column, replace_by, value],
               [edited, note], api_name="edit_token", **SHARED_QUEUE)  # fmt: skip
