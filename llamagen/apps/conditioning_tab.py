"""The Compare conditioning tab: one seed, the condition varied, and how much the model attends to it.

- guidance: a row of images per guidance scale (Sec. 3.3: classifier-free guidance at every token);
- two classes and blends of their prefix embeddings;
- for a text-conditional generator: a caption, a paraphrase and the caption with one attribute left out;
- the share of attention that each image token's prediction pays to the condition prefix, per layer.
"""

from __future__ import annotations

import functools

import gradio as gr

from llamagen.analysis.attention import prefix_attention
from llamagen.analysis.interpolation import blended_class_generator
from llamagen.analysis.pictures import labelled_rows, prefix_attention_figure
from llamagen.apps.common import (
    IMAGE_FORMAT,
    MAX_CFG_SCALE,
    SHARED_QUEUE,
    checked_cfg_scale,
    checked_seed,
    class_choices,
    condition_of,
    number_in_range,
    picture,
    shown_errors,
)
from llamagen.apps.models import ModelRegistry
from llamagen.pipeline import Pipeline, image_grid

MAX_ROWS = 8
CAPTION_ROLES = ("caption", "paraphrase", "one attribute less")
MAX_PER_ROW = 8


def guidance_scales(text: str) -> list[float]:
    """'1, 2.5, 4' -> [1.0, 2.5, 4.0], each checked."""
    parts = [part for part in str(text).replace(";", ",").split(",") if part.strip()]
    if not 1 <= len(parts) <= MAX_ROWS:
        raise ValueError(f"give 1 to {MAX_ROWS} guidance scales separated by commas, got {text!r}")
    return [checked_cfg_scale(part.strip()) for part in parts]


def one_condition(pipe: Pipeline, class_name, prompt) -> dict:
    condition = condition_of(pipe, class_name, prompt)
    if len(condition.get("class_labels", [None])) != 1:
        raise ValueError("pick one class")
    return condition


@shown_errors
def guidance_rows(registry: ModelRegistry, model, class_name, prompt, scales, count, seed):
    """A picture per guidance scale: `count` images of one condition, the same seed in every row."""
    scales = guidance_scales(scales)
    count = number_in_range("images per row", count, 1, MAX_PER_ROW, integer=True)
    seed = checked_seed(seed)
    pipe = registry.pipeline(model)
    condition = one_condition(pipe, class_name, prompt)
    with registry.generation(model):
        rows = [pipe(**condition, cfg_scale=s, seed=seed, num_images_per_condition=count) for s in scales]
    return labelled_rows([image_grid(row.pixels, columns=count) for row in rows], [f"guidance {s:g}" for s in scales])


@shown_errors
def interpolate_classes(registry: ModelRegistry, model, class_a, class_b, steps, cfg_scale, seed):
    """Images from blends (1 - w) e_a + w e_b of two classes' prefix embeddings, w from 0 to 1, one seed."""
    steps = number_in_range("steps", steps, 2, 9, integer=True)
    cfg_scale = checked_cfg_scale(cfg_scale)
    seed = checked_seed(seed)
    weights = [i / (steps - 1) for i in range(steps)]
    pipe = registry.pipeline(model)
    if pipe.model_type != "c2i":
        raise ValueError("blending classes needs a class-conditional generator")
    a, b = pipe.class_id(class_a), pipe.class_id(class_b)
    with registry.generation(model):  # the blended view shares the generator's KV cache
        blended = Pipeline(blended_class_generator(pipe.gpt, a, b, weights), pipe.tokenizer)
        images = [blended(class_labels=[i], cfg_scale=cfg_scale, seed=seed).images[0] for i in range(steps)]
    return [(image, f"w = {w:.2f}") for image, w in zip(images, weights, strict=True)]


@shown_errors
def compare_captions(registry: ModelRegistry, model, caption, paraphrase, removed, cfg_scale, count, seed):
    """A row of images per prompt (a caption, its paraphrase, the caption less one attribute), one seed."""
    prompts = [caption, paraphrase, removed]
    cfg_scale = checked_cfg_scale(cfg_scale)
    count = number_in_range("images per row", count, 1, MAX_PER_ROW, integer=True)
    seed = checked_seed(seed)
    pipe = registry.pipeline(model)
    if pipe.model_type != "t2i":
        raise ValueError("comparing captions needs a text-conditional generator")
    conditions = [condition_of(pipe, None, prompt) for prompt in prompts]
    with registry.generation(model):
        rows = [pipe(**condition, cfg_scale=cfg_scale, seed=seed, num_images_per_condition=count)
                for condition in conditions]  # fmt: skip
    # The prompts are long: the rows are labelled by role, and the prompts stand in their boxes above.
    return labelled_rows([image_grid(row.pixels, columns=count) for row in rows], list(CAPTION_ROLES))


@shown_errors
def attention_to_prefix(registry: ModelRegistry, model, class_name, prompt, cfg_scale, seed):
    """One image, and the share of attention its tokens' predictions pay to the condition, layer by layer."""
    cfg_scale = checked_cfg_scale(cfg_scale)
    seed = checked_seed(seed)
    pipe = registry.pipeline(model)
    condition = one_condition(pipe, class_name, prompt)
    with registry.generation(model):
        output = pipe(**condition, cfg_scale=cfg_scale, seed=seed)
        cond, cond_mask, _, _ = pipe.encode_conditions(**condition)
        device = pipe.device
        shares = prefix_attention(pipe.gpt, output.tokens.to(device), cond.to(device),
                                  None if cond_mask is None else cond_mask.to(device))  # fmt: skip
    grid = pipe.gpt.config.grid_size
    layer_means = shares[:, 0].float().mean(1)
    summary = "mean share of attention to the prefix, per layer: " + ", ".join(f"{m:.3f}" for m in layer_means)
    return output.images[0], prefix_attention_figure(shares[:, 0].cpu(), grid), summary


