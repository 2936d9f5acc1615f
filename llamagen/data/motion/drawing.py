"""Pictures of motion, seen from the front-left: a strip of stick figures (one panel per chosen frame, PIL
alone, any size) and an animation of several clips side by side (Plotly frames, for notebooks and the app).

Both follow the body (its root is centred), so a walk stays in view; marks on the ground show travel: in the
strip a tick where the body stood in the first panel, in the animation ticks every half metre that pass by.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from llamagen.data.motion.skeleton import JOINT, PARENTS

# The view: screen x mixes forward (z) and left (x), as a camera ahead of the body and to its left sees it.
VIEW_FORWARD, VIEW_LEFT = 0.8, -0.6
SIDE = {index: name.split("_")[0] if "_" in name and name[0] in "lr" else "centre" for name, index in JOINT.items()}
COLOURS = {"left": (200, 60, 40), "right": (40, 90, 200), "centre": (40, 40, 40)}


def _screen(points: np.ndarray) -> np.ndarray:
    """(..., 3) metres -> (..., 2) metres on the picture plane (x right, y up)."""
    return np.stack([VIEW_FORWARD * points[..., 2] + VIEW_LEFT * points[..., 0], points[..., 1]], axis=-1)


def motion_strip(positions: np.ndarray, panels: int = 8, panel_size: int = 96) -> Image.Image:
    """Positions (T, 22, 3) -> a strip of `panels` stick figures at evenly spaced frames; the left limbs red,
    the right blue."""
    positions = np.asarray(positions, dtype=np.float64)
    frames = np.linspace(0, len(positions) - 1, panels).round().astype(int)
    scale = panel_size / 2.3  # pixels a metre: a 1.9 m body with room above and below
    strip = Image.new("RGB", (panel_size * panels, panel_size), (250, 250, 248))
    draw = ImageDraw.Draw(strip)
    start = _screen(positions[0, 0])[0]
    for panel, frame in enumerate(frames):
        centre = _screen(positions[frame, 0])[0]
        origin = np.array([panel * panel_size + panel_size / 2, panel_size * 0.93])

        def pixel(point, centre=centre, origin=origin):
            x, y = _screen(point)
            return (origin[0] + (x - centre) * scale, origin[1] - y * scale)

        ground = origin[1]
        draw.line([(panel * panel_size + 4, ground), ((panel + 1) * panel_size - 4, ground)], fill=(180, 180, 170))
        tick = origin[0] + (start - centre) * scale
        if panel * panel_size <= tick <= (panel + 1) * panel_size:
            draw.line([(tick, ground - 3), (tick, ground + 3)], fill=(120, 120, 110))
        for joint in range(1, len(PARENTS)):
            bone = [pixel(positions[frame, PARENTS[joint]]), pixel(positions[frame, joint])]
            draw.line(bone, fill=COLOURS[SIDE[joint]], width=max(1, panel_size // 48))
        head = pixel(positions[frame, JOINT["head"]])
        radius = 0.09 * scale
        draw.ellipse([head[0] - radius, head[1] - radius, head[0] + radius, head[1] + radius],
                     outline=COLOURS["centre"])  # fmt: skip
    return strip


GROUND_TICK_SPACING = 0.5  # metres between the animation's ground marks
VIEW_HALF_WIDTH = 1.2  # metres of ground either side of the body in the animation
TRACES_PER_PANEL = len(COLOURS) + 2  # the bones of each side and the trunk, the head, the ground


def _bone_lines(points: np.ndarray, centre: float) -> dict[str, tuple[list, list]]:
    """One pose's bones as (x, y) polylines per side, broken by None, with the body centred at x = 0."""
    lines = {side: ([], []) for side in COLOURS}
    screen = _screen(points)
    for joint in range(1, len(PARENTS)):
        xs, ys = lines[SIDE[joint]]
        for end in (PARENTS[joint], joint):
            xs.append(float(screen[end, 0] - centre))
            ys.append(float(screen[end, 1]))
        xs.append(None)
        ys.append(None)
    return lines


