"""One object that turns a condition into images: what the CLI, the apps and the notebooks call.

`load_pipeline("shapes-c2i")` builds it from an embedded generator (whose file names its tokenizer, its
class names and its text encoder), `load_pipeline("c2i_B_256.pt", tokenizer="vq_ds16_c2i.pt")` from
published files. `pipe(class_labels=[...] or prompts=[...], cfg_scale=..., seed=...)` returns a
`PipelineOutput` with PIL `.images` and the generated `.tokens`.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageOps

from llamagen.checkpoints import read_safetensors_metadata, resolve_source
from llamagen.generation import generate
from llamagen.gpt import GPT
from llamagen.gpt.guidance_schedules import Schedule
from llamagen.gpt.sampling import check_sampling_options
from llamagen.images import pil_to_tensor, tensor_to_pil, to_rgb
from llamagen.sampling_settings import ORIGINAL, SamplingSettings, recommended_sampling
from llamagen.tokenizer import VQModel

IMAGENET_CLASSES = 1000


def check_compatible(tokenizer: VQModel, gpt: GPT) -> None:
    """Refuse a tokenizer and a generator that do not speak the same codes."""
    if tokenizer.config.codebook_size != gpt.config.vocab_size:
        raise ValueError(
            f"the generator predicts {gpt.config.vocab_size} codes but the tokenizer's codebook has "
            f"{tokenizer.config.codebook_size}: they were not trained together"
        )


def decode_tokens(tokenizer: VQModel, tokens: torch.Tensor) -> torch.Tensor:
    """(B, block_size) raster-order tokens -> (B, 3, H, W) images in [-1, 1] (H = W = grid x downsample)."""
    grid = math.isqrt(tokens.shape[1])
    if grid * grid != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not form a square grid")
    return tokenizer.detokenize(tokens.view(tokens.shape[0], grid, grid)).clamp(-1, 1)


def image_grid(images: torch.Tensor, columns: int | None = None) -> Image.Image:
    """(B, 3, H, W) images in [-1, 1] tiled into one picture, `columns` wide (default: about square)."""
    from torchvision.utils import make_grid  # here: torchvision takes a second and a half to import

    columns = columns or math.ceil(math.sqrt(images.shape[0]))
    return tensor_to_pil(make_grid(images.float().cpu(), nrow=columns, padding=2, pad_value=1.0)[None])[0]


@dataclass
class PipelineOutput:
    images: list[Image.Image]  # one per generated image, grouped by condition
    tokens: torch.Tensor  # (N, block_size) the generated codes, raster order
    conditions: list[str]  # the class name or prompt of each image
    pixels: torch.Tensor  # (N, 3, H, W) in [-1, 1], float32 on the CPU: what judges and metrics read
    notes: list[str] = field(default_factory=list)  # what the pipeline changed about the request (truncation)
    originals: torch.Tensor | None = None  # completion: (N, 3, H, W) each image's original, as the generator sees it

    def grid(self, columns: int | None = None) -> Image.Image:
        return image_grid(self.pixels, columns)


class Pipeline:
    """A generator, its tokenizer and (for text-to-image) its text encoder, with the generator's class names and
    the sampling settings it is used with unless told otherwise (default: the original's for its type)."""

    def __init__(
        self,
        gpt: GPT,
        tokenizer: VQModel,
        text_encoder=None,
        class_names: Sequence[str] | None = None,
        sampling: SamplingSettings | None = None,
    ):
        check_compatible(tokenizer, gpt)
        if gpt.config.model_type == "t2i" and text_encoder is None:
            raise ValueError("a text-conditional generator needs its text encoder (text_encoder=...)")
        if text_encoder is not None and gpt.config.model_type == "c2i":
            raise ValueError("a class-conditional generator takes no text encoder")
        if text_encoder is not None and (text_encoder.width, text_encoder.context_length) != (
            gpt.config.caption_dim,
            gpt.config.cls_token_num,
        ):
            raise ValueError(
                f"the text encoder gives {text_encoder.context_length} tokens of width {text_encoder.width}, "
                f"but the generator reads {gpt.config.cls_token_num} of width {gpt.config.caption_dim}"
            )
        if class_names is not None and gpt.config.model_type == "c2i" and len(class_names) != gpt.config.num_classes:
            raise ValueError(f"{len(class_names)} class names for a generator of {gpt.config.num_classes} classes")
        self.gpt, self.tokenizer, self.text_encoder = gpt, tokenizer, text_encoder
        self.class_names = list(class_names) if class_names else None
        self.sampling = sampling or ORIGINAL[gpt.config.model_type].fitted_to(gpt.config.vocab_size)

    @property
    def model_type(self) -> str:
        return self.gpt.config.model_type

    @property
    def device(self) -> torch.device:
        return self.gpt.device

    @property
    def image_size(self) -> int:
        return self.gpt.config.grid_size * self.tokenizer.config.downsample_factor

    def class_id(self, label: int | str) -> int:
        """A class id from an id or a class name; unknown names are refused with the nearest known ones."""
        if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
            if not self.class_names:
                raise ValueError(f"class {label!r}: this generator has no class names; give class ids")
            if label in self.class_names:
                return self.class_names.index(label)
            near = difflib.get_close_matches(label, self.class_names, n=3)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
            raise ValueError(f"unknown class {label!r}{hint}")
        if not isinstance(label, int | str) or isinstance(label, bool):
            raise ValueError(f"class {label!r}: give a class id (a whole number) or a class name")
        index = int(label)
        if not 0 <= index < self.gpt.config.num_classes:
            raise ValueError(f"class id {index} is outside 0..{self.gpt.config.num_classes - 1}")
        return index

    def class_name(self, index: int) -> str:
        return self.class_names[index] if self.class_names else f"class {index}"

    def encode_conditions(
        self, class_labels=None, prompts=None
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[str], list[str]]:
        """(cond, cond_mask, the description of each condition, notes) for one image per condition: the class
        ids, or the text encoder's features and mask, as the generator takes them."""
        if (class_labels is None) == (prompts is None):
            raise ValueError("give either class_labels or prompts")
        if self.model_type == "c2i":
            if class_labels is None:
                raise ValueError("this generator is class-conditional: give class_labels, not prompts")
            labels = [class_labels] if isinstance(class_labels, int | str) else list(class_labels)
            if not labels:
                raise ValueError("class_labels is empty: nothing to generate")
            ids = [self.class_id(label) for label in labels]
            return torch.tensor(ids), None, [self.class_name(i) for i in ids], []
        if prompts is None:
            raise ValueError("this generator is text-conditional: give prompts, not class_labels")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("prompts is empty: nothing to generate")
        empty = [i for i, prompt in enumerate(prompts) if not prompt.strip()]
        if empty:
            raise ValueError(f"prompt(s) {empty} are empty: describe the image to generate")
        encoded = self.text_encoder.encode(prompts)
        return encoded.features, encoded.mask, prompts, encoded.notes

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str] | None = None,
        prompts: str | Sequence[str] | None = None,
        cfg_scale: float | None = None,
        cfg_interval: int | None = None,
        cfg_schedule: Schedule | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        seed: int | Sequence[int] = 0,
        num_images_per_condition: int = 1,
        progress: Callable[[int, int], None] | None = None,
        compile: bool = False,
        images: Image.Image | Sequence[Image.Image] | torch.Tensor | None = None,
        keep_rows: int | None = None,
        jacobi_window: int = 0,
    ) -> PipelineOutput:
        """Images for each class label or prompt; the same seed gives the same images. A sampling option left
        at None takes the pipeline's `sampling` value (its card's recommendation, or the original's default).

        Args:
            class_labels: for a class-conditional generator: class ids or names, e.g. `["3", 7]`, or one of them;
                an unknown name is refused with the nearest known ones.
            prompts: for a text-to-image generator: captions, e.g. `["a red star on a white background"]`; a
                caption longer than the text encoder's context is cut, and `output.notes` says so.
            cfg_scale: classifier-free guidance scale; 1 is none, 0 is unconditional, above 1 conditions more
                strongly, e.g. 2.0.
            cfg_interval: -1 guides every token; n >= 0 guides tokens 0 .. n+1 only, e.g. 20.
            cfg_schedule: the scale of each token: "constant", "linear" (from 1 up to `cfg_scale`, as VAR),
                "reverse" (from `cfg_scale` down to 1), "first-half" (`cfg_scale` on the first half of the
                tokens, then 1) or a callable `(token_index, token_count) -> scale`.
            top_k: sample among the k most likely tokens, e.g. 100; 0 keeps the whole vocabulary, 1 is greedy.
            top_p: sample among the most likely tokens whose probabilities reach p, e.g. 0.9; 1 keeps them all.
            temperature: divides the logits, e.g. 0.9; 0 is greedy.
            seed: the seed of the draws, a whole number from 0 to 2**64 - 1, e.g. 0; or one per image (in the
                order they come), each image's draws then its own whatever else the batch holds.
            num_images_per_condition: images of each label or prompt, e.g. 4 (they come grouped by condition).
            progress: called as `progress(tokens_done, tokens_per_image)` after every token, e.g. for a bar.
            compile: compile the decoding step with torch.compile (`llamagen.generate`), e.g. for many calls of
                one batch size on a GPU.
            images: completion: an image to continue for every condition, or one per condition (PIL images,
                resized on the shorter side and centre-cropped to the generator's image size, or (N, 3, S, S)
                tensors in [-1, 1] at that size); the generator's tokenizer reads them, and each completion keeps
                the first `keep_rows` rows of its image's tokens and samples the rest.
            keep_rows: completion: rows of the token grid kept from `images`, from 0 (plain generation) to the
                grid's size (the image itself, as the tokenizer reconstructs it), e.g. 3.
            jacobi_window: 0 decodes a token per model call; w >= 1 verifies w draft tokens per call (speculative
                Jacobi decoding, `llamagen.generate`): images of the same distribution in fewer calls, e.g. 16.

        Returns a `PipelineOutput`: `images` (PIL), `tokens` (N, block_size), `conditions` (each image's label or
        prompt), `pixels` (N, 3, H, W) in [-1, 1] and `notes`.
        """
        options = self.sampling.filled(cfg_scale=cfg_scale, cfg_interval=cfg_interval, cfg_schedule=cfg_schedule,
                                       top_k=top_k, top_p=top_p, temperature=temperature)  # fmt: skip
        check_sampling_options(self.gpt.config.vocab_size, options["cfg_scale"], options["temperature"],
                               options["top_k"], options["top_p"])  # fmt: skip
        per_image = isinstance(seed, list | tuple)
        seeds = list(seed) if per_image else [seed]
        for one in seeds:
            check_seed(one)  # before any work, as every other option
        if num_images_per_condition < 1:
            raise ValueError(f"num_images_per_condition must be at least 1, got {num_images_per_condition}")
        cond, cond_mask, described, notes = self.encode_conditions(class_labels, prompts)
        cond = cond.to(self.device).repeat_interleave(num_images_per_condition, dim=0)
        if per_image and len(seeds) != len(cond):
            raise ValueError(f"{len(seeds)} seeds for {len(cond)} images: give one, or one per image")
        if cond_mask is not None:
            cond_mask = cond_mask.to(self.device).repeat_interleave(num_images_per_condition, dim=0)
        originals = prefix = None
        if images is not None or keep_rows is not None:
            originals = self.images_to_complete(images, len(described)).repeat_interleave(num_images_per_condition, 0)
            prefix = self.kept_tokens(originals, keep_rows)
        generators = [torch.Generator(self.device).manual_seed(one) for one in seeds]
        generator = generators if per_image else generators[0]
        tokens = generate(self.gpt, cond, cond_mask, **options, generator=generator, progress=progress,
                          compile=compile, prefix_tokens=prefix, jacobi_window=jacobi_window)  # fmt: skip
        pixels = decode_tokens(self.tokenizer, tokens).float().cpu()
        return PipelineOutput(
            images=tensor_to_pil(pixels),
            tokens=tokens.cpu(),
            conditions=[d for d in described for _ in range(num_images_per_condition)],
            pixels=pixels,
            notes=notes,
            originals=originals,
        )

    def images_to_complete(self, images, conditions: int) -> torch.Tensor:
        """(conditions, 3, S, S) pixels in [-1, 1] of the images to complete, S the generator's image size: one
        image for every condition, or one each."""
        size = self.image_size
        if images is None:
            raise ValueError("keep_rows needs images=: the images whose first rows are kept")
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1:] != (3, size, size):
                raise ValueError(f"images must be (N, 3, {size}, {size}) in [-1, 1], this generator's image size; "
                                 f"got shape {tuple(images.shape)}")  # fmt: skip
            pixels = images.float().cpu()
        else:
            listed = [images] if isinstance(images, Image.Image) else list(images)
            if not listed or not all(isinstance(image, Image.Image) for image in listed):
                raise ValueError("images must be PIL images or an (N, 3, H, W) tensor")
            fitted = [ImageOps.fit(to_rgb(image), (size, size), Image.Resampling.BICUBIC) for image in listed]
            pixels = torch.cat([pil_to_tensor(image) for image in fitted])
        if len(pixels) not in (1, conditions):
            raise ValueError(f"{len(pixels)} images for {conditions} conditions: give one image, or one each")
        return pixels.expand(conditions, -1, -1, -1) if len(pixels) == 1 else pixels

    def kept_tokens(self, pixels: torch.Tensor, keep_rows: int | None) -> torch.Tensor:
        """The first `keep_rows` rows of the images' tokens, flattened in raster order: (N, keep_rows x grid)."""
        grid = self.gpt.config.grid_size
        if isinstance(keep_rows, bool) or not isinstance(keep_rows, int) or not 0 <= keep_rows <= grid:
            raise ValueError(f"keep_rows must be a whole number of token rows from 0 to {grid}, got {keep_rows!r}")
        tokens = self.tokenizer.tokenize(pixels.to(self.device))
        return tokens.flatten(1)[:, : keep_rows * grid]


