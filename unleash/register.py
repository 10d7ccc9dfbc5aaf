"""The registration pipeline: scans -> vessels -> work grid -> network -> refinement -> fields.

Everything here works on the work grid (axis-aligned, isotropic, centred on the fixed scan's
lungs, shape from the model file); `outputs.py` maps the result back to the scans' own grids.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import discrete, fields, vessels, workgrid
from .affine import fit_affine
from .geometry import Grid, Volume
from .models.registration import RegistrationConfig, TwoStepRegistration
from .optimise import Occupancy, RefineConfig, exp_both_ways, refine


@dataclass
class PreparedPair:
    """Both scans' vessel occupancy on one work grid (1, 1, D, H, W), and what they came from."""

    fixed: Volume
    moving: Volume
    fixed_vessels: Volume
    moving_vessels: Volume
    fixed_lungs: np.ndarray  # bool [k, j, i] on the fixed grid
    grid: Grid
    fixed_occupancy: torch.Tensor
    moving_occupancy: torch.Tensor
    inputs: str


def prepare_pair(fixed: Volume, moving: Volume, config: RegistrationConfig, inputs: str = "auto") -> PreparedPair:
    """Vessels of both scans on one work grid. Fixed and moving share the grid because scans of
    one patient share scanner coordinates; centring each on its own lungs was measured to start
    further from the answer (e.g. 19.0 vs 11.1 mm mean landmark error on val case 117)."""
    fixed_vessels, fixed_lungs, kind_fixed = vessels.vessels_from_input(fixed, inputs)
    moving_vessels, _, kind_moving = vessels.vessels_from_input(moving, inputs, lungs_wanted=False)
    grid = workgrid.work_grid(workgrid.lung_center_lps(fixed_vessels, fixed_lungs), config.shape_xyz, config.spacing_mm)
    kind = kind_fixed if kind_fixed == kind_moving else f"{kind_fixed}+{kind_moving}"
    return PreparedPair(fixed, moving, fixed_vessels, moving_vessels, fixed_lungs, grid,
                        workgrid.occupancy_on(grid, fixed_vessels), workgrid.occupancy_on(grid, moving_vessels), kind)


def network_fields(network: TwoStepRegistration, fixed_occupancy: torch.Tensor, moving_occupancy: torch.Tensor):
    """(forward, inverse) displacements in mm on the work grid predicted by the two-step network."""
    config = network.config
    a, _ = workgrid.resample_box(fixed_occupancy, config.spacing_mm, config.lattice_mm)
    b, _ = workgrid.resample_box(moving_occupancy, config.spacing_mm, config.lattice_mm)
    forward, inverse = network(a, b)
    shape = fixed_occupancy.shape[2:]
    return fields.resize(forward, shape), fields.resize(inverse, shape)


@dataclass
class Registration:
    """phi (fixed -> moving) and its inverse on the work grid, in mm, with stage timings."""

    forward_mm: torch.Tensor
    inverse_mm: torch.Tensor
    seconds: dict = field(default_factory=dict)


def register_prepared(pair: PreparedPair, network: TwoStepRegistration | None, refine_config: RefineConfig | None,
                      device: torch.device, on_progress=None) -> Registration:
    """Network prediction, then refinement on the pair: phi = phi_net o exp(r), phi^-1 = exp(-r) o phi_net^-1."""
    a = pair.fixed_occupancy.to(device)
    b = pair.moving_occupancy.to(device)
    seconds = {}
    if network is not None:  # timed only when it runs: a report without "network" says it did not
        start = time.perf_counter()
        with torch.no_grad(), _autocast(device):
            forward, inverse = network_fields(network.to(device), a, b)
        forward, inverse = forward.float(), inverse.float()
        seconds["network"] = time.perf_counter() - start
    else:
        forward = inverse = torch.zeros(1, 3, *a.shape[2:], device=device)
    if refine_config is not None and refine_config.total_iterations > 0:
        start = time.perf_counter()
        forward, inverse = _refined(pair, forward, inverse, refine_config, device, on_progress)
        seconds["refinement"] = time.perf_counter() - start
    return Registration(forward.cpu(), inverse.cpu(), seconds)


def _refined(pair: PreparedPair, forward: torch.Tensor, inverse: torch.Tensor, config: RefineConfig,
             device: torch.device, on_progress) -> tuple[torch.Tensor, torch.Tensor]:
    """phi o exp(r) and exp(-r) o phi^-1 on the work grid (see optimise.py); phi includes the affine start."""
    spacing = pair.grid.spacing_mm[0]
    if config.affine is not None:  # phi_net o A, A^-1 o phi_net^-1: the levels then fit what is left
        moved = _warped(pair.moving_occupancy.to(device), forward, spacing)
        affine = fit_affine(pair.fixed_occupancy.to(device), moved, spacing, config.affine)
        forward, inverse = fields.compose(forward, affine[:1], spacing), fields.compose(affine[1:], inverse, spacing)
    grids = [(pair.grid, pair.fixed_occupancy.to(device), pair.moving_occupancy.to(device))]
    factor = round(spacing / config.finest_image_mm)
    if factor > 1:  # a level asks for the vessels finer than the work grid: from the scans' own masks
        fine = workgrid.finer(pair.grid, factor)
        grids.append((fine, workgrid.occupancy_on(fine, pair.fixed_vessels, supersample=1).to(device),
                      workgrid.occupancy_on(fine, pair.moving_vessels, supersample=1).to(device)))
    images = [Occupancy(fixed, _warped(moving, forward, spacing), grid.spacing_mm[0]) for grid, fixed, moving in grids]
    del grids
    start = None
    if config.search is not None:  # the discrete search between fixed and the (network-)warped moving
        start, _ = discrete.start_velocity(images[0].fixed, images[0].moving_warped, spacing, config.search,
                                           config.squaring_steps, config.second_order_start)
    velocity = refine(images, config, on_progress, start)
    del images
    lattice_spacing = (forward.shape[-1] - 1) * spacing / (velocity.shape[-1] - 1)
    shape = forward.shape[2:]
    with torch.no_grad():
        r_forward, r_inverse = fields.resize(exp_both_ways(velocity, lattice_spacing, config), shape)
        return fields.compose(forward, r_forward[None], spacing), fields.compose(r_inverse[None], inverse, spacing)


def _warped(moving: torch.Tensor, displacement_mm: torch.Tensor, work_spacing_mm: float) -> torch.Tensor:
    """moving (1, 1, D, H, W) on a grid over the work box, pulled back through a work-grid displacement.
    An identity (e.g. the antisymmetric network on identical scans) leaves the scan untouched:
    resampling adds rounding noise, which Adam would amplify into motion."""
    if not bool(displacement_mm.any()):
        return moving
    spacing = (displacement_mm.shape[-1] - 1) * work_spacing_mm / (moving.shape[-1] - 1)
    with torch.no_grad():
        return fields.warp(moving, fields.resize(displacement_mm, moving.shape[2:]), spacing)


def _autocast(device: torch.device):
    """bf16 on CUDA; on the CPU bf16 was measured slower than fp32 for this network."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