def _ground_ticks(start: float, centre: float) -> tuple[list, list]:
    """Short marks on the ground every GROUND_TICK_SPACING metres of the picture plane, fixed to the world."""
    first = np.ceil((centre - VIEW_HALF_WIDTH - start) / GROUND_TICK_SPACING)
    xs, ys = [], []
    for k in np.arange(first, first + 2 * VIEW_HALF_WIDTH / GROUND_TICK_SPACING + 1):
        x = float(start + k * GROUND_TICK_SPACING - centre)
        xs += [x, x, None]
        ys += [-0.04, 0.04, None]
    return xs, ys


def motion_animation(clips: dict[str, np.ndarray], fps: int = 20, height: int = 360):
    """An animated plotly Figure of each clip's positions ((T, 22, 3) metres) side by side under its title, with
    play and pause buttons and a frame slider; a clip shorter than the longest holds its last pose. Each panel
    has TRACES_PER_PANEL traces: the left limbs (red), the right limbs (blue), the trunk, the head, the ground's
    marks."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles = list(clips)
    poses = [np.asarray(clips[title], dtype=np.float64) for title in titles]
    frames = max(len(pose) for pose in poses)

    def on_panel(panel, **drawing):
        return go.Scatter(showlegend=False, xaxis=f"x{panel + 1}", yaxis=f"y{panel + 1}", **drawing)

    def lines(xs, ys, colour, width, panel):
        return on_panel(panel, x=xs, y=ys, mode="lines", line={"color": colour, "width": width})

    def traces(t: int) -> list:
        drawn = []
        for panel, pose in enumerate(poses):
            points = pose[min(t, len(pose) - 1)]
            centre = float(_screen(points[0])[0])
            for side, (xs, ys) in _bone_lines(points, centre).items():
                drawn.append(lines(xs, ys, "rgb({},{},{})".format(*COLOURS[side]), 3, panel))
            x, y = _screen(points[JOINT["head"]])
            marker = {"size": 12, "color": "rgb(250,250,248)", "line": {"width": 2}}
            drawn.append(on_panel(panel, x=[float(x - centre)], y=[float(y)], mode="markers", marker=marker))
            ticks = _ground_ticks(float(_screen(pose[0, 0])[0]), centre)
            drawn.append(lines(*ticks, "rgb(150,150,140)", 2, panel))
        return drawn

    figure = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.02)
    for index, trace in enumerate(traces(0)):
        figure.add_trace(trace, row=1, col=index // TRACES_PER_PANEL + 1)
    figure.frames = [go.Frame(data=traces(t), name=str(t)) for t in range(frames)]
    for panel in range(len(titles)):
        figure.update_xaxes(range=[-VIEW_HALF_WIDTH, VIEW_HALF_WIDTH], visible=False, row=1, col=panel + 1)
        figure.update_yaxes(range=[-0.1, 2.1], visible=False, scaleanchor=f"x{panel + 1}", row=1, col=panel + 1)
    play = {"frame": {"duration": 1000 / fps, "redraw": False}, "transition": {"duration": 0}, "fromcurrent": True}
    still = {"frame": {"duration": 0, "redraw": False}, "mode": "immediate"}
    buttons = [
        {"label": "play", "method": "animate", "args": [None, play]},
        {"label": "pause", "method": "animate", "args": [[None], still]},
    ]
    steps = [{"label": str(t), "method": "animate", "args": [[str(t)], still]} for t in range(frames)]
    figure.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        plot_bgcolor="rgb(250,250,248)",
        updatemenus=[{"type": "buttons", "direction": "left", "x": 0, "y": 0, "yanchor": "top", "buttons": buttons}],
        sliders=[{"x": 0.15, "len": 0.85, "y": 0.0, "currentvalue": {"prefix": "frame "}, "steps": steps}],
    )
    return figure
