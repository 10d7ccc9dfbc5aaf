"""Similarity of vessel occupancy maps and the Gaussian blur it is measured through.

Binary vessels are thin (1-5 mm), so two unaligned trees barely overlap and a plain overlap loss
has no gradient. Blurring both occupancy maps with a Gaussian of a few mm gives every vessel a
capture range of that size; the blur shrinks from coarse to fine levels."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(image: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, D, H, W) with a standard deviation in voxels."""
    if sigma_vox <= 0:
        return image
    radius = max(1, math.ceil(3 * sigma_vox))
    x = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / sigma_vox) ** 2)
    kernel = kernel / kernel.sum()
    n, c = image.shape[:2]
    out = image.reshape(n * c, 1, *image.shape[2:])
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.reshape(shape))
    return out.reshape(image.shape)


def occupancy_mse(warped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference normalised by the target's energy, so that its scale does not depend
    on how much of the volume the vessels fill (about 2 %). Per sample, then averaged over the batch:
    a batch's loss is then the mean of its samples' losses, however the batch is split over processes."""
    dims = tuple(range(1, target.ndim))
    return ((warped - target).pow(2).mean(dims) / target.pow(2).mean(dims).clamp_min(1e-8)).mean()
