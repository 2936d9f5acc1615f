"""The Generate tab: a condition and the sampling options in, images and their token grids out."""

from __future__ import annotations

import functools
import math
import time

import gradio as gr

from llamagen.analysis.pictures import code_map
from llamagen.apps.common import (
    EXAMPLE_PROMPT,
    GENERATOR_QUEUE,
    MAX_CFG_SCALE,
    MAX_IMAGES_PER_REQUEST,
    captioned_gallery,
    checked_cfg_scale,
    checked_seed,
    class_choices,
    condition_of,
    number_in_range,
    picture,
    shown_errors,
)
from llamagen.apps.models import ModelRegistry
from llamagen.gpt.guidance_schedules import SCHEDULES
from llamagen.pipeline import Pipeline
from llamagen.sampling_settings import ORIGINAL


def sampling_options(pipe: Pipeline, cfg_scale, cfg_interval, cfg_schedule, top_k, top_p, temperature, seed) -> dict:
    """The pipeline's sampling arguments from the page's (or a client's) values, each checked."""
    if cfg_schedule not in SCHEDULES:
        raise ValueError(f"guidance schedule {cfg_schedule!r}? choose one of {', '.join(SCHEDULES)}")
    return {
        "cfg_scale": checked_cfg_scale(cfg_scale),
        "cfg_interval": number_in_range("guidance interval", cfg_interval, -1, pipe.gpt.config.block_size, True),
        "cfg_schedule": cfg_schedule,
        "top_k": number_in_range("top-k", top_k, 0, pipe.gpt.config.vocab_size, True),
        "top_p": number_in_range("top-p", top_p, 1e-6, 1.0),
        "temperature": number_in_range("temperature", temperature, 0.0, 10.0),
        "seed": checked_seed(seed),
    }


