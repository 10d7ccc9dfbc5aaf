"""Similarity of vessel occupancy maps and the Gaussian blur it is measured through.

Binary vessels are thin (1-5 mm), so two unaligned trees barely overlap and a plain overlap loss
has no gradient. Blurring both occupancy maps with a Gaussian of a few mm gives every vessel a
capture range of that size; the blur shrinks from coarse to fine levels."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(image: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, D, H, W) with a standard deviation in voxels, edges replicated.

    Each axis is a weighted sum of shifted views rather than a conv3d with a 1-D kernel: on the CPU
    that was 7x faster on a 1 mm lung box (0.33 vs 2.4 s for 22 M voxels at 1 voxel), the same values."""
    if sigma_vox <= 0:
        return image
    radius = max(1, math.ceil(3 * sigma_vox))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma_vox) ** 2)
    weights = (kernel / kernel.sum()).tolist()
    out = image
    for axis in (2, 3, 4):
        size = out.shape[axis]
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (4 - axis)] = pad[2 * (4 - axis) + 1] = radius
        padded = F.pad(out, pad, mode="replicate")
        out = padded.narrow(axis, 0, size) * weights[0]
        for shift in range(1, len(weights)):
            out.add_(padded.narrow(axis, shift, size), alpha=weights[shift])
    return out


def occupancy_mse(warped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference normalised by the target's energy, so that its scale does not depend
    on how much of the volume the vessels fill (about 2 %). Per sample, then averaged over the batch:
    a batch's loss is then the mean of its samples' losses, however the batch is split over processes."""
    dims = tuple(range(1, target.ndim))
    return ((warped - target).pow(2).mean(dims) / target.pow(2).mean(dims).clamp_min(1e-8)).mean()
