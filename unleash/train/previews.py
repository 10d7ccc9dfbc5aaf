"""Preview PNGs of a training run: a row of panels, each fixed (magenta) over moving (green), so
that alignment or reconstruction can be judged at a glance while a run goes on."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def coronal_projection(volume: torch.Tensor) -> np.ndarray:
    """(D, H, W) = (k, j, i) occupancy -> its maximum along j, (k, i) with superior up once drawn."""
    return volume.detach().float().amax(dim=1).cpu().numpy()


def pair_panels_png(path, panels: list[tuple[str, np.ndarray, np.ndarray]], title: str) -> None:
    """`panels`: (caption, fixed 2D, moving 2D) in [0, 1], drawn as magenta/green overlays."""
    figure = Figure(figsize=(2.6 * len(panels), 3.0), dpi=90, layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False).ravel())
    for ax, (caption, fixed, moving) in zip(axes, panels):
        fixed, moving = np.clip(fixed, 0, 1), np.clip(moving, 0, 1)
        ax.imshow(np.stack([fixed, moving, fixed], axis=-1), origin="lower", interpolation="nearest")
        ax.set_title(caption, fontsize=9)
        ax.set_axis_off()
    figure.suptitle(title, fontsize=10)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png")


def token_panels_png(path, panels: list[tuple[str, np.ndarray]], codebook_size: int, title: str) -> None:
    """`panels`: (caption, 2D token ids); the mask id (= codebook_size) is drawn black."""
    figure = Figure(figsize=(2.6 * len(panels), 3.0), dpi=90, layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False).ravel())
    for ax, (caption, tokens) in zip(axes, panels):
        shown = np.ma.masked_equal(tokens, codebook_size)
        ax.imshow(shown, origin="lower", interpolation="nearest", cmap="tab20", vmin=0, vmax=codebook_size - 1)
        ax.set_facecolor("black")
        ax.set_title(caption, fontsize=9)
        ax.set_axis_off()
    figure.suptitle(title, fontsize=10)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png")
