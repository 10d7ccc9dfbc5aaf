"""One PNG that shows a registration at a glance.

Rows: axial, coronal, sagittal views through the centre of the fixed foreground. Columns:
(a) fixed and moving overlaid (before), (b) fixed and warped moving overlaid (after), (c) the
deformed grid over the fixed slice, (d) the Jacobian determinant. Arrays are reoriented to the
nearest LPS axes first, so views are anatomical whatever the file's direction, and every panel is
drawn in millimetres, so the aspect ratio is the physical one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import TwoSlopeNorm, to_rgba
from matplotlib.figure import Figure
from matplotlib.patheffects import withStroke
from scipy.optimize import linear_sum_assignment

from .geometry import Volume, resample

SLAB_MM = 10.0           # binary trees are thin: a maximum over a slab shows their branching
GRID_STEP_MM = 8.0
LUNG_WINDOW_HU = (-1000.0, 200.0)
MAX_LABEL_VALUES = 8     # at most this many distinct values: a mask, not a CT
JACOBIAN_MAX = 2.0
FOLDING_RGBA = to_rgba("lime")

# (name, fixed xyz axis, horizontal axis, vertical axis, vertical axis points down on screen,
#  labels at the left, right, top and bottom edges); radiological display: patient right on the left
VIEWS = (
    ("axial", 2, 0, 1, True, "RLAP"),
    ("coronal", 1, 0, 2, False, "RLSI"),
    ("sagittal", 0, 1, 2, False, "APSI"),
)


# ----------------------------------------------------------------------------------------------
# reorientation and slices


class _LpsFrame:
    """How a grid's [k, j, i] array maps onto arrays [x, y, z] that increase along L, P, S."""

    def __init__(self, volume: Volume):
        direction = np.asarray(volume.grid.direction, np.float64).reshape(3, 3)
        # index axis (i, j, k) nearest to each physical axis (x, y, z), one each even if oblique
        _, index_axis = linear_sum_assignment(-np.abs(direction))
        self.array_axes = tuple(2 - int(a) for a in index_axis)  # [k, j, i] position of i, j, k
        self.flip = tuple(direction[c, index_axis[c]] < 0 for c in range(3))
        self.spacing_mm = np.array([volume.grid.spacing_mm[a] for a in index_axis], np.float64)

    def apply(self, array_kji: np.ndarray) -> np.ndarray:
        """A view (no copy) of a (k, j, i) array as (x, y, z)."""
        xyz = np.transpose(array_kji, self.array_axes)
        return xyz[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]


def _is_label_image(array: np.ndarray) -> bool:
    """A mask or label map rather than a CT; judged on a subsample because np.unique sorts."""
    step = max(1, round(max(array.shape) / 80))
    return np.unique(array[::step, ::step, ::step]).size <= MAX_LABEL_VALUES


def _foreground(array: np.ndarray, is_label: bool) -> np.ndarray:
    # in a CT the lungs' parenchyma is the foreground: between air and soft tissue
    return array > 0 if is_label else (array > -950) & (array < -400)


