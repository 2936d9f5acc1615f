"""The Compare conditioning tab: one seed, the condition varied, and how much of it the model uses.

- guidance: a row of images per guidance scale (Sec. 3.3: classifier-free guidance at every token);
- two classes and blends of their prefix embeddings;
- for a text-conditional generator: a caption, a paraphrase and the caption with one attribute left out;
- how much of the condition each token's prediction carries (`llamagen.analysis.condition_use`), beside the
  attention paid to the prefix under the condition and under the null one: the same shares, an attention sink.
"""

from __future__ import annotations

import functools

import gradio as gr

from llamagen.analysis.attention import prefix_attention
from llamagen.analysis.condition_use import condition_use
from llamagen.analysis.interpolation import blended_class_generator
from llamagen.analysis.pictures import condition_use_figure, labelled_rows
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
def condition_information(registry: ModelRegistry, model, class_name, prompt, cfg_scale, seed):
    """One image; how much of the condition each of its tokens' predictions carries (KL to the prediction under
    the null condition, by teacher forcing on the image's tokens); and each layer's share of attention to the
    prefix under the condition and under the null one."""
    cfg_scale = checked_cfg_scale(cfg_scale)
    seed = checked_seed(seed)
    pipe = registry.pipeline(model)
    condition = one_condition(pipe, class_name, prompt)
    with registry.generation(model):
        output = pipe(**condition, cfg_scale=cfg_scale, seed=seed)
        cond, cond_mask, _, _ = pipe.encode_conditions(**condition)
        device = pipe.device
        tokens, cond = output.tokens.to(device), cond.to(device)
        cond_mask = None if cond_mask is None else cond_mask.to(device)
        kl = condition_use(pipe.gpt, tokens, cond, cond_mask).kl[0].cpu()
        attention = {
            name: prefix_attention(pipe.gpt, tokens, prefix, cond_mask)[:, 0].float().mean(1).cpu()
            for name, prefix in (("true", cond), ("null", pipe.gpt.unconditional(cond)))
        }
    grid = pipe.gpt.config.grid_size
    rows = kl.view(grid, grid).mean(1)
    summary = (
        f"information about the condition per token, nats: {kl.sum():.3f} in all, per row of the grid "
        + ", ".join(f"{value:.3f}" for value in rows)
        + ". Share of attention to the prefix per layer, under the condition: "
        + ", ".join(f"{value:.3f}" for value in attention["true"])
        + "; under the null condition: "
        + ", ".join(f"{value:.3f}" for value in attention["null"])
        + ". Where the two shares agree, the prefix is an attention sink: the attention says nothing of the "
        "condition, the KL does."
    )
    return output.images[0], condition_use_figure(kl, grid, attention), summary


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

    gr.Markdown("### How much of the condition the model uses\nFor one generated image, each token's prediction "
                "under the condition against its prediction under the null condition (the one guidance subtracts): "
                "their KL, in nats, is the information about the condition that the prediction carries (zero for a "
                "model that ignores its condition). Beside it, the share of attention each layer gives the prefix, "
                "under the condition and under the null one.")  # fmt: skip
    with gr.Row():
        condition_cfg = gr.Slider(0, MAX_CFG_SCALE, value=4.0, step=0.25, label="Guidance scale")
        run_condition = gr.Button("Measure the condition's use", elem_id="condition-button")
    with gr.Row():
        condition_image = picture("Image", height=240)
        condition_map = picture("Condition use", height=None, pixels=False, scale=3, elem_id="condition-map")
    condition_summary = gr.Markdown()

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
    run_condition.click(functools.partial(condition_information, registry),
                        [model, class_name, prompt, condition_cfg, seed],
                        [condition_image, condition_map, condition_summary], api_name="condition_use",
                        **SHARED_QUEUE)  # fmt: skip
