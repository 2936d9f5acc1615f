"""What every tab shares: turning library errors into messages in the page, and checks on inputs.

Requests arrive from the page and from API clients alike, so every value is checked here even where the
page's sliders already bound it: a client can send anything.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING

import gradio as gr
from PIL import Image

from llamagen.images import check_image_size, load_image, to_rgb

if TYPE_CHECKING:
    from llamagen.apps.models import ModelRegistry
    from llamagen.pipeline import Pipeline

LOG = logging.getLogger("llamagen.apps")
UPLOAD_NAME = "the uploaded image"
# Pixels matter in every image the apps show: PNG, never Gradio's default lossy WebP.
IMAGE_FORMAT = "png"
# An uploaded image is tokenized whole; on a CPU a larger one takes too long for a page to wait on.
MAX_UPLOAD_MEGAPIXELS = 1.0
MAX_IMAGES_PER_REQUEST = 16
MAX_CFG_SCALE = 20.0
MAX_SEED = 2**63 - 1
# What a prompt box holds at first: a click without typing generates something (an empty prompt is refused).
EXAMPLE_PROMPT = "a large red star at the top left on a black background"
# The listeners that run a model take one of two queues (Gradio otherwise limits each listener separately):
# generators, whose requests take about a second, and tokenizers, whose requests on a large photo take many.
# A generation never waits behind a reconstruction, and its queue's ETA is made of generations only. Two
# generations run at once (one per core; requests for one generator take turns on its KV cache), one
# tokenizer request. Cheap listeners (class lists, samples, clicks) wait behind neither.
GENERATOR_QUEUE = {"concurrency_id": "generators", "concurrency_limit": 2}
TOKENIZER_QUEUE = {"concurrency_id": "tokenizers", "concurrency_limit": 1}


def shown_errors(handler):
    """Report a bad request as a message in the page (gr.Error) and one line in the server's log, instead of
    a stack trace in both."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except (ValueError, FileNotFoundError) as error:
            LOG.info("refused %s: %s", handler.__name__, error)
            raise gr.Error(str(error), print_exception=False) from error

    return wrapped


