"""Instance optimisation: refine a registration on the pair itself.

The refinement is a stationary velocity r on a coarse control lattice, so the refined transform
phi o exp(r) stays invertible with the inverse exp(-r) o phi^-1 for free. It is fitted coarse to
fine: each level refines the lattice and the blur, starting from the previous level's r. The last
level sees the vessels at the scans' own 1 mm, which the 2 mm work grid averages away.
The loss is symmetric (moving onto fixed and fixed onto moving) with a diffusion penalty in mm (and, as an
option, a bending energy per level). An affine start (affine.py) can come first.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from . import fields
from .adam import Adam
from .affine import AffineConfig
from .discrete import DiscreteConfig
from .losses import Match
from .workgrid import blurred_level, lattice_shape

LEVEL_FIELDS = ("lattice_mm", "image_mm", "blur_mm", "iterations", "diffusion", "bending_mm2")  # one entry per level


@dataclass
class RefineConfig:
    """One entry per level, coarse to fine. Spacings and blurs in mm."""

    # A 32 mm first lattice catches the large basal motion; the last level reads the scans' own 1 mm
    # vessels, which the 2 mm work grid averages away (how each entry was chosen: the registration card).
    lattice_mm: list[float] = field(default_factory=lambda: [32.0, 16.0, 8.0, 4.0])
    image_mm: list[float] = field(default_factory=lambda: [8.0, 4.0, 4.0, 1.0])
    blur_mm: list[float] = field(default_factory=lambda: [8.0, 4.0, 3.0, 1.0])
    iterations: list[int] = field(default_factory=lambda: [60, 60, 60, 25])
    # Penalty weights per level: the diffusion penalty, and the bending energy (fields.bending_penalty,
    # 1/mm^2, so its weight is in mm^2), which leaves a uniform strain free where diffusion shrinks it.
    # Bending at the coarse levels carries more motion into the regions without vessels, but did not pay
    # on the val pairs (the registration card), so the default is diffusion alone.
    diffusion: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    bending_mm2: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    learning_rate_mm: float = 1.0
    # 3 squarings from the second-order start (fields.exp) gave the TRE of 5 from the first-order one on five
    # val pairs, with less inverse-consistency error, in 22-28 % less time at 1 mm (the registration card).
    squaring_steps: int = 3
    second_order_start: bool = True
    # Points sampled per iteration: at 1 mm about a million voxels lie near vessels; a fresh random
    # share of them each iteration is a stochastic gradient of the same loss at a fraction of the cost.
    max_points: int = 150_000
    # A discrete correspondence search (discrete.py) to start the first level from; None: from zero.
    search: DiscreteConfig | None = None
    # An affine transform fitted before the levels (affine.py), on which they fit the rest; None: none. It carries
    # the breathing's global strain into the vessel-free periphery, which the diffusion penalty resists.
    affine: AffineConfig | None = field(default_factory=lambda: AffineConfig(
        image_mm=[8.0, 4.0], blur_mm=[8.0, 4.0], iterations=[60, 30]))

    @property
    def total_iterations(self) -> int:
        return sum(self.iterations)

    @property
    def finest_image_mm(self) -> float:
        return min(self.image_mm)

    def levels(self, chosen: slice) -> RefineConfig:
        """The same settings for the `chosen` levels only (each per-level list sliced alike)."""
        return replace(self, **{name: getattr(self, name)[chosen] for name in LEVEL_FIELDS})

    def scaled(self, total_iterations: int) -> RefineConfig:
        """The same schedule with `total_iterations` spread over the levels in the same proportions."""
        share = [n / max(1, self.total_iterations) for n in self.iterations]
        return replace(self, iterations=[round(total_iterations * s) for s in share])


@dataclass
class Occupancy:
    """Fixed and (network-)warped moving vessel occupancy (1, 1, D, H, W) on one grid over the work box."""

    fixed: torch.Tensor
    moving_warped: torch.Tensor
    spacing_mm: float


def refine(images: list[Occupancy], config: RefineConfig, on_iteration=None,
           start: torch.Tensor | None = None) -> torch.Tensor:
    """Velocity r (1, 3, d, h, w) on the finest lattice such that moving_warped(exp(r)(x)) ~ fixed(x).

    `images`: the pair on one or more grids over the same box (the work grid, and a finer one when a
    level asks for it); each level reads the coarsest one that is at least as fine as its image
    spacing. r is returned on its lattice (resize it with `fields.resize` to use it). `start`: a
    velocity (1, 3, d, h, w) in mm on any lattice over the box to begin from (default: zero)."""
    images = sorted(images, key=lambda o: -o.spacing_mm)
    box = images[0]
    velocity = start
    # never finer than the finest grid given: a coarse grid is not upsampled
    sources = [next((o for o in images if o.spacing_mm <= image_mm + 1e-6), images[-1]) for image_mm in config.image_mm]
    costs = [n * _iteration_cost(box, source, lattice_mm, image_mm, config)
             for source, lattice_mm, image_mm, n in zip(sources, config.lattice_mm, config.image_mm, config.iterations)]
    done, total, work_done = 0, config.total_iterations, 0.0
    for level, (source, lattice_mm, image_mm, blur_mm, iterations, cost) in enumerate(zip(
            sources, config.lattice_mm, config.image_mm, config.blur_mm, config.iterations, costs)):
        a, b, image_spacing = blurred_level(source.fixed, source.moving_warped, source.spacing_mm, image_mm, blur_mm)
        shape = lattice_shape(box.fixed.shape[2:], box.spacing_mm, lattice_mm)
        start = torch.zeros(1, 3, *shape, device=a.device) if velocity is None else fields.resize(velocity, shape)
        velocity = start.clone().requires_grad_(True)
        optimiser = Adam(velocity, config.learning_rate_mm)
        level_loss = _LevelLoss(a, b, image_spacing, shape, config, level)
        for _ in range(iterations):
            velocity.grad = None
            loss = level_loss(velocity)
            loss.backward()
            optimiser.step()
            done += 1
            work_done += cost / iterations
            if on_iteration is not None:
                on_iteration(done, total, loss.item(), work=min(1.0, work_done / sum(costs)))
        velocity = velocity.detach()
    return velocity


def exp_both_ways(velocity: torch.Tensor, lattice_spacing_mm: float, config: RefineConfig) -> torch.Tensor:
    """exp(r) and exp(-r) (2, 3, d, h, w) in mm as one batch of two, as the refinement fits them."""
    return fields.exp(torch.cat([velocity, -velocity]), lattice_spacing_mm, config.squaring_steps,
                      second_order=config.second_order_start)


def _iteration_cost(box: Occupancy, source: Occupancy, lattice_mm: float, image_mm: float, config: RefineConfig) -> float:
    """Rough cost of one iteration of a level, for an honest time-left: scaling and squaring of both
    directions over the lattice plus the sampled points (at most all voxels of the level's grid).
    On a lung pair it gives the 1 mm level 76 % of the work; measured: 74 % of the time."""
    lattice = lattice_shape(box.fixed.shape[2:], box.spacing_mm, lattice_mm)
    grid = lattice_shape(source.fixed.shape[2:], source.spacing_mm, max(image_mm, source.spacing_mm))
    return (lattice[0] * lattice[1] * lattice[2] * config.squaring_steps
            + min(config.max_points, grid[0] * grid[1] * grid[2]))


class _LevelLoss:
    """Symmetric blurred-occupancy mismatch near the vessels + diffusion and bending penalties of one level."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, image_spacing_mm: float, lattice_dhw, config: RefineConfig,
                 level: int):
        self.vessels = Match.of_vessels(a, b, image_spacing_mm)
        self.near = self.vessels.points
        self.lattice_spacing_mm = (a.shape[-1] - 1) * image_spacing_mm / (lattice_dhw[-1] - 1)
        self.config, self.diffusion, self.bending_mm2 = config, config.diffusion[level], config.bending_mm2[level]
        self._order, self._next = None, 0

    def _chosen(self):
        """The next `max_points` of the points near the vessels, in one shuffled order per pass: each
        point is used once per pass, and there is one shuffle per pass instead of one per iteration
        (a randperm of the 1.5 M points at 1 mm cost 7 % of an iteration). Each iteration's share is in
        raster order, so that sampling the 1 mm images and the lattice reads memory in order: 15 % of the
        1 mm level's time."""
        count, size = len(self.near), self.config.max_points
        if count <= size:
            return slice(None)
        if self._order is None or self._next + size > count:
            shares = torch.randperm(count, device=self.near.device)[:count // size * size].view(-1, size)
            self._order, self._next = shares.sort(dim=1).values.flatten(), 0
        self._next += size
        return self._order[self._next - size:self._next]

    def __call__(self, velocity: torch.Tensor) -> torch.Tensor:
        config = self.config
        both = exp_both_ways(velocity, self.lattice_spacing_mm, config)
        similarity = self.vessels(both, self._chosen())
        # the penalty's mean over the batch of two, times two: the sum over both directions
        penalty = self.diffusion * fields.diffusion_penalty(both, self.lattice_spacing_mm)
        if self.bending_mm2 > 0:
            penalty = penalty + self.bending_mm2 * fields.bending_penalty(both, self.lattice_spacing_mm)
        return similarity + 2 * penalty
