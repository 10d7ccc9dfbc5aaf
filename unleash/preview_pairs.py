"""One PNG that shows sampled pairs at a glance: a coronal maximum-intensity projection of each pair,
fixed in magenta and moving in green (where they agree: white), in millimetres, patient right on the
left and superior up, as Slicer shows a coronal view of an identity-direction (LPS) volume."""
from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .geometry import Volume


def pair_projections(fixed: Volume, moving: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Coronal projections [k, i] (superior-inferior by left-right) of two label maps on one
    identity-direction grid: the maximum along j, the anterior-posterior axis."""
    return (fixed.array > 0).any(axis=1), (moving.array > 0).any(axis=1)


def pairs_preview_png(path, projections: list[tuple[np.ndarray, np.ndarray]], spacing_mm, title: str) -> None:
    """Write the grid of projections (from `pair_projections`) to `path`; `spacing_mm` (i, j, k)."""
    columns = min(8, len(projections))
    rows = math.ceil(len(projections) / columns)
    figure = Figure(figsize=(2.2 * columns, 2.4 * rows + 0.4), dpi=100, layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for index, ax in enumerate(axes):
        ax.set_axis_off()
        if index >= len(projections):
            continue
        fixed, moving = (p.astype(np.float32) for p in projections[index])
        height, width = fixed.shape
        extent = (0, width * spacing_mm[0], 0, height * spacing_mm[2])
        ax.imshow(np.stack([fixed, moving, fixed], axis=-1), origin="lower", extent=extent, interpolation="nearest")
        ax.set_title(f"pair_{index + 1:04d}", fontsize=9)
    figure.suptitle(title, fontsize=11 if columns > 2 else 7)  # one or two pairs: a narrow figure
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png")
