"""Displacement fields on a scan's own grid, as ITK and Slicer read them.

A field here is a numpy array (3, k, j, i) of LPS millimetres on a `Grid`, mapping a point x of
that grid's space to x + u(x) (the ITK resampling direction). On disk it is a 3-component vector
image with the grid's geometry, which `sitk.DisplacementFieldTransform` and Slicer's
`loadTransform` read as a transform.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from .fields import det3
from .geometry import Grid, Volume
from .workgrid import field_to_grid


def axis_steps_lps(grid: Grid) -> np.ndarray:
    """(3, 3): row a is the LPS mm step of one voxel along index axis a (i, j, k)."""
    direction = np.asarray(grid.direction, np.float64).reshape(3, 3)
    return (direction * np.asarray(grid.spacing_mm)[None, :]).T


def displacement_image(displacement_lps_mm: np.ndarray, grid: Grid) -> sitk.Image:
    """(3, k, j, i) -> a float32 vector image (half the file of float64; readers cast it with
    sitk.ReadImage(path, sitk.sitkVectorFloat64) for DisplacementFieldTransform)."""
    image = sitk.GetImageFromArray(np.moveaxis(displacement_lps_mm, 0, -1).astype(np.float32), isVector=True)
    image.SetSpacing([float(s) for s in grid.spacing_mm])
    image.SetOrigin([float(o) for o in grid.origin_lps])
    image.SetDirection([float(d) for d in grid.direction])
    return image


def read_displacement(path) -> tuple[np.ndarray, Grid]:
    image = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
    return np.moveaxis(sitk.GetArrayFromImage(image), -1, 0).astype(np.float32), Grid.of(image)


def read_displacement_on(path, grid: Grid) -> np.ndarray:
    """A displacement file linearly interpolated at every voxel of `grid` (as ITK reads it): (3, k, j, i) LPS mm."""
    displacement, field_grid = read_displacement(path)
    return field_to_grid(torch.from_numpy(displacement)[None], field_grid, grid)


def jacobian_determinant(displacement_lps_mm: np.ndarray, grid: Grid, slab: int = 32) -> np.ndarray:
    """(k, j, i) float32 det(I + du/dx) of a (3, k, j, i) LPS mm field, derivatives in physical
    space (x = origin + D S index, so du/dx_a = sum_b du/d index_b * d index_b/dx_a). Central
    differences inside, one-sided at the edges (as np.gradient); computed in slabs of k so that a
    large scan's nine derivative maps never exist at once, skipping the zero terms of d index/dx
    (six of nine for the usual axis-aligned scan)."""
    to_index = np.linalg.inv(axis_steps_lps(grid).T)  # [b, a] = d index_b / d x_a
    field = torch.from_numpy(np.ascontiguousarray(displacement_lps_mm, dtype=np.float32))
    depth = field.shape[1]
    out = np.empty(field.shape[1:], np.float32)
    for k0 in range(0, depth, slab):
        lo, hi = max(0, k0 - 1), min(depth, k0 + slab + 1)
        d_dk, d_dj, d_di = torch.gradient(field[:, lo:hi], dim=(1, 2, 3))  # each (3, k, j, i)
        keep = slice(k0 - lo, k0 - lo + min(slab, depth - k0))
        by_index = [d[:, keep] for d in (d_di, d_dj, d_dk)]
        jac = [[_entry(by_index, to_index[:, a], c, 1.0 if a == c else 0.0) for a in range(3)] for c in range(3)]
        out[k0:min(depth, k0 + slab)] = det3(jac).numpy()
    return out


def _entry(by_index: list[torch.Tensor], d_index_dx: np.ndarray, component: int, identity: float) -> torch.Tensor:
    """identity + sum_b du_component/d index_b * d index_b/dx over the non-zero terms."""
    total = None
    for b in np.nonzero(d_index_dx)[0]:
        term = by_index[b][component] * float(d_index_dx[b])
        total = term if total is None else total.add_(term)
    if total is None:
        return torch.full_like(by_index[0][component], identity)
    return total.add_(identity)


def displacement_at(displacement_lps_mm: np.ndarray, grid: Grid, points_lps: np.ndarray) -> np.ndarray:
    """u at LPS points (N, 3) by trilinear interpolation -> (N, 3) mm (nearest edge value outside)."""
    ijk = grid.physical_to_index(points_lps)
    coords = ijk[:, ::-1].T  # (3, N) as (k, j, i)
    return np.stack([ndimage.map_coordinates(displacement_lps_mm[c], coords, order=1, mode="nearest")
                     for c in range(3)], axis=1)


def warp_volume(moving: Volume, displacement_lps_mm: np.ndarray, field_grid: Grid, fixed_grid: Grid,
                labels: bool) -> Volume:
    """`moving` resampled onto the fixed grid through the field on `field_grid` (ITK interpolates it linearly;
    nearest neighbour for the voxels of label maps)."""
    field = sitk.Cast(displacement_image(displacement_lps_mm, field_grid), sitk.sitkVectorFloat64)
    transform = sitk.DisplacementFieldTransform(field)
    image = moving.to_sitk()
    default = 0.0 if labels else float(np.min(moving.array))
    out = sitk.Resample(image, fixed_grid.to_sitk(image.GetPixelID()), transform,
                        sitk.sitkNearestNeighbor if labels else sitk.sitkLinear, default, image.GetPixelID())
    return Volume.from_sitk(out)