def _condition_inputs(names: list[str] | None, label: str, index: int = 0):
    """A class picker, shown for a class-conditional generator (`names`) and hidden for a text-conditional one."""
    choices = names or []
    value = choices[min(index, len(choices) - 1)] if choices else None
    # Custom values pass to the pipeline, which checks them (API clients may use any generator's classes).
    return gr.Dropdown(choices, value=value, label=label, visible=names is not None, allow_custom_value=True)


@shown_errors
def model_inputs(registry: ModelRegistry, model):
    names = class_choices(registry, model)
    text = names is None
    return (
        _condition_inputs(names, "Class"),
        _condition_inputs(names, "Second class", 1),
        gr.Textbox(visible=text),
        gr.Row(visible=not text),
        gr.Gallery(visible=not text),
        gr.Row(visible=text),
        gr.Image(visible=text),
    )


def build(registry: ModelRegistry) -> None:
    models = list(registry.generators)
    names = class_choices(registry, models[0]) if models else []
    text = names is None
    with gr.Row():
        model = gr.Dropdown(models, value=models[0] if models else None, label="Generator")
        class_name = _condition_inputs(names, "Class")
        prompt = gr.Textbox(label="Prompt", visible=text, placeholder="a small red star at the top left")
        seed = gr.Number(0, precision=0, label="Seed")

    gr.Markdown("### Guidance scale\nOne row per scale; the same seed in every row.")
    with gr.Row():
        scales = gr.Textbox("1, 2, 4, 8", label="Guidance scales")
        count = gr.Slider(1, MAX_PER_ROW, value=4, step=1, label="Images per row")
        run_guidance = gr.Button("Compare guidance", elem_id="guidance-button")
    guidance_rows_image = picture("A row per guidance scale", height=None, elem_id="guidance-rows")

    with gr.Row(visible=not text) as blend_row:
        second_class = _condition_inputs(names, "Second class", 1)
        steps = gr.Slider(2, 9, value=5, step=1, label="Blends")
        blend_cfg = gr.Slider(0, MAX_CFG_SCALE, value=4.0, step=0.25, label="Guidance scale")
        run_blend = gr.Button("Blend the two classes' prefix embeddings", elem_id="blend-button")
    blend_gallery = gr.Gallery(label="Blends", format=IMAGE_FORMAT, columns=9, height=240, visible=not text,
                               elem_id="blend-gallery")  # fmt: skip

    with gr.Row(visible=text) as caption_row:
        caption = gr.Textbox("a large red star at the top left on a black background", label="Caption")
        paraphrase = gr.Textbox("on a black background, a big red star in the top left corner", label="Paraphrase")
        removed = gr.Textbox("a large red star on a black background", label="Caption less one attribute")
        caption_cfg = gr.Slider(0, MAX_CFG_SCALE, value=4.0, step=0.25, label="Guidance scale")
        run_captions = gr.Button("Compare the captions", elem_id="captions-button")
    caption_rows_image = picture("A row per prompt", height=None, visible=text, elem_id="caption-rows")

    gr.Markdown("### How much the model reads the condition\nFor one generated image: the share of attention that "
                "each token's prediction gives to the prefix, per layer and position.")  # fmt: skip
    with gr.Row():
        attention_cfg = gr.Slider(0, MAX_CFG_SCALE, value=4.0, step=0.25, label="Guidance scale")
        run_attention = gr.Button("Measure attention to the prefix", elem_id="attention-button")
    with gr.Row():
        attention_image = picture("Image", height=240)
        attention_map = picture("Attention to the prefix", height=None, pixels=False, scale=3, elem_id="attention-map")
    attention_summary = gr.Markdown()

    model.change(functools.partial(model_inputs, registry), model,
                 [class_name, second_class, prompt, blend_row, blend_gallery, caption_row, caption_rows_image],
                 api_visibility="private")  # fmt: skip
    run_guidance.click(functools.partial(guidance_rows, registry), [model, class_name, prompt, scales, count, seed],
                       guidance_rows_image, api_name="guidance_rows", **SHARED_QUEUE)  # fmt: skip
    run_blend.click(functools.partial(interpolate_classes, registry),
                    [model, class_name, second_class, steps, blend_cfg, seed], blend_gallery,
                    api_name="interpolate_classes", **SHARED_QUEUE)  # fmt: skip
    run_captions.click(functools.partial(compare_captions, registry),
                       [model, caption, paraphrase, removed, caption_cfg, count, seed], caption_rows_image,
                       api_name="compare_captions", **SHARED_QUEUE)  # fmt: skip
    run_attention.click(functools.partial(attention_to_prefix, registry),
                        [model, class_name, prompt, attention_cfg, seed],
                        [attention_image, attention_map, attention_summary], api_name="prefix_attention",
                        **SHARED_QUEUE)  # fmt: skip
