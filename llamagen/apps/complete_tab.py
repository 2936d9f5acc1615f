"""The Complete tab: an image's first rows of tokens kept, the rest written by the generator under a condition.

The image is a held-out real one of an embedded generator's data (its own class known), a bundled sample, or an
upload; the condition is its own class, another, or the null one. Each completion shows the kept rows framed,
and for an embedded generator what its data's judge reads in it: the image's class or the condition's.
"""

from __future__ import annotations

import functools
import time

import gradio as gr

from llamagen.analysis.pictures import kept_rows_marked
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
    held_out_images,
    held_out_kind,
    number_in_range,
    own_condition,
    picture,
    shown_errors,
    uploaded_image,
)
from llamagen.apps.models import ModelRegistry
from llamagen.data.samples import SAMPLES, sample_image
from llamagen.images import enlarged, tensor_to_pil
from llamagen.pipeline import Pipeline
from llamagen.sampling_settings import ORIGINAL

CHOSEN, NULL = "the class or prompt above", "the null condition (unconditional: guidance has no effect)"
# Completions are shown at least this wide, enlarged with sharp pixels, so the frame of the kept rows is clear.
SHOWN_WIDTH = 192


def kept_rows(pipe: Pipeline, keep_rows) -> int:
    grid = pipe.gpt.config.grid_size
    return number_in_range(f"rows to keep (of the {grid}-row token grid)", keep_rows, 0, grid, integer=True)


def marked(pipe: Pipeline, image, rows: int, dim_the_rest: bool = False):
    """A generator-sized image enlarged, its first `rows` token rows framed."""
    big, scale = enlarged(image, SHOWN_WIDTH)
    pixels_per_row = pipe.image_size // pipe.gpt.config.grid_size
    return kept_rows_marked(big, rows * pixels_per_row * scale, dim_the_rest)


@shown_errors
def kept_preview(registry: ModelRegistry, model, image, keep_rows):
    """The image as the generator takes it (resized and cropped to its size), the kept rows framed and the rest
    faded; nothing while there is no image."""
    if image is None:
        return None
    pipe = registry.pipeline(model)
    fitted = tensor_to_pil(pipe.images_to_complete(uploaded_image(image), 1))[0]
    return marked(pipe, fitted, kept_rows(pipe, keep_rows), dim_the_rest=True)


@shown_errors
def held_out_pick(registry: ModelRegistry, model, index):
    """The `index`-th held-out real image of the generator's data, and its own condition in the class picker or
    the prompt box (and kept, to say later whether a condition agrees with the image)."""
    images, classes = held_out_images(registry, model)
    index = number_in_range(f"the held-out image (of {len(images)})", index, 0, len(images) - 1, integer=True)
    pipe = registry.pipeline(model)
    own = own_condition(pipe, int(classes[index]))
    shown = tensor_to_pil(images[index : index + 1])[0]
    text = pipe.model_type == "t2i"
    return shown, gr.skip() if text else own, own if text else gr.skip(), own


def _judged(registry: ModelRegistry, model, pipe: Pipeline, pixels) -> list[str] | None:
    """What the judge of the generator's data reads in each image (a class name, or for a text-conditional
    generator the caption of a shape and colour), or None for a generator without one."""
    from llamagen.evaluation.generation import class_ids_of, read_images
    from llamagen.evaluation.judges import load_judge

    try:
        kind = held_out_kind(registry, model)
    except ValueError:
        return None
    judge = registry.cached(("judge", kind), functools.partial(load_judge, f"{kind}-judge", pipe.device), kind)
    classes = class_ids_of(kind, read_images(judge, pixels).predicted)
    return [own_condition(pipe, int(class_id)) for class_id in classes]


def _tally(readings: list[str], condition: str | None, own: str | None) -> str:
    """How many completions the judge reads as the image's own class and as the condition's (each where known:
    a free prompt names no class the judge reads)."""
    total = len(readings)
    parts = [f"{readings.count(name)} of {total} as {role} ({name!r})"
             for role, name in (("the image's own class", own), ("the condition's", condition))
             if name and (role.startswith("the image") or name != own)]  # fmt: skip
    return "The judge reads " + " and ".join(parts) + ". " if parts else ""


def judge_can_name(pipe: Pipeline, condition: str) -> bool:
    """Whether a judge's reading can name `condition`: any class of a class-conditional generator; of a
    text-conditional one's prompts, only the captions of a shape and colour that `own_condition` writes."""
    from llamagen.data.shapes import CLASS_NAMES

    return pipe.model_type == "c2i" or condition in CLASS_NAMES


