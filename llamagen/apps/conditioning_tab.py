"""The Compare conditioning tab: one seed, the condition varied, and how much of it the model uses.

- guidance: a row of images per guidance scale (Sec. 3.3: classifier-free guidance at every token);
- two classes and blends of their prefix embeddings;
- for a text-conditional generator: a caption, a paraphrase and the caption with one attribute left out;
- how much of the condition each token's prediction carries (`llamagen.analysis.condition_use`), on an image
  it generates or a held-out real one, with the image's loss under the true, null and a wrong condition, and
  the attention paid to the prefix under the three (the same shares whatever the prefix holds: a sink);
- generators side by side (the conditioning study's arms): one condition and seed through each.
"""

from __future__ import annotations

import functools

import gradio as gr
import torch

from llamagen.analysis.interpolation import blended_class_generator
from llamagen.analysis.pictures import condition_use_figure, labelled_rows, side_by_side_figure
from llamagen.analysis.reading import read_condition
from llamagen.apps.common import (
    EXAMPLE_PROMPT,
    GENERATOR_QUEUE,
    MAX_CFG_SCALE,
    captioned_gallery,
    checked_cfg_scale,
    checked_seed,
    class_choices,
    condition_of,
    held_out_images,
    number_in_range,
    own_condition,
    picture,
    shown_errors,
)
from llamagen.apps.models import ModelRegistry
from llamagen.checkpoints import embedded_card, embedded_of_kind
from llamagen.pipeline import Pipeline, decode_tokens, image_grid
from llamagen.sampling_settings import ORIGINAL

MAX_ROWS = 8
CAPTION_ROLES = ("caption", "paraphrase", "one attribute less")
MAX_PER_ROW = 8
MAX_SIDE_BY_SIDE = 8
GENERATED, HELD_OUT = "an image it generates", "a held-out real image"


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


def held_out_example(registry: ModelRegistry, model: str, pipe: Pipeline, class_name, index):
    """The condition and tokens of a held-out real image: for a class-conditional generator, the `index`-th of
    the chosen class; for a text-conditional one, the `index`-th, with a caption of its shape and colour.
    Returns the condition (arguments of the pipeline) and the tokens (1, block_size)."""
    images, classes = held_out_images(registry, model)
    if pipe.model_type == "c2i":
        wanted = pipe.class_id(one_condition(pipe, class_name, None)["class_labels"][0])
        pool = (classes == wanted).nonzero()[:, 0]
    else:
        pool = torch.arange(len(images))
    index = number_in_range(f"the held-out image (of {len(pool)})", index, 0, len(pool) - 1, integer=True)
    chosen = int(pool[index])
    if pipe.model_type == "c2i":
        condition = {"class_labels": [int(classes[chosen])]}
    else:
        condition = {"prompts": [own_condition(pipe, int(classes[chosen]))]}
    return condition, pipe.tokenizer.tokenize(images[chosen : chosen + 1].to(pipe.device)).flatten(1)


def entry_of(gpt) -> str:
    """How the condition enters the generator: its GPTConfig.condition, with the prefix's length."""
    return f"{gpt.config.condition}, prefix of {gpt.prefix_length}"


def listed(values: torch.Tensor) -> str:
    return ", ".join(f"{value:.3f}" for value in values)


@shown_errors
def condition_information(registry: ModelRegistry, model, class_name, prompt, source, index, cfg_scale, seed):
    """One image, generated or held-out and real; how much of the condition each of its tokens' predictions
    carries (KL to the prediction under the null condition, by teacher forcing on the image's tokens); its loss
    under the true, null and a wrong condition; and each layer's share of attention to the prefix under the
    three, with the true share less the null one's."""
    pipe = registry.pipeline(model)
    with registry.generation(model):
        if source == HELD_OUT:
            condition, tokens = held_out_example(registry, model, pipe, class_name, index)
        else:
            condition = one_condition(pipe, class_name, prompt)
            tokens = pipe(**condition, cfg_scale=checked_cfg_scale(cfg_scale), seed=checked_seed(seed)).tokens
        tokens = tokens.to(pipe.device)
        reading = read_condition(pipe, tokens, condition)
        image = image_grid(decode_tokens(pipe.tokenizer, tokens))
    grid = pipe.gpt.config.grid_size
    kl, loss = reading.kl, reading.loss
    attention = {name: shares.mean(1) for name, shares in reading.attention.items()}  # per layer, over positions
    told = pipe.class_name(condition["class_labels"][0]) if "class_labels" in condition else condition["prompts"][0]
    summary = (
        f"{'A held-out real image' if source == HELD_OUT else 'A generated image'}: condition {told!r}, "
        f"the wrong one {reading.wrong!r}. "
        f"Information about the condition per token, nats: {kl.sum():.3f} in all, per row of the grid "
        f"{listed(kl.view(grid, grid).mean(1))}. "
        f"Loss, nats per token: {loss['true']:.3f} under the condition, {loss['null']:.3f} under the null one, "
        f"{loss['wrong']:.3f} under the wrong one. "
        f"Share of attention to the prefix per layer, under the condition: {listed(attention['true'])}; "
        f"under the null condition: {listed(attention['null'])}; under the wrong one: {listed(attention['wrong'])}; "
        f"the condition's less the null one's: {listed(attention['true - null'])}. "
        "Where the shares agree, the prefix is an attention sink: the attention says nothing of the condition; "
        "the KL and the loss gap do."
    )
    shown = {name: attention[name] for name in ("true", "null", "wrong")}
    return image, condition_use_figure(kl, grid, shown), summary


