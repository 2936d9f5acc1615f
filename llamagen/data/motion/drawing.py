"""Pictures of motion: a strip of stick figures, one panel per chosen frame, seen from the front-left.

Each panel follows the body (its root is centred), so a walk stays in frame; a tick on the ground line marks
where the body stood in the first panel, so travel still shows. Drawn with PIL alone, at any size.
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