@shown_errors
def complete(registry: ModelRegistry, model, image, keep_rows, class_name, prompt, condition_kind, cfg_scale, seed,
             count, own=None, progress=gr.Progress()):  # noqa: B008 (how Gradio finds its progress bar)  # fmt: skip
    """`count` completions of the image from its first `keep_rows` token rows (each framed, with what the
    judge reads in it), and a summary."""
    pipe = registry.pipeline(model)
    picture_in = uploaded_image(image)  # every input checked before waiting for the generator
    rows = kept_rows(pipe, keep_rows)
    if condition_kind not in (CHOSEN, NULL):
        raise ValueError(f"condition {condition_kind!r}? choose {CHOSEN!r} or {NULL!r}")
    null = condition_kind == NULL
    condition = condition_of(pipe, [class_name] if pipe.model_type == "c2i" else None, prompt)
    # The null condition is guidance at 0: the unconditional prediction alone, whatever the class or prompt.
    cfg_scale = 0.0 if null else checked_cfg_scale(cfg_scale)
    seed = checked_seed(seed)
    count = number_in_range("number of completions", count, 1, MAX_IMAGES_PER_REQUEST, integer=True)
    with registry.generation(model):
        started = time.perf_counter()
        output = pipe(**condition, images=picture_in, keep_rows=rows, cfg_scale=cfg_scale, seed=seed,
                      num_images_per_condition=count,
                      progress=lambda done, total: progress((done, total), desc="tokens"))  # fmt: skip
        seconds = time.perf_counter() - started
    named = output.conditions[0]
    readings = _judged(registry, model, pipe, output.pixels)
    captions = [f"{i + 1}" + (f": read as {readings[i]}" if readings else "") for i in range(count)]
    grid = pipe.gpt.config.grid_size
    agreement = "" if null or not own else (" (the image's own)" if named == own else f" (the image's own is {own!r})")
    told = "the null condition" if null else f"{named!r}{agreement} at guidance {cfg_scale:g}"
    summary = (
        f"{count} completion{'s' * (count > 1)} of the first {rows} of {grid} token rows ({rows * grid} of "
        f"{grid * grid} tokens kept, framed) under {told}, seed {seed}, in {seconds:.2f} s."
    )
    if readings:
        judged_condition = named if not null and judge_can_name(pipe, named) else None
        summary += f" {_tally(readings, judged_condition, own)}One image's completions: notebook 06 measures 200."
    completions = [marked(pipe, completion, rows) for completion in output.images]
    return list(zip(completions, captions, strict=True)), summary


@shown_errors
def model_inputs(registry: ModelRegistry, model):
    """For the chosen generator: its condition inputs, its recommended guidance, a keep-rows slider over its
    grid, and no image or results (the last ones were another generator's)."""
    pipe = registry.pipeline(model)
    names = class_choices(registry, model)
    grid = pipe.gpt.config.grid_size
    return (
        gr.Dropdown(choices=names or [], value=(names or [None])[0], visible=names is not None),
        gr.Textbox(visible=names is None),
        pipe.sampling.cfg_scale,
        gr.Slider(0, grid, value=grid // 2, step=1),
        None,
        None,
        None,
        "",
        None,
    )


def forget_the_image():
    """A new image: its class is not known, and the last completions were of another image."""
    return None, None, ""


def build(registry: ModelRegistry) -> None:
    models = list(registry.generators)
    first = registry.pipeline(models[0]) if models else None
    names = class_choices(registry, models[0]) if models else []
    grid = first.gpt.config.grid_size if first else 16
    cfg_scale = first.sampling.cfg_scale if first else ORIGINAL["c2i"].cfg_scale
    gr.Markdown("Keep an image's first rows of tokens and let the generator write the rest under a condition: its "
                "own class, another, or none. How many rows does it take before the image, not the condition, "
                "decides what is drawn? (Notebook 06 measures it on 200 held-out images.)")  # fmt: skip
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(models, value=models[0] if models else None, label="Generator")
            with gr.Row():
                index = gr.Number(0, precision=0, label="Held-out real image (number)")
                pick = gr.Button("Pick it", elem_id="complete-pick")
            sample = gr.Dropdown(SAMPLES, value=None, label="Or a bundled sample (photos: for a published model)")
            image = picture("Image (or upload one)", height=240, upload=True, elem_id="complete-input")
            keep = gr.Slider(0, grid, value=grid // 2, step=1, label="Token rows kept", elem_id="complete-keep")
            preview = picture("What is kept (framed) and what is written anew (faded)", height=240,
                              elem_id="complete-preview")  # fmt: skip
        with gr.Column(scale=1):
            class_name = gr.Dropdown(names or [], value=(names or [None])[0], label="Class",
                                     visible=names is not None, allow_custom_value=True)  # fmt: skip
            prompt = gr.Textbox(EXAMPLE_PROMPT, label="Prompt", visible=names is None)
            condition_kind = gr.Radio([CHOSEN, NULL], value=CHOSEN, label="Condition")
            cfg = gr.Slider(0, MAX_CFG_SCALE, value=cfg_scale, step=0.25, label="Guidance scale (1 = none)")
            with gr.Row():
                seed = gr.Number(0, precision=0, label="Seed")
                count = gr.Slider(1, MAX_IMAGES_PER_REQUEST, value=4, step=1, label="Completions")
            run = gr.Button("Complete", variant="primary", elem_id="complete-button")
            gallery = captioned_gallery("Completions (kept rows framed; what the data's judge reads)", 4, 320,
                                        elem_id="complete-gallery")  # fmt: skip
            summary = gr.Markdown(elem_id="complete-summary")
    own = gr.State(None)  # the picked held-out image's own class or caption; None for an upload or a sample

    model.change(functools.partial(model_inputs, registry), model,
                 [class_name, prompt, cfg, keep, image, preview, gallery, summary, own],
                 api_visibility="private")  # fmt: skip
    pick.click(functools.partial(held_out_pick, registry), [model, index], [image, class_name, prompt, own],
               api_name="held_out_pick")  # fmt: skip
    sample.change(shown_errors(sample_image), sample, image, api_visibility="private")
    gr.on([image.upload, image.clear, sample.change], forget_the_image, None, [own, gallery, summary],
          api_visibility="private")  # fmt: skip
    gr.on([image.change, keep.change], functools.partial(kept_preview, registry), [model, image, keep], preview,
          api_name="kept_preview")  # fmt: skip
    run.click(functools.partial(complete, registry),
              [model, image, keep, class_name, prompt, condition_kind, cfg, seed, count, own], [gallery, summary],
              api_name="complete", **GENERATOR_QUEUE)  # fmt: skip