def token_grid_picture(pipe: Pipeline, tokens):
    grid = pipe.gpt.config.grid_size
    return code_map(tokens.view(grid, grid), pipe.gpt.config.vocab_size, cell=max(4, 128 // grid))


@shown_errors
def generate(registry: ModelRegistry, model, classes, prompt, cfg_scale, cfg_interval, cfg_schedule, top_k, top_p,
             temperature, seed, count, jacobi_window=0, progress=gr.Progress()):  # noqa: B008 (how Gradio finds its progress bar)  # fmt: skip
    """Images, their token grids as pictures, one picture of them all, and how long it took; `jacobi_window`
    draft tokens verified per model call (0: one token a call)."""
    pipe = registry.pipeline(model)
    condition = condition_of(pipe, classes, prompt)  # every input checked before waiting for the generator
    options = sampling_options(pipe, cfg_scale, cfg_interval, cfg_schedule, top_k, top_p, temperature, seed)
    block_size = pipe.gpt.config.block_size
    options["jacobi_window"] = number_in_range("parallel decoding window", jacobi_window, 0, block_size, True)
    conditions = len(condition.get("class_labels") or condition["prompts"])
    count = number_in_range("number of images", count, 1, MAX_IMAGES_PER_REQUEST, True)
    if conditions * count > MAX_IMAGES_PER_REQUEST:
        raise ValueError(f"{conditions} classes x {count} images is over the limit of {MAX_IMAGES_PER_REQUEST}")
    calls = []  # a progress report after every model call (parallel decoding: also one for its first token)

    def report(done, total):
        calls.append(done)
        progress((done, total), desc="tokens")

    with registry.generation(model):
        started = time.perf_counter()
        output = pipe(**condition, **options, num_images_per_condition=count, progress=report)
        seconds = time.perf_counter() - started
    token_grids = [token_grid_picture(pipe, tokens) for tokens in output.tokens]
    total = len(output.images)
    summary = (
        f"{total} image{'s' * (total > 1)} of {pipe.image_size}x{pipe.image_size} pixels "
        f"({block_size} tokens each) in {seconds:.2f} s: **{seconds / total:.2f} s per image**"
        + (f", {len(calls) - 1} model calls" if options["jacobi_window"] else "")
        + "".join(f"\n\n{note}" for note in output.notes)
    )
    captions = output.conditions
    return (
        list(zip(output.images, captions, strict=True)),
        list(zip(token_grids, captions, strict=True)),
        output.grid(columns=min(total, math.ceil(math.sqrt(total)) if conditions == 1 else count)),
        summary,
    )


def defaults_note(pipe: Pipeline) -> str:
    return f"Sampling defaults: {pipe.sampling.describe()}."


@shown_errors
def model_inputs(registry: ModelRegistry, model):
    """For the chosen generator: the class picker or the prompt box (whichever it takes), its sampling
    defaults, and empty outputs (the previous generator's images are not its)."""
    pipe = registry.pipeline(model)
    names = class_choices(registry, model)
    sampling = pipe.sampling
    return (
        gr.Dropdown(choices=names or [], value=(names or [])[:1], visible=names is not None),
        gr.Textbox(visible=names is None),
        sampling.cfg_scale,
        sampling.cfg_interval,
        sampling.cfg_schedule,
        sampling.top_k,
        sampling.top_p,
        sampling.temperature,
        defaults_note(pipe),
        None,
        None,
        None,
        "",
    )


def build(registry: ModelRegistry) -> None:
    models = list(registry.generators)
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(models, value=models[0] if models else None, label="Generator")
            names = class_choices(registry, models[0]) if models else []
            # The first generator's own sampling settings; choosing another sets its own (model_inputs).
            first = registry.pipeline(models[0]) if models else None
            sampling = first.sampling if first else ORIGINAL["c2i"]
            # Custom values pass to the pipeline, which checks them: API clients may name the classes of any
            # generator, whatever the page last showed.
            classes = gr.Dropdown(names or [], value=(names or [])[:1], multiselect=True, label="Classes",
                                  visible=names is not None, allow_custom_value=True)  # fmt: skip
            prompt = gr.Textbox(EXAMPLE_PROMPT, label="Prompt", visible=names is None)
            cfg_scale = gr.Slider(0, MAX_CFG_SCALE, value=sampling.cfg_scale, step=0.25,
                                  label="Guidance scale (1 = none)", elem_id="generate-cfg-scale")  # fmt: skip
            cfg_interval = gr.Number(sampling.cfg_interval, precision=0, label="Guidance interval (-1: every token)")
            cfg_schedule = gr.Radio(
                list(SCHEDULES),
                value=sampling.cfg_schedule,
                elem_id="generate-cfg-schedule",
                label="Guidance over the tokens (linear: 1 up to the scale; reverse: down to 1)",
            )
            with gr.Row():
                top_k = gr.Number(sampling.top_k, precision=0, label="Top-k (0: all)")
                top_p = gr.Slider(0.05, 1.0, value=sampling.top_p, step=0.05, label="Top-p")
            temperature = gr.Slider(0.0, 2.0, value=sampling.temperature, step=0.05, label="Temperature")
            defaults = gr.Markdown(defaults_note(first) if first else "", elem_id="generate-defaults")
            with gr.Row():
                seed = gr.Number(0, precision=0, label="Seed")
                count = gr.Slider(1, MAX_IMAGES_PER_REQUEST, value=4, step=1, label="Images per class")
            jacobi_window = gr.Slider(
                0, 16, value=0, step=1, label="Parallel decoding: draft tokens verified per model call",
                info="0: one token a call. Speculative Jacobi decoding keeps the images' distribution in fewer "
                "calls; it saves time only where reading the weights sets a call's time (docs/performance.md)",
                elem_id="generate-jacobi-window",
            )  # fmt: skip
            run = gr.Button("Generate", variant="primary", elem_id="generate-button")
        with gr.Column(scale=2):
            gallery = captioned_gallery("Images", 4, 320, elem_id="generate-gallery")
            grids = captioned_gallery("Token grids (colour = code index)", 4, 240)
            sheet = picture("All images (download)", height=240)
            timing = gr.Markdown(elem_id="generate-timing")
    inputs = [model, classes, prompt, cfg_scale, cfg_interval, cfg_schedule, top_k, top_p, temperature, seed, count,
              jacobi_window]  # fmt: skip
    run.click(functools.partial(generate, registry), inputs, [gallery, grids, sheet, timing], api_name="generate",
              **GENERATOR_QUEUE)  # fmt: skip
    model.change(functools.partial(model_inputs, registry), model,
                 [classes, prompt, cfg_scale, cfg_interval, cfg_schedule, top_k, top_p, temperature, defaults, gallery,
                  grids, sheet, timing], api_name="model_inputs")  # fmt: skip