@shown_errors
def side_by_side(registry: ModelRegistry, models, class_name, prompt, cfg_scale, seed):
    """One image of the same condition and seed from each chosen generator, and the KL to the null condition
    per row of the grid that each one's predictions carry on its own image."""
    models = list(models or [])
    if not 1 <= len(models) <= MAX_SIDE_BY_SIDE:
        raise ValueError(f"pick 1 to {MAX_SIDE_BY_SIDE} generators")
    cfg_scale, seed = checked_cfg_scale(cfg_scale), checked_seed(seed)
    images, rows, lines = [], [], []
    for model in models:
        pipe = registry.pipeline(model)
        condition = one_condition(pipe, class_name, prompt)
        with registry.generation(model):
            output = pipe(**condition, cfg_scale=cfg_scale, seed=seed)
            reading = read_condition(pipe, output.tokens.to(pipe.device), condition)
        grid = pipe.gpt.config.grid_size
        images.append(output.images[0])
        rows.append(reading.kl.view(grid, grid).mean(1))
        loss = reading.loss
        lines.append(f"| {model} | {entry_of(pipe.gpt)} | {reading.kl.sum():.3f} | {loss['true']:.3f} | "
                     f"{loss['null']:.3f} | {loss['wrong']:.3f} |")  # fmt: skip
    table = "\n".join([
        "| generator | how the condition enters | KL to null, nats in all | loss: condition | null | wrong |",
        "|---|---|---|---|---|---|",
        *lines,
    ])  # fmt: skip
    return side_by_side_figure(images, models, rows), table


def _condition_inputs(names: list[str] | None, label: str, index: int = 0):
    """A class picker, shown for a class-conditional generator (`names`) and hidden for a text-conditional one."""
    choices = names or []
    value = choices[min(index, len(choices) - 1)] if choices else None
    # Custom values pass to the pipeline, which checks them (API clients may use any generator's classes).
    return gr.Dropdown(choices, value=value, label=label, visible=names is not None, allow_custom_value=True)


def same_kind(registry: ModelRegistry, model: str) -> list[str]:
    """The named generator and the embedded ones that take its conditions (its classes, or captions), read from
    their cards: choosing them loads nothing."""
    names = class_choices(registry, model)
    embedded = set(embedded_of_kind("gpt"))
    return [model] + [
        other
        for other, entry in registry.generators.items()
        if other != model and entry["gpt"] in embedded and embedded_card(entry["gpt"]).get("class_names") == names
    ]


# The results on screen, emptied when the generator changes (they were another generator's): besides the
# blends and the caption rows, which model_inputs empties as it shows or hides them.
OTHER_RESULTS = 6


@shown_errors
def model_inputs(registry: ModelRegistry, model):
    """For the chosen generator: its condition inputs, its recommended guidance in every guidance slider, the
    generators that take its conditions, and empty results."""
    names = class_choices(registry, model)
    text = names is None
    cfg_scale = registry.pipeline(model).sampling.cfg_scale
    return (
        _condition_inputs(names, "Class"),
        _condition_inputs(names, "Second class", 1),
        gr.Textbox(visible=text),
        gr.Row(visible=not text),
        gr.Gallery(None, visible=not text),
        gr.Row(visible=text),
        gr.Image(None, visible=text),
        gr.CheckboxGroup(value=same_kind(registry, model)),
        *[cfg_scale] * 4,
        *[None] * OTHER_RESULTS,
    )


