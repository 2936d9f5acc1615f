"""Pictures of what the models do, as PIL images: code maps, error maps, condition use, the codebook.

Drawn with Matplotlib's object API (a `Figure`, never pyplot), so nothing global changes and the apps can
draw from several threads.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw

# The error map saturates at this many levels of 255: small errors stay visible, and one scale for every
# image makes two maps comparable.
ERROR_MAP_CEILING = 64


def _colour(values: np.ndarray, cmap: str) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB through a Matplotlib colour map."""
    return (colormaps[cmap](np.clip(values, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)


def code_map(codes: torch.Tensor, codebook_size: int, cell: int = 16) -> Image.Image:
    """(h, w) code indices -> a picture with one `cell`-pixel square per token, coloured by index.

    Neighbouring indices get neighbouring colours (turbo), so repeated codes and regions of one code show.
    """
    indices = codes.detach().cpu().numpy().astype(np.float64)
    pixels = _colour(indices / max(codebook_size - 1, 1), "turbo")
    return Image.fromarray(pixels).resize((codes.shape[1] * cell, codes.shape[0] * cell), Image.NEAREST)


def pixel_differences(a: Image.Image, b: Image.Image) -> np.ndarray:
    """Per-pixel mean absolute difference over RGB, in levels of 255: (H, W) float64."""
    first = np.asarray(a.convert("RGB"), dtype=np.float64)
    second = np.asarray(b.convert("RGB"), dtype=np.float64)
    if first.shape != second.shape:
        raise ValueError(f"images differ in size: {a.size} and {b.size}")
    return np.abs(first - second).mean(-1)


def error_map(original: Image.Image, reconstruction: Image.Image, ceiling: float = ERROR_MAP_CEILING) -> Image.Image:
    """Per-pixel error (`pixel_differences`) as a heat map, black = exact, white-hot = `ceiling` levels or more."""
    return Image.fromarray(_colour(pixel_differences(original, reconstruction) / ceiling, "inferno"))


# The colour that marks an edited cell: magenta, rare in photos and absent from the shapes' palette.
MARK = (255, 0, 255)


def outlined(image: Image.Image, box: tuple[int, int, int, int], width: int = 2) -> Image.Image:
    """A copy of `image` with a `MARK` frame around the pixels of `box` (left, top, right, bottom; exclusive),
    drawn just outside them where there is room, so the framed pixels stay as they are."""
    framed = image.convert("RGB")
    draw = ImageDraw.Draw(framed)
    left, top, right, bottom = box
    draw.rectangle((left - width, top - width, right + width - 1, bottom + width - 1), outline=MARK, width=width)
    return framed


def kept_rows_marked(image: Image.Image, kept_height: int, dim_the_rest: bool = False) -> Image.Image:
    """`image` with its top `kept_height` pixel rows (the rows a completion keeps) framed, the frame drawn on
    their edge pixels (it spans the whole width: there is no room outside), so mark an enlarged image;
    `dim_the_rest`: the rows below, which a completion writes anew, shown faded towards grey."""
    marked = image.convert("RGB")
    if dim_the_rest and kept_height < marked.height:
        pixels = np.asarray(marked).copy()
        pixels[kept_height:] = (pixels[kept_height:].astype(np.float32) * 0.35 + 128 * 0.65).astype(np.uint8)
        marked = Image.fromarray(pixels)
    if kept_height > 0:
        ImageDraw.Draw(marked).rectangle((0, 0, marked.width - 1, kept_height - 1), outline=MARK, width=2)
    return marked


def labelled_rows(rows: list[Image.Image], labels: list[str], min_height: int = 96, label_width: int = 150):
    """Pictures stacked top to bottom, each with its label on the left, all enlarged by one whole factor
    (nearest neighbour, so every generated pixel stays exact) until the tallest is `min_height` pixels."""
    if len(rows) != len(labels) or not rows:
        raise ValueError(f"{len(rows)} rows and {len(labels)} labels: give one label per row, at least one row")
    scale = max(1, -(-min_height // max(row.height for row in rows)))
    gap = 4
    width = label_width + scale * max(row.width for row in rows)
    height = sum(scale * row.height for row in rows) + gap * (len(rows) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    top = 0
    for row, label in zip(rows, labels, strict=True):
        canvas.paste(row.resize((scale * row.width, scale * row.height), Image.NEAREST), (label_width, top))
        draw.text((6, top + scale * row.height // 2), label, fill=(0, 0, 0), anchor="lm")
        top += scale * row.height + gap
    return canvas


def figure_image(figure: Figure) -> Image.Image:
    """A Matplotlib figure rendered to an RGB PIL image."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def condition_use_figure(kl: torch.Tensor, grid: int, attention: dict[str, torch.Tensor]) -> Image.Image:
    """One image's condition use: the (block_size,) KL of each token's prediction to its prediction under the
    null condition, as a grid x grid map and per row of the grid; beside them, each layer's share of attention to
    the prefix under each condition of `attention` (name -> (n_layer,) shares: the true one beside its controls)."""
    figure = Figure(figsize=(9.0, 2.4))
    heat, rows, shares = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.3, 1.3], "wspace": 0.45})
    shown = heat.imshow(kl.float().view(grid, grid).numpy(), cmap="magma", vmin=0.0)
    figure.colorbar(shown, ax=heat, fraction=0.046)
    heat.set_title("KL to the null condition, nats", fontsize=8)
    heat.set_xticks([])
    heat.set_yticks([])
    rows.bar(np.arange(grid), kl.float().view(grid, grid).mean(1).numpy(), color="#cb3c33")
    rows.set_title("mean per row of the grid", fontsize=8)
    rows.set_xlabel("row", fontsize=8)
    layers = np.arange(len(next(iter(attention.values()))))
    width = 0.8 / len(attention)
    for i, (name, values) in enumerate(attention.items()):
        shares.bar(layers + i * width, values.float().numpy(), width, label=name)
    shares.set_title("attention to the prefix", fontsize=8)
    shares.set_xlabel("layer", fontsize=8)
    shares.legend(fontsize=7)
    for ax in (rows, shares):
        ax.tick_params(labelsize=7)
    return figure_image(figure)


def side_by_side_figure(images: list[Image.Image], names: list[str], kl_rows: list[torch.Tensor]) -> Image.Image:
    """One image from each generator (`names`), drawn above the mean KL to the null condition per row of the
    grid that each one's predictions carry on its own image (`kl_rows`: (grid,) each)."""
    columns = len(images)
    figure = Figure(figsize=(max(6.0, 1.6 * columns), 4.2))
    grid = figure.add_gridspec(2, columns, height_ratios=[1, 1.1], hspace=0.45)
    for i, (image, name) in enumerate(zip(images, names, strict=True)):
        ax = figure.add_subplot(grid[0, i])
        ax.imshow(np.asarray(image), interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    rows = figure.add_subplot(grid[1, :])
    for name, values in zip(names, kl_rows, strict=True):
        rows.plot(np.arange(len(values)), values.float().numpy(), marker="o", markersize=3, label=name)
    rows.set_title("KL to the null condition, mean per row of the grid, nats", fontsize=8)
    rows.set_xlabel("row", fontsize=8)
    rows.tick_params(labelsize=7)
    rows.legend(fontsize=7)
    return figure_image(figure)


def position_reading_figure(
    image: Image.Image, kl: torch.Tensor, grid: int, position: int, layer: int, attention: dict[str, torch.Tensor]
) -> Image.Image:
    """One image read at one token: the image and its map of KL to the null condition (nats) with image
    position `position` framed, and the share of attention layer `layer` gives the prefix at every position
    under each condition of `attention` (name -> (n_layer, block_size)), `position` marked."""
    figure = Figure(figsize=(10.0, 2.6))
    drawn, heat, shares = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.2, 2.2], "wspace": 0.35})
    row, column = divmod(position, grid)
    cell = image.width / grid
    drawn.imshow(np.asarray(image), interpolation="nearest")
    shown = heat.imshow(kl.float().view(grid, grid).numpy(), cmap="magma", vmin=0.0)
    figure.colorbar(shown, ax=heat, fraction=0.046)
    for ax, size, title in ((drawn, cell, "the image"), (heat, 1.0, "KL to the null condition, nats")):
        ax.add_patch(Rectangle((column * size - 0.5, row * size - 0.5), size, size, fill=False, color="#2ca02c", lw=2))
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for name, values in attention.items():
        shares.plot(np.arange(values.shape[1]), values[layer].float().numpy(), label=name, lw=1.2)
    shares.axvline(position, color="#2ca02c", lw=1, ls=":")
    shares.set_title(f"layer {layer}: share of attention to the prefix, per image position", fontsize=8)
    shares.set_xlabel("image position (raster order)", fontsize=8)
    shares.tick_params(labelsize=7)
    shares.legend(fontsize=7)
    return figure_image(figure)


def codebook_figure(points: np.ndarray, counts: torch.Tensor, selected: int | None = None) -> Image.Image:
    """(K, 2) projected codes coloured by log usage (grey: unused); `selected` circled."""
    counts = counts.numpy()
    used = counts > 0
    figure = Figure(figsize=(6.0, 5.0))
    ax = figure.subplots()
    ax.scatter(*points[~used].T, s=3, c="#c8c8c8", label=f"unused ({(~used).sum()})", linewidths=0)
    dots = ax.scatter(*points[used].T, s=5, c=np.log10(counts[used]), cmap="plasma", linewidths=0,
                      label=f"used ({used.sum()})")  # fmt: skip
    figure.colorbar(dots, ax=ax, label="log10 uses")
    if selected is not None:
        ax.scatter(*points[selected], s=160, facecolors="none", edgecolors="#00a000", linewidths=2,
                   label=f"code {selected}")  # fmt: skip
    ax.legend(loc="upper right", fontsize=8, markerscale=2)
    ax.set_xticks([])
    ax.set_yticks([])
    return figure_image(figure)
