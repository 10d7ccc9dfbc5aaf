"""A synthetic example pair: a vessel tree, a known breathing-like deformation, and the error metric.

Used by `unleash demo` and by the tests, so it is built from numpy and scipy only (no data files).
The displacement follows ITK's convention: a fixed-space point x lies at x + u(x) in the moving
scan, so fixed(x) = moving(x + u(x)). `example_pair` therefore makes the tree T once, takes it as
the moving scan, and resamples it at x + u(x) to get the fixed scan.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import Grid, Volume
from .transforms import axis_steps_lps, jacobian_determinant

# The example scan sits where a CT table puts a chest, with x and y flipped (as in NIfTI files
# written from RAS arrays), so that the demo exercises origin and direction handling.
EXAMPLE_CENTER_LPS = (5.0, -20.0, -150.0)
EXAMPLE_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)

ROOT_RADIUS_MM = 4.0
MIN_RADIUS_MM = 1.0
MIN_JACOBIAN = 0.3
ROOT_LENGTH_FRACTION = 0.3  # lobar trunk length / mean lung semi-axis
# a small pull away from the hilum makes the tree fan out; a large one presses it onto the lung wall
OUTWARD_PULL = 0.1

# Asymmetric branching, as in real pulmonary vessels: a main child that nearly continues the
# parent and a thinner side child at a wider angle. (radius ratio, length ratio, angle range deg)
MAIN_CHILD = (0.9, 0.8, (8.0, 25.0))
SIDE_CHILD = (0.8, 0.7, (35.0, 65.0))


# ----------------------------------------------------------------------------------------------
# grid helpers


def physical_coordinates(grid: Grid) -> np.ndarray:
    """(3, k, j, i) float32 LPS mm of every voxel centre, built by broadcasting (no (N, 3) copy)."""
    steps = axis_steps_lps(grid)
    i, j, k = (np.arange(n, dtype=np.float64) for n in grid.size)
    out = np.empty((3, *grid.shape_zyx), np.float32)
    for c in range(3):
        out[c] = (grid.origin_lps[c] + steps[2, c] * k[:, None, None]
                  + steps[1, c] * j[None, :, None] + steps[0, c] * i[None, None, :])
    return out


def physical_box_lps(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(centre (3,), half extent (3,)) in LPS mm of the box around the grid's voxel centres."""
    corners_ijk = np.array([[a, b, c] for a in (0, grid.size[0] - 1)
                            for b in (0, grid.size[1] - 1) for c in (0, grid.size[2] - 1)], np.float64)
    corners = grid.index_to_physical(corners_ijk)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    return (lo + hi) / 2, (hi - lo) / 2


def example_grid(spacing_mm: float = 1.5, size=(192, 160, 192)) -> Grid:
    """The example's grid: `size` (i, j, k) voxels of `spacing_mm`, x and y flipped, centred on
    EXAMPLE_CENTER_LPS."""
    direction = np.asarray(EXAMPLE_DIRECTION).reshape(3, 3)
    half_ijk_mm = (np.asarray(size, np.float64) - 1) / 2 * spacing_mm
    origin = np.asarray(EXAMPLE_CENTER_LPS) - direction @ half_ijk_mm
    return Grid(tuple(int(s) for s in size), (float(spacing_mm),) * 3,
                tuple(float(o) for o in origin), EXAMPLE_DIRECTION)


# ----------------------------------------------------------------------------------------------
# vessel tree


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


class _Lung:
    """An ellipsoid (centre_lps, semi_axes_mm, both (3,)) with its hilum point."""

    def __init__(self, center_lps: np.ndarray, semi_axes_mm: np.ndarray, hilum_lps: np.ndarray):
        self.center_lps, self.semi_axes_mm, self.hilum_lps = center_lps, semi_axes_mm, hilum_lps

    def contains(self, point_lps: np.ndarray) -> bool:
        return float(np.sum(((point_lps - self.center_lps) / self.semi_axes_mm) ** 2)) <= 1.0


def _lungs(grid: Grid) -> list[_Lung]:
    """Right (-x in LPS) and left lung, sized from the grid's physical box so any grid fits them."""
    center, half = physical_box_lps(grid)
    lungs = []
    for side in (-1.0, 1.0):
        lung_center = center + np.array([side * 0.46 * half[0], 0.0, 0.0])
        # the left lung is a little smaller: the heart takes room on that side
        semi = half * np.array([0.38, 0.64, 0.76]) * (0.93 if side > 0 else 1.0)
        hilum = lung_center + np.array([-side * 0.55 * semi[0], -0.05 * semi[1], 0.1 * semi[2]])
        lungs.append(_Lung(lung_center, semi, hilum))
    return lungs


def _trunk_directions(side: float) -> list[np.ndarray]:
    """Lobar trunk directions (LPS) from a hilum; `side` -1 right lung, +1 left lung."""
    return [_unit(np.array(d)) for d in (
        (0.3 * side, -0.1, 1.0),    # upper lobe
        (1.0 * side, -0.5, 0.15),   # middle / lingula, anterior
        (0.5 * side, 0.9, 0.2),     # posterior
        (0.35 * side, -0.3, -1.0),  # lower lobe, anterior base
        (0.4 * side, 0.6, -0.8),    # lower lobe, posterior base
    )]