def check_seed(seed) -> None:
    """A seed torch.Generator takes: a whole number in [0, 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be a whole number from 0 to 2**64 - 1, got {seed!r}")


def generator_metadata(source: str | os.PathLike) -> dict[str, Any]:
    """What a project generator file says about its training: class names, tokenizer, text encoder, and
    the command that extracted its codes."""
    path = resolve_source(source)
    if path.suffix != ".safetensors":
        return {}
    metadata = read_safetensors_metadata(path)
    found = {key: metadata[key] for key in ("tokenizer", "text_encoder", "codes_command") if key in metadata}
    if "class_names" in metadata:
        found["class_names"] = json.loads(metadata["class_names"]) or None
    return found


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet class names, as torchvision ships them (the published c2i models' classes)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load_pipeline(
    gpt: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    text_encoder: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    gpt_config: Any = None,
    tokenizer_config: Any = None,
) -> Pipeline:
    """A pipeline from an embedded generator's name, or from files.

    An embedded generator (or one trained here) names its tokenizer and text encoder; published
    checkpoints need `tokenizer=` (and `gpt_config=`/`tokenizer_config=` where their shapes do not say
    everything). The pipeline samples with the settings of the card beside the weights, or the original's
    defaults where there is none (`llamagen.sampling_settings`). A published class-conditional model of
    1,000 classes gets the ImageNet class names.
    """
    from llamagen.gpt.loading import load_gpt
    from llamagen.tokenizer.loading import load_tokenizer

    metadata = generator_metadata(gpt)
    tokenizer = tokenizer or metadata.get("tokenizer")
    if tokenizer is None:
        raise ValueError(f"{str(gpt)!r} does not name its tokenizer: pass tokenizer=")
    model = load_gpt(gpt, config=gpt_config, device=device, dtype=dtype)
    vq = load_tokenizer(tokenizer, config=tokenizer_config, device=model.device, dtype=dtype)
    text_encoder = text_encoder or metadata.get("text_encoder")
    encoder = None
    if model.config.model_type == "t2i":
        if text_encoder is None:
            raise ValueError(f"{str(gpt)!r} is text-conditional and names no text encoder: pass text_encoder=")
        from llamagen.text import load_text_encoder

        encoder = load_text_encoder(text_encoder, device=model.device)
    class_names = metadata.get("class_names")
    if class_names is None and model.config.model_type == "c2i" and model.config.num_classes == IMAGENET_CLASSES:
        class_names = imagenet_class_names()
    sampling = recommended_sampling(resolve_source(gpt), model.config.model_type, model.config.vocab_size)
    return Pipeline(model, vq, encoder, class_names, sampling)
