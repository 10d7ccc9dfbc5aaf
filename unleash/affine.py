"""An affine start for the refinement: a 4 x 4 matrix A, with its exact inverse.

The refinement's diffusion penalty resists any strain, also the uniform one of breathing, so where the
segmented vessels are sparse (towards the lung border) the fitted field is a smooth interpolation of the
motion further in, and stays below it where the motion grows towards the border. An affine start fitted
first carries the pair's global strain into those regions free of any penalty; the refinement then fits
only what is left. It is fitted on the blurred occupancy with the refinement's symmetric loss (moving
through A onto fixed, fixed through A^-1 onto moving), so the pair stays inverse-consistent."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import fields
from .adam import Adam
from .errors import UserError
from .losses import Match
from .workgrid import blurred_level

# The linear part is fitted in mm at this distance from the box centre, so that one Adam step moves
# every parameter by about the same number of mm (a shear of 0.01 is 1 mm at 100 mm).
LEVER_MM = 100.0


@dataclass
class AffineConfig:
    """One entry per level, coarse to fine. Spacings and blurs in mm."""

    image_mm: list[float]
    blur_mm: list[float]
    iterations: list[int]
    learning_rate_mm: float = 1.0
    # 12 parameters need few points: every k-th of the points near the vessels, at most this many
    max_points: int = 10_000


def fit_affine(fixed: torch.Tensor, moving: torch.Tensor, spacing_mm: float, config: AffineConfig) -> torch.Tensor:
    """Displacements (2, 3, D, H, W) in mm of A (fixed -> moving) and of A^-1, on the grid of `fixed` and
    `moving` (1, 1, D, H, W), such that moving(A(x)) ~ fixed(x)."""
    theta_mm = torch.zeros(3, 4, device=fixed.device, requires_grad=True)  # rows x, y, z: linear part, shift
    extent_mm = (torch.tensor(fixed.shape[2:][::-1], device=fixed.device) - 1) * spacing_mm  # x, y, z
    optimiser = Adam(theta_mm, config.learning_rate_mm)
    for image_mm, blur_mm, iterations in zip(config.image_mm, config.blur_mm, config.iterations):
        match = Match.of_vessels(*blurred_level(fixed, moving, spacing_mm, image_mm, blur_mm))
        chosen = slice(None, None, max(1, -(-len(match.points) // config.max_points)))
        points_mm = match.points[chosen] * extent_mm / 2  # from the box centre
        homogeneous = torch.cat([points_mm, torch.ones(len(points_mm), 1, device=fixed.device)], 1)  # (n, 4)
        for _ in range(iterations):
            theta_mm.grad = None
            both = torch.stack([homogeneous @ (m - torch.eye(4, device=m.device))[:3].T for m in _matrices(theta_mm)])
            match.through(both, chosen).backward()
            optimiser.step()
    with torch.no_grad():
        matrices = _matrices(theta_mm)
        if not bool(torch.isfinite(theta_mm).all()) or float(torch.linalg.det(matrices[0])) <= 0:
            raise UserError("the affine start of the registration diverged (a non-finite or folding transform)")
        return fields.resize(_corner_displacements(matrices, extent_mm), fixed.shape[2:])


def _matrices(theta_mm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A = I + L and its exact inverse, (4, 4) each, acting on (x, y, z, 1) in mm from the box centre.
    (Not exp(L): on the CPU its backward cost more than the rest of an iteration; the loss is symmetric
    in A and A^-1 either way.)"""
    generator = torch.zeros(4, 4, device=theta_mm.device)
    generator[:3, :3] = theta_mm[:, :3] / LEVER_MM
    generator[:3, 3] = theta_mm[:, 3]
    forward = torch.eye(4, device=theta_mm.device) + generator
    return forward, torch.linalg.inv(forward)


def _corner_displacements(matrices: tuple[torch.Tensor, torch.Tensor], extent_mm: torch.Tensor) -> torch.Tensor:
    """A(x) - x and A^-1(x) - x (2, 3, 2, 2, 2) at the box's eight corners, for `matrices` (A, A^-1):
    trilinear interpolation of an affine map between them is exact, so this lattice is the whole field."""
    half = extent_mm / 2
    corners = torch.stack(torch.meshgrid(*[torch.stack([-h, h]) for h in half.flip(0)], indexing="ij"), -1)  # z y x
    corners = torch.cat([corners.flip(-1), torch.ones(2, 2, 2, 1, device=extent_mm.device)], -1)  # (2, 2, 2, 4) x y z 1
    out = [((corners @ transform.T) - corners)[..., :3].permute(3, 0, 1, 2) for transform in matrices]
    return torch.stack(out)  # (2, 3, 2, 2, 2): x, y, z on d, h, w
