"""Discrete correspondence search: a start for the continuous refinement that cannot slide into the
neighbouring vessel, because every displacement of a window is tried, not only the downhill one.

1. Descriptors: MIND-SSC (self-similarity of the 12 pairs of a point's six neighbours, Heinrich et al.
   2013) of both vessel occupancy maps, on a `feature_mm` grid over the work box.
2. Cost volume: at each point of a `control_mm` lattice, the descriptor distance for every
   displacement of a cube of +-`radius_steps` whole feature voxels (so no interpolation).
3. Regularisation by coupled convex optimisation (after ConvexAdam, Siebert et al. 2021): alternate
   the per-point argmin of cost + ||d - smooth(u)||^2 weight / step^2 with smoothing u, for growing
   weights. Both directions are searched and made inverse-consistent to a velocity for `optimise.py`.

Fields are (1, 3, d, h, w) = (N, xyz, z, y, x) in mm on the lattice, as in fields.py.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import fields
from .workgrid import lattice_shape


@dataclass
class DiscreteConfig:
    """Spacings in mm. The window: the largest val motion is ~26 mm mean on a pair (056), the lower
    lobes move up to ~30 mm in deep breathing; the refinement after it reaches beyond."""

    feature_mm: float = 4.0
    control_mm: float = 8.0  # a whole multiple of feature_mm: control points are feature voxels
    radius_steps: int = 7    # shifts of whole feature voxels: +-28 mm
    mind_radius_mm: float = 2.0   # neighbours of a point for the self-similarity, on the 2 mm work grid
    cost_smoothing: int = 1       # 3x3x3 means over neighbouring control points of the cost volume
    weights: list[float] = field(default_factory=lambda: [0.003, 0.01, 0.03, 0.1, 0.3])
    smoothing_passes: int = 2     # 3x3x3 means of u per coupling step
    inverse_iterations: int = 8   # fixed-point steps from displacement to velocity


TIE_BREAK = 1e-6  # per voxel^2: far below the cost's resolution
_PAIRS = [(a, b) for a, b in itertools.combinations(range(6), 2) if a // 2 != b // 2]  # 12: not opposite


def mind_ssc(image: torch.Tensor, radius_vox: int, stride: int) -> torch.Tensor:
    """(1, 1, D, H, W) -> (1, 12, (D - 1) / stride + 1, ...) in (0, 1]: exp(-patch distance / its mean over
    the 12 pairs) for the pairs of six neighbours at +-radius_vox that are not opposite (distance
    sqrt(2) radius); the patch is the (2 stride - 1)^3 voxels around every `stride`-th voxel."""
    r = radius_vox
    padded = F.pad(image, (r,) * 6, mode="replicate")
    d, h, w = image.shape[2:]
    offsets = [(0, 0, -r), (0, 0, r), (0, -r, 0), (0, r, 0), (-r, 0, 0), (r, 0, 0)]  # (z, y, x) in pairs +-
    neighbours = [padded[:, :, r + z:r + z + d, r + y:r + y + h, r + x:r + x + w] for z, y, x in offsets]
    distances = torch.cat([(neighbours[a] - neighbours[b]).pow(2) for a, b in _PAIRS], 1)
    distances = F.avg_pool3d(distances, 2 * stride - 1, stride=stride, padding=stride - 1, count_include_pad=False)
    variance = distances.mean(1, keepdim=True)
    mean = variance.mean()
    variance = variance.clamp(0.001 * mean + 1e-8, 1000 * mean + 1e-8)
    descriptor = torch.exp(-distances / variance)
    return descriptor / descriptor.amax(1, keepdim=True)


def descriptors(occupancy: torch.Tensor, spacing_mm: float, config: DiscreteConfig) -> torch.Tensor:
    """Work-grid occupancy (1, 1, D, H, W) -> MIND-SSC (1, 12, d, h, w) on the feature grid."""
    stride = round(config.feature_mm / spacing_mm)
    mind = mind_ssc(occupancy, max(1, round(config.mind_radius_mm / spacing_mm)), stride)
    if tuple(mind.shape[2:]) != lattice_shape(occupancy.shape[2:], spacing_mm, config.feature_mm):
        raise ValueError(f"the work grid {tuple(occupancy.shape[2:])} is not a whole number of feature voxels")
    return mind


def cost_volume(fixed: torch.Tensor, moving: torch.Tensor, stride: int, radius: int) -> torch.Tensor:
    """Mean squared descriptor difference (K, d, h, w) between fixed (1, C, D, H, W) at every `stride`-th
    feature voxel and moving at that voxel + each of the K = (2 radius + 1)^3 shifts (in feature voxels,
    ordered as `shifts_vox`); moving is continued by its border value beyond the box."""
    channels = fixed.shape[1]
    points = fixed[0, :, ::stride, ::stride, ::stride]  # (C, d, h, w)
    d, h, w = points.shape[1:]
    padded = F.pad(moving, (radius,) * 6, mode="replicate")[0]  # (C, D + 2r, H + 2r, W + 2r)
    side = 2 * radius + 1
    cost = torch.empty(side, side, side, d, h, w, device=fixed.device)
    for dz, dy in itertools.product(range(side), range(side)):
        rows = padded[:, dz:dz + stride * (d - 1) + 1:stride, dy:dy + stride * (h - 1) + 1:stride]  # (C, d, h, W+2r)
        # every x shift at once: a view (C, side, d, h, w) of the rows
        windows = rows.as_strided((channels, side, d, h, w), (rows.stride(0), rows.stride(3), *rows.stride()[1:3],
                                                              stride * rows.stride(3)))
        cost[dz, dy] = (windows - points[:, None]).pow(2).mean(0)
    return cost.reshape(side ** 3, d, h, w)


def shifts_vox(radius: int, device=None) -> torch.Tensor:
    """(K, 3) displacements (x, y, z) in feature voxels, in the order of `cost_volume`'s K."""
    axis = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([x, y, z], -1).reshape(-1, 3)