def _rotate_towards(direction: np.ndarray, normal: np.ndarray, angle_deg: float) -> np.ndarray:
    """`direction` turned by `angle_deg` towards the perpendicular unit vector `normal`."""
    a = np.deg2rad(angle_deg)
    return _unit(np.cos(a) * direction + np.sin(a) * normal)


def _random_normal_to(direction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return _unit(v - v.dot(direction) * direction)


def _step_inside(lung: _Lung, start: np.ndarray, direction: np.ndarray, length_mm: float):
    """End point (3,) of a step from `start`, turned towards the lung centre and shortened as far
    as needed to stay inside the lung (so branches fill it instead of stopping at its wall); None
    if no such step exists."""
    inward = _unit(lung.center_lps - start)
    for shrink in (1.0, 0.7, 0.45):
        for steer in (0.0, 0.4, 1.0, 2.5):
            candidate = start + _unit(direction + steer * inward) * length_mm * shrink
            if lung.contains(candidate):
                return candidate
    return None


def _grow(lung: _Lung, start: np.ndarray, direction: np.ndarray, radius_mm: float, length_mm: float,
          rng: np.random.Generator, segments: list) -> None:
    """Append (p0, p1, r0, r1) tapered capsules (LPS mm) of one branch and its sub-branches."""
    if radius_mm < MIN_RADIUS_MM:
        return
    end = _step_inside(lung, start, direction, length_mm)
    if end is None:
        return
    segments.append((start, end, radius_mm, max(radius_mm * MAIN_CHILD[0], MIN_RADIUS_MM)))
    outward = _unit(end - lung.hilum_lps)
    normal = _random_normal_to(direction, rng)
    for (r_ratio, l_ratio, angles), sign in ((MAIN_CHILD, 1.0), (SIDE_CHILD, -1.0)):
        turned = _rotate_towards(direction, sign * normal, rng.uniform(*angles))
        child = _unit(turned + OUTWARD_PULL * outward)
        _grow(lung, end, child, radius_mm * r_ratio, length_mm * l_ratio * rng.uniform(0.8, 1.2),
              rng, segments)


def _tree_segments(grid: Grid, rng: np.random.Generator) -> list:
    segments: list = []
    for lung, side in zip(_lungs(grid), (-1.0, 1.0)):
        root_length_mm = ROOT_LENGTH_FRACTION * float(np.mean(lung.semi_axes_mm))
        for direction in _trunk_directions(side):
            jittered = _unit(direction + 0.15 * rng.normal(size=3))
            _grow(lung, lung.hilum_lps, jittered, ROOT_RADIUS_MM * rng.uniform(0.85, 1.0),
                  root_length_mm * rng.uniform(0.8, 1.2), rng, segments)
    return segments


def _index_box(grid: Grid, lo_lps: np.ndarray, hi_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxel index range [start, stop) (i, j, k) covering the LPS box lo..hi, clipped to the grid."""
    corners = np.array([[x, y, z] for x in (lo_lps[0], hi_lps[0])
                        for y in (lo_lps[1], hi_lps[1]) for z in (lo_lps[2], hi_lps[2])])
    ijk = grid.physical_to_index(corners)
    start = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, grid.size)
    stop = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 0, grid.size)
    return start, stop


def _rasterise_capsule(grid: Grid, out: np.ndarray, p0: np.ndarray, p1: np.ndarray,
                       r0_mm: float, r1_mm: float) -> None:
    """Set the voxels of `out` [k, j, i] whose centre lies in the tapered capsule p0-p1."""
    reach = max(r0_mm, r1_mm)
    start, stop = _index_box(grid, np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach)
    if np.any(stop <= start):
        return
    steps = axis_steps_lps(grid)
    i, j, k = (np.arange(a, b, dtype=np.float64) for a, b in zip(start, stop))
    points = (np.asarray(grid.origin_lps) + k[:, None, None, None] * steps[2]
              + j[None, :, None, None] * steps[1] + i[None, None, :, None] * steps[0])
    axis = p1 - p0
    t = np.clip((points - p0) @ axis / max(float(axis @ axis), 1e-12), 0.0, 1.0)
    distance = np.linalg.norm(points - p0 - t[..., None] * axis, axis=-1)
    inside = distance <= r0_mm + (r1_mm - r0_mm) * t
    out[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]] |= inside


def vessel_tree(grid: Grid, seed: int) -> Volume:
    """A binary uint8 vessel-like tree [k, j, i] inside two lung ellipsoids on `grid`.

    Branches grow recursively from the two hila with radii from about 4 mm down to 1 mm, are
    rasterised as tapered capsules, then dilated by one voxel. Deterministic for a seed.
    """
    rng = np.random.default_rng([seed, 0])
    # a capsule at least half a voxel diagonal wide leaves no gaps, so thin branches stay connected
    min_reach_mm = 0.87 * max(grid.spacing_mm)
    tree = np.zeros(grid.shape_zyx, bool)
    for p0, p1, r0, r1 in _tree_segments(grid, rng):
        _rasterise_capsule(grid, tree, p0, p1, max(r0, min_reach_mm), max(r1, min_reach_mm))
    tree = ndimage.binary_dilation(tree, ndimage.generate_binary_structure(3, 1))
    return Volume(tree.astype(np.uint8), grid)


# ----------------------------------------------------------------------------------------------
# deformation


def _breathing(q: np.ndarray) -> np.ndarray:
    """(3, k, j, i) unit-amplitude breathing motion from normalised coordinates q in [-1, 1]:
    the base (inferior, -z) moves caudally most, the apex hardly; a little outward expansion."""
    base_weight = (1.0 - q[2]) / 2  # 1 at the inferior end, 0 at the apex
    return np.stack([0.15 * q[0] * base_weight,
                     0.1 * q[1] * base_weight,
                     -(base_weight ** 2)])


def _bumps(points_lps: np.ndarray, center: np.ndarray, half: np.ndarray,
           rng: np.random.Generator, count: int = 4) -> np.ndarray:
    """(3, k, j, i) sum of `count` wide Gaussian bumps with random centres and directions."""
    sigma_mm = 0.3 * float(np.mean(half))  # wide, so the field stays low-frequency
    total = np.zeros_like(points_lps)
    for _ in range(count):
        bump_center = center + half * rng.uniform(-0.6, 0.6, size=3)
        amplitude = 0.5 * _unit(rng.normal(size=3))
        squared = sum((points_lps[c] - bump_center[c]) ** 2 for c in range(3))
        weight = np.exp(-squared / (2 * sigma_mm ** 2)).astype(np.float32)
        total += amplitude[:, None, None, None].astype(np.float32) * weight
    return total


def smooth_deformation(grid: Grid, max_displacement_mm: float, seed: int) -> np.ndarray:
    """A smooth, invertible, breathing-like displacement field (3, k, j, i) float32, LPS mm.

    Mostly cranio-caudal, largest at the lung base, plus a few low-frequency random bumps;
    computed in physical space, so the components are along LPS x, y, z whatever the grid's
    direction. Its largest magnitude is `max_displacement_mm`, unless that would bring the
    Jacobian determinant below MIN_JACOBIAN somewhere: then it is scaled down until it does not.
    """
    rng = np.random.default_rng([seed, 1])
    points = physical_coordinates(grid)
    center, half = physical_box_lps(grid)
    q = (points - center[:, None, None, None].astype(np.float32)) / half[:, None, None, None].astype(np.float32)
    field = _breathing(q).astype(np.float32) + _bumps(points, center, half, rng)
    del points, q
    field *= np.float32(max_displacement_mm / np.sqrt((field ** 2).sum(axis=0)).max())
    for _ in range(50):
        if jacobian_determinant(field, grid).min() > MIN_JACOBIAN:
            break
        field *= np.float32(0.9)
    return field


# ----------------------------------------------------------------------------------------------
# example pair and error


def warp_by_displacement(volume: Volume, displacement_lps_mm: np.ndarray) -> np.ndarray:
    """(k, j, i) float32 `volume` sampled at x + u(x) for every voxel x of its own grid (linear)."""
    grid = volume.grid
    points = physical_coordinates(grid) + displacement_lps_mm
    ijk = grid.physical_to_index(points.reshape(3, -1).T)  # (N, 3)
    del points
    coordinates = ijk[:, ::-1].T.reshape(3, *grid.shape_zyx)  # (k, j, i) order for map_coordinates
    return ndimage.map_coordinates(volume.array.astype(np.float32), coordinates, order=1,
                                   mode="constant", cval=0.0)


def example_pair(seed: int = 0, spacing_mm: float = 1.5, size=(192, 160, 192),
                 max_displacement_mm: float = 10.0) -> tuple[Volume, Volume, np.ndarray]:
    """(fixed, moving, true displacement (3, k, j, i) LPS mm on the fixed grid).

    ITK convention: fixed(x) = moving(x + u(x)). The tree is made once as the moving scan and
    resampled at x + u(x) (linear, threshold 0.5) to give the fixed scan.
    """
    grid = example_grid(spacing_mm, size)
    moving = vessel_tree(grid, seed)
    displacement = smooth_deformation(grid, max_displacement_mm, seed)
    fixed = Volume((warp_by_displacement(moving, displacement) >= 0.5).astype(np.uint8), grid)
    return fixed, moving, displacement


def true_tre_mm(estimated_u: np.ndarray, true_u: np.ndarray, mask: np.ndarray) -> dict:
    """Mean and quartiles of ||estimated - true|| (mm) over the `mask` voxels; fields (3, k, j, i)."""
    error_mm = np.sqrt(((estimated_u - true_u) ** 2).sum(axis=0))[np.asarray(mask, bool)]
    if error_mm.size == 0:
        raise ValueError("the mask is empty")
    p25, p50, p75 = np.percentile(error_mm, [25, 50, 75])
    return {"mean": float(error_mm.mean()), "p25": float(p25), "p50": float(p50), "p75": float(p75)}
