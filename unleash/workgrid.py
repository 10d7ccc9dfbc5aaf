"""Onto the model's work grid and back.

A scan is moved onto a grid of fixed shape and spacing (stored in the model file), axis-aligned in
LPS and centred on its own lungs, so fixed and moving are roughly aligned before any network runs
(the offset between the two lung centres is the first, rigid, part of the transform). Vessel
occupancy is sampled at half the work spacing and averaged down, so thin vessels are not lost.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import Grid, Volume, foreground_center_lps, network_grid, resample
from .losses import gaussian_blur


def work_grid(center_lps: np.ndarray, shape_xyz, spacing_mm: float) -> Grid:
    return network_grid(center_lps, shape_xyz, spacing_mm)


def occupancy_on(grid: Grid, vessels: Volume, supersample: int = 2) -> torch.Tensor:
    """Share of each voxel of `grid` covered by vessels, (1, 1, D, H, W) float32 in [0, 1]: the
    binary vessels are sampled `supersample` times finer along each axis and averaged down."""
    binary = vessels.with_array((vessels.array > 0).astype(np.float32))
    s = supersample  # 1: plain linear resampling onto `grid` (the fine grid is `grid` itself)
    fine = Grid(tuple(s * n for n in grid.size), tuple(h / s for h in grid.spacing_mm),
                tuple(o - h / 2 + h / (2 * s) for o, h in zip(grid.origin_lps, grid.spacing_mm)))
    fine_occupancy = torch.from_numpy(resample(binary, fine).array)[None, None]
    return F.avg_pool3d(fine_occupancy, s)


def finer(grid: Grid, factor: int) -> Grid:
    """The grid over the same box (first and last voxel centres kept) with `factor` times the voxels
    per mm, e.g. the 1 mm grid of a 2 mm work grid for refinement on the scans' full resolution."""
    return Grid(tuple((n - 1) * factor + 1 for n in grid.size), tuple(h / factor for h in grid.spacing_mm),
                grid.origin_lps, grid.direction)


def lung_center_lps(vessels: Volume, lungs: np.ndarray) -> np.ndarray:
    return foreground_center_lps(vessels, lungs)


def covering(grid: Grid, scan: Grid) -> Grid:
    """`grid`'s own lattice (spacing, direction, voxel positions) over the smallest box that holds every
    voxel centre of `scan`. A work-grid field sampled there keeps the work grid's values at its nodes, so
    its linear interpolation (ITK's and Slicer's) is the transform itself, not a resampling of it."""
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in scan.size])), np.float64)
    index = grid.physical_to_index(scan.index_to_physical(corners))
    low, high = np.floor(index.min(0) + 1e-4), np.ceil(index.max(0) - 1e-4)  # 1e-4 voxel: rounding, not a node
    return Grid(tuple(int(n) for n in high - low + 1), grid.spacing_mm, tuple(grid.index_to_physical(low[None])[0]),
                grid.direction)


def field_to_grid(field: torch.Tensor, source: Grid, target: Grid, chunk_slices: int = 24) -> np.ndarray:
    """Sample a field (1, C, D, H, W) defined on the grid `source` at every voxel of `target` and return
    (C, k, j, i) float32 on `target` (a displacement: C = 3, LPS mm), trilinearly. Outside `source` the
    border value is continued, so a displacement stays smooth beyond the lungs."""
    corners = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64)
    index = source.physical_to_index(target.index_to_physical(corners))
    origin, steps = index[0], index[1:] - index[0]  # steps[a, s]: source index s per target index along a
    along = np.abs(steps) > 1e-6 * np.abs(steps).max()
    if (along.sum(0) == 1).all() and (along.sum(1) == 1).all():
        return _separable(field, target, origin, steps, along)
    return _sampled(field, source, target, origin, steps, chunk_slices)


def _separable(field: torch.Tensor, target: Grid, origin: np.ndarray, steps: np.ndarray, along: np.ndarray) -> np.ndarray:
    """Each target axis runs along one source axis (axis-aligned grids, flipped or permuted, as scans and
    the work grid usually are): trilinear sampling is then three 1-D linear interpolations, one per axis,
    several times faster than grid_sample at every voxel of a 1 mm scan."""
    u = field[0].float()  # (C, D, H, W): source index axis s (i, j, k) is dimension 3 - s
    source_of = [int(np.argmax(along[a])) for a in range(3)]
    for a, s in enumerate(source_of):
        dim, size = 3 - s, u.shape[3 - s]
        position = torch.from_numpy(origin[s] + steps[a, s] * np.arange(target.size[a])).clamp(0, size - 1)
        low = position.floor().clamp(max=max(0, size - 2)).long()
        weight = (position - low).float().view([-1 if d == dim else 1 for d in range(4)])
        high = (low + 1).clamp(max=size - 1)
        # indexing, not index_select: along the last dimension index_select is 10x slower on the CPU
        at = (slice(None),) * dim
        u = torch.lerp(u[(*at, low)], u[(*at, high)], weight)
    # dimension 3 - source_of[a] now holds target axis a; out: (C, k, j, i)
    return u.permute(0, *[3 - source_of[a] for a in (2, 1, 0)]).contiguous().numpy()


