"""The Gradio apps: Generate, Complete, Reconstruct, Compare conditioning, Codebook and (where the models include a
motion generator) Motion, one tab each, in one page.

The tabs only call the library (the pipeline, the tokenizer, `llamagen.analysis`); they hold no model logic.
`build_app(registry)` makes the page; `launch(registry, host, port)` serves it in the background. Model calls
queue apart by kind (`common.GENERATOR_QUEUE`, `common.TOKENIZER_QUEUE`), so a quick generation never waits
behind a long reconstruction.
"""

from __future__ import annotations

import os
from pathlib import Path

from llamagen.apps.models import ModelRegistry

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
CONCURRENCY = 2
QUEUE_SIZE = 64
CACHE_DIR = Path(".cache")
# The models here make small images (32 or 64 pixels): show them enlarged with sharp pixels, not blurred. In
# galleries, a caption sits in a line of its own under its image: Gradio lays it over the image's bottom edge,
# where the shapes are often drawn.
CSS = """
.pixelated img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
.captioned .thumbnail-item { display: flex; flex-direction: column; }
.captioned .thumbnail-item img { height: auto; min-height: 0; flex: 1 1 0; }
.captioned .caption-label { position: static; max-width: 100%; flex: none; border: none; border-radius: 0;
                            opacity: 1; }
"""


def _quiet_environment() -> None:
    # No analytics or version checks (there is no network at run time), and Gradio's temporary files in the
    # project's cache folder instead of the system's.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_TEMP_DIR", str((CACHE_DIR / "gradio").resolve()))


def build_app(registry: ModelRegistry):
    """The page: one tab per app, all served from `registry`'s models."""
    _quiet_environment()
    import gradio as gr

    from llamagen.apps import codebook_tab, complete_tab, conditioning_tab, generate_tab, motion_tab, reconstruct_tab

    with gr.Blocks(title="LlamaGen explorer") as app:
        gr.Markdown(
            "# LlamaGen explorer\nA Llama decoder predicting image tokens one by one (arXiv 2406.06525), "
            "with the small models this project trains and any published checkpoint you add."
        )
        with gr.Tab("Generate", id="generate"):
            generate_tab.build(registry)
        with gr.Tab("Complete", id="complete"):
            complete_tab.build(registry)
        with gr.Tab("Reconstruct", id="reconstruct"):
            reconstruct_tab.build(registry)
        with gr.Tab("Compare conditioning", id="conditioning"):
            conditioning_tab.build(registry)
        with gr.Tab("Codebook", id="codebook"):
            codebook_tab.build(registry)
        if registry.motion_generators:
            with gr.Tab("Motion", id="motion"):
                motion_tab.build(registry)
    app.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return app


def launch(registry: ModelRegistry, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
    """Serve the apps in the background; returns the Gradio app (`.close()` stops it) and its address."""
    app = build_app(registry)
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                           ssr_mode=False, show_error=True, css=CSS)  # fmt: skip
    return app, url