def number_in_range(name: str, value, low: float, high: float, integer: bool = False) -> float | int:
    """A finite number in [low, high] (an integer when asked), or a ValueError that names the input."""
    try:
        # Whole numbers stay exact (a float holds only 53 bits: large seeds would collapse together).
        number = (
            int(value)
            if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
            else float(value)
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a number, got {value!r}") from error
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    if integer:
        if number != int(number):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(number)
    return number


def checked_seed(seed) -> int:
    return number_in_range("seed", seed, 0, MAX_SEED, integer=True)


def checked_cfg_scale(cfg_scale) -> float:
    return number_in_range("guidance scale", cfg_scale, 0.0, MAX_CFG_SCALE)


def unopened_uploads(image: gr.Image) -> gr.Image:
    """`image` (an input of `type="filepath"`), made to hand the handler the file as uploaded, unopened.

    Gradio's image input opens every upload before the handler runs, so a file that is not an image, or a
    decompression bomb, fails inside Gradio with its internal message and the server's paths. Read by
    `uploaded_image` instead, such a file gets the same messages as the command line. (An attribute of the
    one input, not a subclass: Gradio writes a stub file beside every module that subclasses a component.)"""
    gradios_own = image.preprocess

    def preprocess(payload):
        if payload is None or payload.path is None:  # nothing, or an inline (base64) image: Gradio decodes it
            return gradios_own(payload)
        return payload.path

    image.preprocess = preprocess
    return image


def uploaded_image(image: str | Image.Image | None) -> Image.Image:
    """An uploaded image (the file `unopened_uploads` passes on) as RGB; refused when missing, unreadable, or too
    large to tokenize at interactive speed, with a message that names no path."""
    if image is None:
        raise ValueError("no image: upload one or pick a sample")
    if isinstance(image, Image.Image):
        check_image_size(image.width, image.height, MAX_UPLOAD_MEGAPIXELS, UPLOAD_NAME)
        return to_rgb(image)
    return load_image(image, MAX_UPLOAD_MEGAPIXELS, name=UPLOAD_NAME)


def picture(label: str, height: int | None = 300, pixels: bool = True, upload: bool = False, **options) -> gr.Image:
    """An image as the apps show them: PIL in, PNG out; `pixels`: a small image, enlarged with sharp pixels (not
    for figures, which are drawn at full size); `upload`: an input whose uploads `uploaded_image` reads."""
    classes = ["pixelated"] if pixels else []
    if upload:
        image = gr.Image(label=label, type="filepath", format=IMAGE_FORMAT, height=height, elem_classes=classes,
                         **options)  # fmt: skip
        return unopened_uploads(image)
    return gr.Image(label=label, type="pil", format=IMAGE_FORMAT, height=height, elem_classes=classes, **options)


def captioned_gallery(label: str, columns: int, height: int, **options) -> gr.Gallery:
    """Images as the apps show them in a row: PNG, enlarged with sharp pixels, each caption beside (under) its
    image instead of over it (see `CSS` in `llamagen.apps`)."""
    return gr.Gallery(label=label, format=IMAGE_FORMAT, columns=columns, height=height,
                      elem_classes=["pixelated", "captioned"], **options)  # fmt: skip


def condition_of(pipe: Pipeline, classes, prompt) -> dict:
    """class_labels= or prompts= for the pipeline, from the class picker or the prompt box."""
    if pipe.model_type == "t2i":
        if not prompt or not prompt.strip():
            raise ValueError("the prompt is empty: describe the image to generate")
        return {"prompts": [prompt]}
    labels = [classes] if isinstance(classes, str | int) else list(classes or [])
    if not labels:
        raise ValueError("pick at least one class")
    return {"class_labels": [pipe.class_id(label) for label in labels]}  # unknown classes refused here


def class_choices(registry: ModelRegistry, model) -> list[str] | None:
    """The generator's class names (ids where it has none), or None for a text-conditional generator."""
    pipe = registry.pipeline(model)
    if pipe.model_type == "t2i":
        return None
    return pipe.class_names or [str(i) for i in range(pipe.gpt.config.num_classes)]


def held_out_kind(registry: ModelRegistry, model: str) -> str:
    """'shapes' or 'digits': the held-out real images whose conditions the named generator takes (an embedded
    generator's judge says which); a generator from a models file has none here."""
    from llamagen.checkpoints import embedded_card, embedded_of_kind

    source = registry.generators[model]["gpt"]
    if isinstance(source, str) and source in embedded_of_kind("gpt"):
        return embedded_card(source)["evaluation"]["judge"].removesuffix("-judge")
    raise ValueError(f"{model!r} has no held-out real images here (the embedded generators' shapes and digits do)")


def held_out_images(registry: ModelRegistry, model: str):
    """The held-out real images (N, 3, S, S) in [-1, 1] of the named generator's data, and their class ids (as
    the class-conditional generators number them), loaded once per server."""
    from llamagen.evaluation.generation import class_ids_of
    from llamagen.evaluation.judges import held_out

    kind = held_out_kind(registry, model)

    def load():
        images, labels = held_out(kind)
        return images, class_ids_of(kind, labels)

    return registry.cached(("held-out", kind), load, f"held-out {kind}")


def own_condition(pipe: Pipeline, class_id: int) -> str:
    """What states a held-out image's class to `pipe`: its class name, or for a text-conditional generator (of
    shapes) a caption of its shape and colour ("red circle", a phrasing of the training captions)."""
    if pipe.model_type == "t2i":
        from llamagen.data.shapes import CLASS_NAMES

        return CLASS_NAMES[class_id]
    return pipe.class_names[class_id] if pipe.class_names else str(class_id)
