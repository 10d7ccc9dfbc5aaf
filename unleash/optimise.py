"""Instance optimisation: refine a registration on the pair itself.

The refinement is a stationary velocity r on a coarse control lattice, so the refined transform
phi o exp(r) stays invertible with the inverse exp(-r) o phi^-1 for free. It is fitted coarse to
fine: each level halves the lattice spacing and the blur, starting from the previous level's r.
The loss is symmetric (moving onto fixed and fixed onto moving) with a diffusion penalty in mm.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import fields
from .losses import gaussian_blur, occupancy_mse
from .workgrid import lattice_shape, resample_box


@dataclass
class RefineConfig:
    """One entry per level, coarse to fine. Spacings and blurs in mm."""

    # Measured on val pairs 002, 055, 117, 121 (benchmarks/refinement.py): starting at a 32 mm
    # lattice with an 8 mm blur captures the large basal motion (055: 3.6 -> 3.4 mm); a 0.3 or 3.0
    # penalty weight and a fifth 4 mm level with a 1.5 mm blur changed the mean by < 0.1 mm.
    lattice_mm: list[float] = field(default_factory=lambda: [32.0, 16.0, 8.0, 4.0])
    image_mm: list[float] = field(default_factory=lambda: [8.0, 4.0, 4.0, 2.0])
    blur_mm: list[float] = field(default_factory=lambda: [8.0, 4.0, 3.0, 2.0])
    iterations: list[int] = field(default_factory=lambda: [40, 40, 40, 30])
    regularisation: float = 1.0
    learning_rate_mm: float = 1.0
    squaring_steps: int = 5

    def scaled(self, total_iterations: int) -> RefineConfig:
        """The same schedule with `total_iterations` spread over the levels in the same proportions."""
        share = [n / max(1, sum(self.iterations)) for n in self.iterations]
        return RefineConfig(self.lattice_mm, self.image_mm, self.blur_mm,
                            [max(0, round(total_iterations * s)) for s in share],
                            self.regularisation, self.learning_rate_mm, self.squaring_steps)


def refine(fixed: torch.Tensor, moving_warped: torch.Tensor, spacing_mm: float, config: RefineConfig,
           on_iteration=None) -> torch.Tensor:
    """Velocity r (1, 3, d, h, w) on the finest lattice such that moving_warped(exp(r)(x)) ~ fixed(x).

    fixed, moving_warped: (1, 1, D, H, W) occupancy on the same work grid of `spacing_mm`; r is
    returned on its lattice (resize it with `fields.resize` to use it)."""
    velocity = None
    done, total = 0, sum(config.iterations)
    for lattice_mm, image_mm, blur_mm, iterations in zip(config.lattice_mm, config.image_mm,
                                                          config.blur_mm, config.iterations):
        # never finer than the work grid: a coarse model's grid is not upsampled
        a, level_spacing = resample_box(fixed, spacing_mm, max(image_mm, spacing_mm))
        b, _ = resample_box(moving_warped, spacing_mm, max(image_mm, spacing_mm))
        a = gaussian_blur(a, blur_mm / level_spacing)
        b = gaussian_blur(b, blur_mm / level_spacing)
        grid_shape = lattice_shape(fixed.shape[2:], spacing_mm, lattice_mm)
        lattice_spacing = (fixed.shape[-1] - 1) * spacing_mm / (grid_shape[-1] - 1)
        start = torch.zeros(1, 3, *grid_shape) if velocity is None else fields.resize(velocity, grid_shape)
        velocity = start.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([velocity], lr=config.learning_rate_mm)
        points = _points_near_vessels(a, b)
        a_at, b_at = _sample(a, points), _sample(b, points)
        scale = 2.0 / ((torch.tensor(a.shape[2:][::-1]) - 1) * level_spacing)
        for _ in range(iterations):
            optimiser.zero_grad(set_to_none=True)
            forward = fields.exp(velocity, lattice_spacing, config.squaring_steps)
            inverse = fields.exp(-velocity, lattice_spacing, config.squaring_steps)
            moved_forward = points + _sample(forward, points).reshape(3, -1).T * scale
            moved_inverse = points + _sample(inverse, points).reshape(3, -1).T * scale
            similarity = occupancy_mse(_sample(b, moved_forward), a_at) + occupancy_mse(_sample(a, moved_inverse), b_at)
            smoothness = fields.diffusion_penalty(forward, lattice_spacing) + fields.diffusion_penalty(inverse, lattice_spacing)
            loss = similarity + config.regularisation * smoothness
            loss.backward()
            optimiser.step()
            done += 1
            if on_iteration is not None:
                on_iteration(done, total, loss.item())
        velocity = velocity.detach()
    return velocity


def _points_near_vessels(a: torch.Tensor, b: torch.Tensor, share: float = 0.02) -> torch.Tensor:
    """Normalised (x, y, z) positions (N, 3) of the voxels where either blurred tree is present:
    elsewhere both maps are ~0 and the loss has no gradient, so skipping them costs nothing in
    accuracy and saves most of the work."""
    level = (a + b)[0, 0]
    index = torch.nonzero(level > share * level.max())
    d, h, w = level.shape
    zyx = index.float() / torch.tensor([d - 1, h - 1, w - 1]) * 2 - 1
    return zyx.flip(-1)


def _sample(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """image (1, C, D, H, W) at normalised points (N, 3) -> (C * N,) flattened per channel."""
    values = F.grid_sample(image, points.reshape(1, -1, 1, 1, 3), mode="bilinear",
                           padding_mode="border", align_corners=True)
    return values.reshape(-1)
