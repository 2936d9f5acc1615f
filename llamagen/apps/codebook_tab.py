"""The Codebook tab: the codes in 2-D, coloured by how often a set of images uses them; a code's patch.

The paper keeps 16,384 codes of 8 dimensions on the unit sphere (Sec. 2.1, Table 2); this shows how they
spread and which of them a set of images actually uses.
"""

from __future__ import annotations

import functools

import gradio as gr

from llamagen.analysis.codebook import code_counts, code_patches, codebook_vectors, nearest_codes, project_2d
from llamagen.analysis.pictures import codebook_figure
from llamagen.apps.common import TOKENIZER_QUEUE, captioned_gallery, number_in_range, picture, shown_errors
from llamagen.apps.models import ModelRegistry
from llamagen.checkpoints import embedded_card, embedded_of_kind
from llamagen.data.samples import IMAGE_SETS, image_set
from llamagen.images import tensor_to_pil
from llamagen.metrics import code_perplexity

NEIGHBOURS = 8
PATCH_PIXELS = 96


def _patches(tokenizer, codes: list[int]):
    return [patch.resize((PATCH_PIXELS, PATCH_PIXELS), 0) for patch in tensor_to_pil(code_patches(tokenizer, codes))]


@shown_errors
def codebook_map(registry: ModelRegistry, tokenizer_name, images_name, code):
    """The projected codebook coloured by usage on an image set, the chosen code's patch and its neighbours."""
    tokenizer = registry.tokenizer(tokenizer_name)
    size = tokenizer.config.codebook_size
    code = number_in_range("code", code, 0, size - 1, integer=True)
    if images_name not in IMAGE_SETS:
        raise ValueError(f"unknown image set {images_name!r}; choose one of {', '.join(IMAGE_SETS)}")
    counts = registry.cached(("counts", tokenizer_name, images_name),
                             lambda: code_counts(tokenizer, image_set(images_name)))  # fmt: skip
    points = registry.cached(("pca", tokenizer_name), lambda: project_2d(codebook_vectors(tokenizer)))
    used = int((counts > 0).sum())
    perplexity = code_perplexity(counts)
    neighbours = nearest_codes(tokenizer, code, min(NEIGHBOURS, size - 1))
    summary = (
        f"{images_name}: {int(counts.sum())} tokens use {used} of {size} codes ({100 * used / size:.1f}%), "
        f"perplexity {perplexity:.1f}. Code {code} is used {int(counts[code])} times; its nearest codes: "
        + ", ".join(map(str, neighbours))
    )
    chosen, *near = _patches(tokenizer, [code, *neighbours])
    labelled = [(patch, f"code {n}") for patch, n in zip(near, neighbours, strict=True)]
    return codebook_figure(points, counts, code), chosen, labelled, summary


def own_image_set(registry: ModelRegistry, tokenizer_name) -> str:
    """The image set of the kind a tokenizer was trained on (its card's data): shapes, digits, or photos for the
    photo tokenizer and any tokenizer not trained here."""
    source = registry.tokenizers.get(tokenizer_name, {}).get("source")
    data = embedded_card(source)["data"] if source in embedded_of_kind("vq") else ""
    for kind in ("shapes", "digits"):
        if kind in data:
            return f"{kind} (64)"
    return "held-out photos"


def build(registry: ModelRegistry) -> None:
    tokenizers = list(registry.tokenizers)
    with gr.Row():
        tokenizer = gr.Dropdown(tokenizers, value=tokenizers[0] if tokenizers else None, label="Tokenizer")
        images = gr.Dropdown(list(IMAGE_SETS), value=own_image_set(registry, tokenizers[0] if tokenizers else None),
                             label="Usage measured on", elem_id="codebook-images")  # fmt: skip
        code = gr.Number(0, precision=0, label="Code")
        run = gr.Button("Map the codebook", variant="primary", elem_id="codebook-button")
    summary = gr.Markdown(elem_id="codebook-summary")
    with gr.Row():
        scatter = picture("Codebook, first two principal components", None, False, scale=3, elem_id="codebook-map")
        with gr.Column(scale=2):
            patch = picture("The code, tiled 3x3 and decoded", height=200)
            neighbours = captioned_gallery("Its nearest codes", 4, 260)
    outputs = [scatter, patch, neighbours, summary]
    # Another tokenizer: its own kind of images, and none of the last one's results.
    tokenizer.change(lambda name: (own_image_set(registry, name), None, None, None, ""), tokenizer, [images, *outputs],
                     api_visibility="private")  # fmt: skip
    run.click(
        functools.partial(codebook_map, registry),
        [tokenizer, images, code],
        outputs,
        api_name="codebook",
        **TOKENIZER_QUEUE,
    )