def build(registry: ModelRegistry) -> None:
    models = list(registry.generators)
    names = class_choices(registry, models[0]) if models else []
    text = names is None
    # The guidance sliders start at the generator's recommended scale; choosing another sets its own.
    cfg_scale = registry.pipeline(models[0]).sampling.cfg_scale if models else ORIGINAL["c2i"].cfg_scale
    with gr.Row():
        model = gr.Dropdown(models, value=models[0] if models else None, label="Generator")
        class_name = _condition_inputs(names, "Class")
        prompt = gr.Textbox(EXAMPLE_PROMPT, label="Prompt", visible=text)
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
        blend_cfg = gr.Slider(0, MAX_CFG_SCALE, value=cfg_scale, step=0.25, label="Guidance scale")
        run_blend = gr.Button("Blend the two classes' prefix embeddings", elem_id="blend-button")
    blend_gallery = captioned_gallery("Blends", 9, 240, visible=not text, elem_id="blend-gallery")

    with gr.Row(visible=text) as caption_row:
        caption = gr.Textbox(EXAMPLE_PROMPT, label="Caption")
        paraphrase = gr.Textbox("on a black background, a big red star in the top left corner", label="Paraphrase")
        removed = gr.Textbox("a large red star on a black background", label="Caption less one attribute")
        caption_cfg = gr.Slider(0, MAX_CFG_SCALE, value=cfg_scale, step=0.25, label="Guidance scale")
        run_captions = gr.Button("Compare the captions", elem_id="captions-button")
    caption_rows_image = picture("A row per prompt", height=None, visible=text, elem_id="caption-rows")

    gr.Markdown("### How much of the condition the model uses\nFor one image, generated or held-out and real, "
                "each token's prediction under the condition against its prediction under the null condition (the "
                "one guidance subtracts): their KL, in nats, is the information about the condition that the "
                "prediction carries (zero for a model that ignores its condition). Beside it, the image's loss "
                "under the condition, the null one and a wrong one, and the share of attention each layer gives "
                "the prefix under the three: a share that stays the same whatever the prefix holds is an "
                "attention sink, not a reading of the condition. One image: its numbers describe it, not the "
                "generator.")  # fmt: skip
    with gr.Row():
        source = gr.Radio([GENERATED, HELD_OUT], value=GENERATED, label="Image")
        index = gr.Number(0, precision=0, label="Held-out image (of the class)")
        condition_cfg = gr.Slider(0, MAX_CFG_SCALE, value=cfg_scale, step=0.25, label="Guidance scale")
        run_condition = gr.Button("Measure the condition's use", elem_id="condition-button")
    with gr.Row():
        condition_image = picture("Image (as its tokens show it)", height=240)
        condition_map = picture("Condition use", height=None, pixels=False, scale=3, elem_id="condition-map")
    condition_summary = gr.Markdown(elem_id="condition-summary")

    gr.Markdown("### Generators side by side\nThe same condition and seed through each generator chosen (the "
                "arms of the conditioning study differ only in how the condition enters them), and the KL to the "
                "null condition per row that each one's predictions carry on its own image. One image each: the "
                "study's table and notebook 05 compare the arms over many.")  # fmt: skip
    with gr.Row():
        compared = gr.CheckboxGroup(models, value=same_kind(registry, models[0]) if models else [],
                                    label="Generators", elem_id="side-by-side-models")  # fmt: skip
        compared_cfg = gr.Slider(0, MAX_CFG_SCALE, value=cfg_scale, step=0.25, label="Guidance scale")
        run_compared = gr.Button("Draw side by side", elem_id="side-by-side-button")
    compared_image = picture("Side by side", height=None, pixels=False, elem_id="side-by-side")
    compared_table = gr.Markdown(elem_id="side-by-side-table")

    model.change(functools.partial(model_inputs, registry), model,
                 [class_name, second_class, prompt, blend_row, blend_gallery, caption_row, caption_rows_image,
                  compared, blend_cfg, caption_cfg, condition_cfg, compared_cfg,
                  guidance_rows_image, condition_image, condition_map, condition_summary, compared_image,
                  compared_table],
                 api_visibility="private")  # fmt: skip
    run_guidance.click(functools.partial(guidance_rows, registry), [model, class_name, prompt, scales, count, seed],
                       guidance_rows_image, api_name="guidance_rows", **GENERATOR_QUEUE)  # fmt: skip
    run_blend.click(functools.partial(interpolate_classes, registry),
                    [model, class_name, second_class, steps, blend_cfg, seed], blend_gallery,
                    api_name="interpolate_classes", **GENERATOR_QUEUE)  # fmt: skip
    run_captions.click(functools.partial(compare_captions, registry),
                       [model, caption, paraphrase, removed, caption_cfg, count, seed], caption_rows_image,
                       api_name="compare_captions", **GENERATOR_QUEUE)  # fmt: skip
    run_condition.click(functools.partial(condition_information, registry),
                        [model, class_name, prompt, source, index, condition_cfg, seed],
                        [condition_image, condition_map, condition_summary], api_name="condition_use",
                        **GENERATOR_QUEUE)  # fmt: skip
    run_compared.click(functools.partial(side_by_side, registry), [compared, class_name, prompt, compared_cfg, seed],
                       [compared_image, compared_table], api_name="side_by_side", **GENERATOR_QUEUE)  # fmt: skip
