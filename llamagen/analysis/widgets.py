"""The notebooks' explorers (ipywidgets).

- Condition use: pick a generator, a class, an image position and a layer, and see how much of the class the
  prediction there carries (KL to the null class) beside the share of attention that layer gives the prefix,
  under the true, the null and a wrong class (`analysis.reading`). The attention is never shown without its two
  controls: where the three agree the prefix is a sink, whatever the share's size.
- The projection test: pick an image and a number of principal axes, and see the image tokenized and decoded
  with the codebook and the latents flattened onto those axes (`analysis.geometry`).
"""

from __future__ import annotations

import functools

from PIL import Image

from llamagen.analysis.geometry import PrincipalAxes, flattened_decode
from llamagen.analysis.pictures import position_reading_figure
from llamagen.analysis.reading import ConditionReading, read_condition
from llamagen.metrics import psnr
from llamagen.pipeline import Pipeline, decode_tokens, image_grid
from llamagen.tokenizer.model import VQModel


def position_summary(reading: ConditionReading, position: int, layer: int, grid: int) -> str:
    """One line of numbers for image position `position` and layer `layer` of `reading`."""
    row, column = divmod(position, grid)
    shares = {name: float(values[layer, position]) for name, values in reading.attention.items()}
    return (
        f"position {position} (row {row}, column {column}): KL to the null class {float(reading.kl[position]):.4f} "
        f"nats; layer {layer}'s share of attention to the prefix there: {shares['true']:.4f} under the class, "
        f"{shares['null']:.4f} under the null class, {shares['wrong']:.4f} under a wrong one ({reading.wrong}); "
        f"class less null {shares['true - null']:+.4f}"
    )


def condition_explorer(pipes: dict[str, Pipeline], cfg_scales: dict[str, float], seed: int = 0):
    """An ipywidgets `interactive` over class-conditional generators of the same classes (`pipes`: name ->
    pipeline), each drawing with its `cfg_scales[name]` and `seed`; it redraws the figure and the line of
    numbers at each change."""
    import ipywidgets as widgets
    from IPython.display import display

    first = next(iter(pipes.values()))
    if any(pipe.model_type != "c2i" or pipe.class_names != first.class_names for pipe in pipes.values()):
        raise ValueError("the explorer takes class-conditional generators of the same classes")
    config = first.gpt.config
    if any(pipe.gpt.config.block_size != config.block_size for pipe in pipes.values()):
        raise ValueError("the explorer takes generators of the same image grid")

    # A slider moves only the position or the layer: the image and its reading are drawn once per class.
    @functools.lru_cache(maxsize=64)
    def drawn(name: str, class_id: int) -> tuple[ConditionReading, Image.Image]:
        pipe = pipes[name]
        tokens = pipe(class_labels=[class_id], cfg_scale=cfg_scales[name], seed=seed).tokens.to(pipe.device)
        reading = read_condition(pipe, tokens, {"class_labels": [class_id]})
        return reading, image_grid(decode_tokens(pipe.tokenizer, tokens))

    def show(generator: str, class_name: str, position: int, layer: int) -> None:
        pipe = pipes[generator]
        reading, image = drawn(generator, pipe.class_id(class_name))
        layer = min(layer, pipe.gpt.config.n_layer - 1)
        grid = pipe.gpt.config.grid_size
        display(position_reading_figure(image, reading.kl, grid, position, layer, reading.attention))
        print(f"{generator}, {class_name!r} at scale {cfg_scales[generator]:g}, seed {seed}")
        print(position_summary(reading, position, layer, grid))

    deepest = max(pipe.gpt.config.n_layer for pipe in pipes.values())
    positions = config.block_size
    return widgets.interactive(
        show,
        generator=widgets.Dropdown(options=list(pipes), description="generator"),
        class_name=widgets.Dropdown(options=list(first.class_names or range(config.num_classes)), description="class"),
        position=widgets.IntSlider(value=positions // 2, min=0, max=positions - 1, description="position"),
        layer=widgets.IntSlider(value=deepest // 2, min=0, max=deepest - 1, description="layer"),
    )


def projection_explorer(tokenizer: VQModel, images: dict[str, Image.Image], axes: PrincipalAxes):
    """An ipywidgets `interactive`: an image of `images` (name -> image) and k, and the image beside its decode
    with the codebook and the latents flattened onto the first k of `axes`, with the share of positions that
    keep their code and the PSNR."""
    import ipywidgets as widgets
    import numpy as np
    from IPython.display import display

    dimensions = tokenizer.config.codebook_embed_dim

    @functools.lru_cache(maxsize=len(images) * (dimensions + 1))
    def flattened(name: str, k: int):
        return flattened_decode(tokenizer, images[name], axes, k)

    def show(image: str, k: int) -> None:
        codes, pixels = flattened(image, k)
        full_codes, full_pixels = flattened(image, dimensions)
        original = np.array(images[image])
        display(Image.fromarray(np.concatenate([original, full_pixels, pixels], axis=1)))
        print(f"the image, its reconstruction, and with {k} of {dimensions} axes: "
              f"{float((codes == full_codes).float().mean()):.1%} of the positions keep their code; PSNR "
              f"{float(psnr(original[None], pixels[None], data_range=255.0)[0]):.2f} dB against "
              f"{float(psnr(original[None], full_pixels[None], data_range=255.0)[0]):.2f} with all")  # fmt: skip

    return widgets.interactive(
        show,
        image=widgets.Dropdown(options=list(images), description="image"),
        k=widgets.IntSlider(value=dimensions // 2, min=0, max=dimensions, description="axes"),
    )