def _box_mean(volume: torch.Tensor, passes: int) -> torch.Tensor:
    """`passes` 3x3x3 means of a lattice (C, d, h, w), edges replicated: a cheap Gaussian-like smoothing."""
    for _ in range(passes):
        volume = F.avg_pool3d(volume[None], 3, stride=1, padding=1, count_include_pad=False)[0]
    return volume


def coupled_argmin(cost: torch.Tensor, shifts: torch.Tensor, config: DiscreteConfig) -> torch.Tensor:
    """Regularised displacement (1, 3, d, h, w) in feature voxels from the cost (K, d, h, w) of each
    shift (K, 3) and control point: the argmin, then for each weight the argmin of
    cost + weight ||shift - smooth(u)||^2 (shifts in voxels)."""
    k, lattice = cost.shape[0], cost.shape[1:]
    cost = cost.permute(1, 2, 3, 0).reshape(-1, k)  # (n, K): the argmin runs along memory
    ones = torch.ones(len(cost), 1, device=cost.device)
    # equal costs (e.g. two empty regions) go to the smallest shift, not to the first one of the window
    u = shifts[(cost + TIE_BREAK * shifts.pow(2).sum(1)).argmin(1)]  # (n, 3)
    for weight in config.weights:
        smooth = _box_mean(u.T.reshape(3, *lattice), config.smoothing_passes).reshape(3, -1).T
        # weight ||s - m||^2 = [m, 1] . [-2 weight s, weight ||s||^2] + weight ||m||^2 (the same for every s)
        penalty = torch.cat([-2 * weight * shifts, weight * shifts.pow(2).sum(1, keepdim=True)], 1)  # (K, 4)
        u = shifts[torch.addmm(cost, torch.cat([smooth, ones], 1), penalty.T).argmin(1)]
    return _box_mean(u.T.reshape(3, *lattice), config.smoothing_passes)[None]


def search(fixed_occupancy: torch.Tensor, moving_occupancy: torch.Tensor, spacing_mm: float,
           config: DiscreteConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (fixed point -> moving) and backward regularised displacements (1, 3, d, h, w) in mm on
    the control lattice of the work box, each from its own cost volume."""
    stride = round(config.control_mm / config.feature_mm)
    radius = config.radius_steps
    fixed = descriptors(fixed_occupancy, spacing_mm, config)
    moving = descriptors(moving_occupancy, spacing_mm, config)
    feature_spacing = (fixed_occupancy.shape[-1] - 1) * spacing_mm / (fixed.shape[-1] - 1)
    shifts = shifts_vox(radius, fixed.device)
    results = []
    for a, b in ((fixed, moving), (moving, fixed)):
        cost = cost_volume(a, b, stride, radius)
        cost = _box_mean(cost, config.cost_smoothing)
        results.append(coupled_argmin(cost, shifts, config) * feature_spacing)
        del cost
    return results[0], results[1]


def start_velocity(fixed_occupancy: torch.Tensor, moving_occupancy: torch.Tensor, spacing_mm: float,
                   config: DiscreteConfig, squaring_steps: int, second_order: bool = False) -> tuple[torch.Tensor, float]:
    """A stationary velocity v (1, 3, d, h, w) in mm on the control lattice, and its spacing, such that
    exp(v) ~ the symmetric mean of the forward search and the inverse of the backward one:
    u = (u_f - u_b o (x + u_f)) / 2, then v from exp(v) = x + u by fixed-point steps v += u - exp(v), with
    the exp the refinement fits (`squaring_steps`, `second_order`: fields.exp)."""
    forward, backward = search(fixed_occupancy, moving_occupancy, spacing_mm, config)
    lattice = forward.shape[2:]
    if tuple(lattice) != lattice_shape(fixed_occupancy.shape[2:], spacing_mm, config.control_mm):
        raise ValueError("the control lattice is not the work box's lattice")
    lattice_spacing = (fixed_occupancy.shape[-1] - 1) * spacing_mm / (lattice[-1] - 1)
    target = 0.5 * (forward - fields.warp(backward, forward, lattice_spacing))
    velocity = target.clone()
    for _ in range(config.inverse_iterations):
        velocity = velocity + (target - fields.exp(velocity, lattice_spacing, squaring_steps, second_order))
    return velocity, lattice_spacing