def _foreground_box_xyz(fixed_xyz: np.ndarray, is_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) voxel indices (x, y, z) of the foreground's robust bounding box; the 2nd and 98th
    percentiles ignore stray voxels (noise, air outside the body) that a plain box would not."""
    step = max(1, round(max(fixed_xyz.shape) / 100))
    sub = fixed_xyz[::step, ::step, ::step]
    points = np.argwhere(_foreground(sub, is_label))
    if len(points) == 0:
        return np.zeros(3), np.asarray(fixed_xyz.shape, np.float64) - 1
    lo, hi = np.percentile(points, [2, 98], axis=0)
    return lo * step, hi * step


def _view_centres_xyz(fixed_xyz: np.ndarray, is_label: bool) -> list[np.ndarray]:
    """(3,) voxel indices (x, y, z) each view cuts through, in VIEWS order: the foreground's centre,
    except that the sagittal view goes through the centre of the patient's right half, because the
    mid-sagittal plane lies between the lungs and shows neither."""
    lo, hi = _foreground_box_xyz(fixed_xyz, is_label)
    last = np.asarray(fixed_xyz.shape) - 1
    centre = (lo + hi) / 2
    sagittal = centre.copy()
    sagittal[0] = (lo[0] + centre[0]) / 2  # +x is the patient's left, so low x is the right
    return [np.clip(np.round(c).astype(int), 0, last) for c in (centre, centre, sagittal)]


def _plane(array_xyz: np.ndarray, view, centre: np.ndarray, slab_voxels: int = 0) -> np.ndarray:
    """2D [vertical, horizontal] slice of an (x, y, z) array, or its maximum over
    centre +- slab_voxels along the view axis."""
    _, axis, _, _, _, _ = view
    lo = max(0, int(centre[axis]) - slab_voxels)
    hi = min(array_xyz.shape[axis], int(centre[axis]) + slab_voxels + 1)
    slab = np.take(array_xyz, np.arange(lo, hi), axis=axis)
    # the two remaining axes stay in increasing order, (horizontal, vertical): transpose to [v, h]
    return slab.max(axis=axis).T


def _display(array_xyz: np.ndarray, view, centre, frame: _LpsFrame, is_label: bool) -> np.ndarray:
    """[v, h] float in 0..1: a slab maximum of a mask, or a lung-window slice of a CT."""
    if is_label:
        slab_voxels = round(SLAB_MM / 2 / float(frame.spacing_mm[view[1]]))
        return (_plane(array_xyz, view, centre, slab_voxels) > 0).astype(np.float32)
    low, high = LUNG_WINDOW_HU
    return np.clip((_plane(array_xyz, view, centre).astype(np.float32) - low) / (high - low), 0, 1)


# ----------------------------------------------------------------------------------------------
# panels


def _extent_mm(shape_vh, view, frame: _LpsFrame) -> tuple[float, float, float, float]:
    """imshow extent in mm (pixel centres at index * spacing) with the vertical axis flipped as needed."""
    _, _, h_axis, v_axis, v_down, _ = view
    sh, sv = frame.spacing_mm[h_axis], frame.spacing_mm[v_axis]
    left, right = -sh / 2, (shape_vh[1] - 0.5) * sh
    low, high = -sv / 2, (shape_vh[0] - 0.5) * sv
    return (left, right, high, low) if v_down else (left, right, low, high)


def _show(ax, image, view, frame, **kwargs) -> None:
    origin = "upper" if view[4] else "lower"
    ax.imshow(image, extent=_extent_mm(image.shape, view, frame), origin=origin,
              interpolation="nearest", aspect="equal", **kwargs)


def _overlay(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """[v, h, 3]: `first` in magenta, `second` in green; where both agree the result is grey/white."""
    return np.clip(np.stack([first, second, first], axis=-1), 0, 1)


def _deformed_lattice(u_h: np.ndarray, u_v: np.ndarray, view, frame: _LpsFrame) -> LineCollection:
    """Lattice lines every ~GRID_STEP_MM, each point moved by the in-plane displacement (mm)."""
    _, _, h_axis, v_axis, _, _ = view
    sh, sv = frame.spacing_mm[h_axis], frame.spacing_mm[v_axis]
    h_mm = np.arange(u_h.shape[1]) * sh
    v_mm = np.arange(u_h.shape[0]) * sv
    lines = []
    for row in range(0, u_h.shape[0], max(1, round(GRID_STEP_MM / sv))):
        lines.append(np.column_stack([h_mm + u_h[row], v_mm[row] + u_v[row]]))
    for col in range(0, u_h.shape[1], max(1, round(GRID_STEP_MM / sh))):
        lines.append(np.column_stack([h_mm[col] + u_h[:, col], v_mm + u_v[:, col]]))
    return LineCollection(lines, colors="gold", linewidths=0.6)


def _jacobian_rgba(jacobian_vh: np.ndarray, norm, cmap) -> np.ndarray:
    """Diverging colours centred at 1, with folding (J <= 0) in a colour the map does not use."""
    rgba = cmap(norm(jacobian_vh))
    rgba[jacobian_vh <= 0] = FOLDING_RGBA
    return rgba


def _label_edges(ax, letters: str) -> None:
    for (x, y, ha, va), letter in zip(((0.01, 0.5, "left", "center"), (0.99, 0.5, "right", "center"),
                                       (0.5, 0.99, "center", "top"), (0.5, 0.01, "center", "bottom")),
                                      letters):
        ax.text(x, y, letter, transform=ax.transAxes, ha=ha, va=va, color="white", fontsize=9,
                fontweight="bold", path_effects=[withStroke(linewidth=2, foreground="black")])


# ----------------------------------------------------------------------------------------------
# the figure


def _on_fixed_grid(volume: Volume, fixed: Volume, is_label: bool) -> Volume:
    if volume.grid == fixed.grid:
        return volume
    return resample(volume, fixed.grid, linear=not is_label, default=0.0 if is_label else LUNG_WINDOW_HU[0])


def _draw_row(axes, view, fixed_xyz, moving_xyz, warped_xyz, u_xyz, jacobian_xyz, centre, frame,
              is_label, norm, cmap) -> None:
    fixed_2d = _display(fixed_xyz, view, centre, frame, is_label)
    _show(axes[0], _overlay(fixed_2d, _display(moving_xyz, view, centre, frame, is_label)), view, frame)
    _show(axes[1], _overlay(fixed_2d, _display(warped_xyz, view, centre, frame, is_label)), view, frame)
    _show(axes[2], fixed_2d, view, frame, cmap="gray", vmin=0, vmax=1)
    _, _, h_axis, v_axis, _, _ = view
    u_h = _plane(u_xyz[h_axis], view, centre)
    u_v = _plane(u_xyz[v_axis], view, centre)
    axes[2].add_collection(_deformed_lattice(u_h, u_v, view, frame), autolim=False)
    _show(axes[3], _jacobian_rgba(_plane(jacobian_xyz, view, centre), norm, cmap), view, frame)
    axes[3].figure.colorbar(ScalarMappable(norm, cmap), ax=axes[3], fraction=0.046, pad=0.02,
                            extend="max", label="Jacobian determinant")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        _label_edges(ax, view[5])
    axes[0].set_ylabel(view[0], fontsize=12)


def _figure(fixed, moving, warped, displacement_lps_mm, jacobian, title) -> Figure:
    is_label = _is_label_image(fixed.array)
    moving = _on_fixed_grid(moving, fixed, is_label)
    warped = _on_fixed_grid(warped, fixed, is_label)
    frame = _LpsFrame(fixed)
    fixed_xyz, moving_xyz, warped_xyz = (frame.apply(v.array) for v in (fixed, moving, warped))
    u_xyz = [frame.apply(displacement_lps_mm[c]) for c in range(3)]  # components stay LPS
    jacobian_xyz = frame.apply(jacobian)
    centres = _view_centres_xyz(fixed_xyz, is_label)
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=JACOBIAN_MAX)
    cmap = colormaps["RdBu_r"]

    figure = Figure(figsize=(17, 13), dpi=100, layout="constrained")
    axes = figure.subplots(3, 4)
    for row, (view, centre) in enumerate(zip(VIEWS, centres)):
        _draw_row(axes[row], view, fixed_xyz, moving_xyz, warped_xyz, u_xyz, jacobian_xyz, centre,
                  frame, is_label, norm, cmap)
    folded = float(np.mean(jacobian <= 0)) * 100
    headers = ("before: fixed (magenta), moving (green)", "after: fixed (magenta), warped (green)",
               f"deformed grid, {GRID_STEP_MM:g} mm", f"Jacobian (J <= 0 in green: {folded:.3f} %)")
    for ax, header in zip(axes[0], headers):
        ax.set_title(header, fontsize=11)
    if title:
        figure.suptitle(title, fontsize=14)
    return figure


def overview_png(path, fixed: Volume, moving: Volume, warped: Volume, displacement_lps_mm: np.ndarray,
                 jacobian: np.ndarray, title: str = "") -> None:
    """Write the overview PNG to `path`.

    fixed: the fixed scan; moving: the moving scan (resampled onto the fixed grid if it lies on
    another); warped: the moving scan warped onto the fixed grid; displacement_lps_mm: (3, k, j, i)
    on the fixed grid, components x, y, z in LPS mm; jacobian: (k, j, i) on the fixed grid.
    Written to a temporary file next to `path` and moved into place, so a reader never sees half a PNG.
    """
    path = Path(path)
    figure = _figure(fixed, moving, warped, displacement_lps_mm, jacobian, title)
    FigureCanvasAgg(figure)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            figure.savefig(stream, format="png")
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a preview is for sharing
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