def _sampled(field: torch.Tensor, source: Grid, target: Grid, origin: np.ndarray, steps: np.ndarray,
             chunk_slices: int) -> np.ndarray:
    """Any pair of grids: both are affine in the voxel index, so target index -> source normalised
    coordinates is one 3x4 matrix, and grid_sample reads the field there."""
    size_i, size_j, size_k = target.size
    d, h, w = field.shape[2:]
    channels = field.shape[1]
    to_normalised = 2 / np.array([w - 1, h - 1, d - 1])
    affine = np.concatenate([steps * to_normalised, (origin * to_normalised - 1)[None]], 0)
    affine = torch.from_numpy(affine.astype(np.float32))  # (4, 3)
    out = np.empty((channels, size_k, size_j, size_i), np.float32)
    ii = torch.arange(size_i, dtype=torch.float32)
    jj = torch.arange(size_j, dtype=torch.float32)
    u = field.float()
    for k0 in range(0, size_k, chunk_slices):
        kk = torch.arange(k0, min(size_k, k0 + chunk_slices), dtype=torch.float32)
        k, j, i = torch.meshgrid(kk, jj, ii, indexing="ij")
        homogeneous = torch.stack([i, j, k, torch.ones_like(i)], dim=-1)  # (k, j, i, 4)
        points = (homogeneous @ affine).reshape(-1, 3)  # (k j i, 3) normalised (x, y, z)
        out[:, k0:k0 + len(kk)] = _sample_on_two_cores(u, points).reshape(channels, len(kk), size_j, size_i).numpy()
    return out


def _sample_on_two_cores(u: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """u (1, C, D, H, W) at normalised points (n, 3) -> (C, n). The CPU grid_sample runs one thread
    per batch item, so the points go in as a batch of two halves over the same (expanded, not
    copied) field: 1.6x faster on two cores."""
    n = len(points)
    halves = F.pad(points, (0, 0, 0, n % 2)).reshape(2, -1, 1, 1, 3)
    values = F.grid_sample(u.expand(2, -1, -1, -1, -1), halves, mode="bilinear", padding_mode="border",
                           align_corners=True)  # (2, C, n/2, 1, 1)
    return values[..., 0, 0].permute(1, 0, 2).reshape(u.shape[1], -1)[:, :n]


def lattice_shape(shape_dhw, spacing_mm: float, new_spacing_mm: float) -> tuple[int, int, int]:
    """A grid over the same box (first and last voxel centres kept) at about `new_spacing_mm`;
    work grids of 8n+1 voxels make the 4, 8 and 16 mm lattices exact."""
    return tuple(max(2, round((n - 1) * spacing_mm / new_spacing_mm) + 1) for n in shape_dhw)


def resample_box(image: torch.Tensor, spacing_mm: float, new_spacing_mm: float) -> tuple[torch.Tensor, float]:
    """(N, C, D, H, W) onto `lattice_shape` (Gaussian anti-aliasing first); returns it and its spacing."""
    shape = lattice_shape(image.shape[2:], spacing_mm, new_spacing_mm)
    if shape == tuple(image.shape[2:]):
        return image, spacing_mm
    factor = new_spacing_mm / spacing_mm
    smooth = gaussian_blur(image, 0.5 * factor) if factor > 1 else image
    out = F.interpolate(smooth, size=shape, mode="trilinear", align_corners=True)
    return out, (image.shape[-1] - 1) * spacing_mm / (shape[-1] - 1)


def blurred_level(fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float, image_mm: float,
                  blur_mm: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Fixed and moving (N, C, D, H, W) as one level of a coarse-to-fine fit sees them: on the box at `image_mm`
    (never finer than they are), blurred by `blur_mm`; and the level's spacing."""
    a, image_spacing = resample_box(fixed, spacing_mm, max(image_mm, spacing_mm))
    b, _ = resample_box(moving, spacing_mm, max(image_mm, spacing_mm))
    return gaussian_blur(a, blur_mm / image_spacing), gaussian_blur(b, blur_mm / image_spacing), image_spacing
