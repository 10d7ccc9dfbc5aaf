"""The refinement's own pieces: its Adam, the shares of near-vessel points it samples, its exp, its penalty,
and what it imports."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from conftest import TINY

from unleash import fields, workgrid
from unleash.geometry import read_volume
from unleash.losses import gaussian_blur
from unleash.optimise import Adam, Occupancy, RefineConfig, _LevelLoss, exp_both_ways, refine
from unleash.register import prepare_pair


def test_the_written_out_adam_steps_exactly_as_torch_optim_adam():
    target = torch.randn(1, 3, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    mine = torch.zeros(1, 3, 5, 6, 7, requires_grad=True)
    theirs = mine.detach().clone().requires_grad_(True)
    adam, reference = Adam(mine, 0.5), torch.optim.Adam([theirs], lr=0.5)
    for _ in range(30):
        for velocity in (mine, theirs):
            velocity.grad = None
            (velocity.sin() - target).pow(2).sum().backward()
        adam.step()
        reference.step()
    assert torch.equal(mine, theirs) and (mine - target).abs().mean() < 0.5 * target.abs().mean()


def test_each_iteration_takes_a_fresh_share_of_the_near_vessel_points_in_raster_order():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 1, 20, 21, 22, generator=generator), torch.rand(1, 1, 20, 21, 22, generator=generator)
    loss = _LevelLoss(a, b, 1.0, (6, 6, 6), RefineConfig(max_points=1000), level=3)
    count = len(loss.near)
    shares = [loss._chosen() for _ in range(count // 1000)]  # one pass
    assert all(len(s) == 1000 and bool((s[1:] > s[:-1]).all()) for s in shares)  # sorted, no repeats
    assert len(torch.cat(shares).unique()) == count // 1000 * 1000  # each point at most once a pass
    assert not torch.equal(loss._chosen(), shares[0])  # the next pass is shuffled anew


def test_the_refinement_does_not_import_the_compiler():
    """torch.optim's first optimiser imports torch._dynamo (1.5 s on two cores); the refinement needs none."""
    code = ("import sys, torch\n"
            "from unleash.optimise import Occupancy, RefineConfig, refine\n"
            "image = torch.rand(1, 1, 17, 17, 17)\n"
            "refine([Occupancy(image, image.roll(1, 2), 4.0)], RefineConfig(lattice_mm=[16.0], image_mm=[4.0], "
            "blur_mm=[4.0], iterations=[2]))\n"
            "assert 'torch._dynamo' not in sys.modules\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]



def test_the_refinements_exp_of_a_fitted_velocity_is_within_a_tenth_of_a_mm_of_the_exact_exp(val_pair):
    """On a velocity fitted to a real pair (the coarse levels on the 4 mm grid): the default squarings from the
    second-order start against 12 of them, and against as many squarings from the first-order start."""
    pair = prepare_pair(read_volume(val_pair["fixed"]), read_volume(val_pair["moving"]), TINY)
    config = RefineConfig(lattice_mm=[32.0, 16.0, 8.0], image_mm=[8.0, 4.0, 4.0], blur_mm=[8.0, 4.0, 3.0],
                          iterations=[15, 15, 15])
    velocity = refine([Occupancy(pair.fixed_occupancy, pair.moving_occupancy, TINY.spacing_mm)], config)
    lattice_mm = (pair.fixed_occupancy.shape[-1] - 1) * TINY.spacing_mm / (velocity.shape[-1] - 1)
    both = torch.cat([velocity, -velocity])
    reference = fields.exp(both, lattice_mm, 12, second_order=True)
    error_mm = (exp_both_ways(velocity, lattice_mm, config) - reference).norm(dim=1).mean()
    first_order_mm = (fields.exp(both, lattice_mm, config.squaring_steps) - reference).norm(dim=1).mean()
    assert velocity.norm(dim=1).max() > 2 * lattice_mm  # a deformation that needs the squarings
    assert error_mm < 0.1 and error_mm < 0.75 * first_order_mm  # measured: 0.020 against 0.033 mm


def test_bending_energy_carries_a_breathing_motion_into_the_vessel_free_regions(val_folder):
    """A real vessel map and its copy moved by a known breathing-like motion (superior-inferior strain
    growing towards the base, some anterior shear): bending energy at the coarse levels leaves the
    strain free, so the motion is recovered better away from the vessels than with diffusion alone."""
    fixed = read_volume(val_folder / "case_002_1.nii.gz")
    binary = fixed.with_array((fixed.array > 0).astype(np.uint8))
    spacing = 8.0
    grid = workgrid.work_grid(workgrid.lung_center_lps(binary, binary.array > 0), (41, 29, 41), spacing)
    a = workgrid.occupancy_on(grid, binary)
    d, h, w = a.shape[2:]
    z_mm = ((torch.arange(d, dtype=torch.float32) - (d - 1) / 2) * spacing).view(d, 1, 1).expand(d, h, w)
    along_z = 0.10 * z_mm + 0.0004 * z_mm ** 2  # up to 22 mm
    truth = torch.stack([torch.zeros_like(along_z), 0.05 * along_z, along_z])[None]  # phi(x) = x + truth(x)
    inverse = -truth
    for _ in range(20):  # fixed point of phi^-1: inverse = -truth(x + inverse)
        inverse = -fields.warp(truth, inverse, spacing)
    b = fields.warp(a, inverse, spacing)  # b(phi(x)) = a(x)
    envelope = gaussian_blur(a, 2.0)[0, 0]
    far = (envelope > 0.02 * envelope.max()) & (gaussian_blur(a, 1.0)[0, 0] < 0.002)  # in the tree, off its vessels
    errors = {}
    for name, penalty in (("bending", {"diffusion": [0.1, 0.1], "bending_mm2": [4.0, 4.0]}),
                          ("diffusion alone", {"diffusion": [1.0, 1.0], "bending_mm2": [0.0, 0.0]})):
        config = RefineConfig(lattice_mm=[32.0, 16.0], image_mm=[spacing] * 2, blur_mm=[8.0, 8.0], iterations=[30, 30],
                              **penalty)
        velocity = refine([Occupancy(a, b, spacing)], config)
        found = fields.resize(exp_both_ways(velocity, (w - 1) * spacing / (velocity.shape[-1] - 1), config)[:1], (d, h, w))
        errors[name] = float((found - truth).norm(dim=1)[0][far].mean())
    assert far.sum() > 1000 and errors["bending"] < 0.8 * errors["diffusion alone"], errors
