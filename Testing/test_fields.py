"""Displacement-field algebra on the work grid and on scan grids."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unleash import fields
from unleash.geometry import Grid
from unleash.losses import gaussian_blur
from unleash.transforms import jacobian_determinant

SPACING = 2.0


def smooth_velocity(shape=(24, 20, 28), amplitude_mm=6.0, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    v = gaussian_blur(torch.randn(1, 3, *shape, generator=generator), 3.0)
    return v / v.abs().max() * amplitude_mm


def test_exp_of_minus_v_inverts_exp_of_v_within_a_tenth_of_a_mm():
    v = smooth_velocity()
    forward, inverse = fields.exp(v, SPACING, 7), fields.exp(-v, SPACING, 7)
    error = fields.inverse_consistency_error_mm(forward, inverse, SPACING)[0, 4:-4, 4:-4, 4:-4]
    assert forward.abs().max() > 3.0  # a real deformation, not a near-identity
    assert error.mean() < 0.05 and error.max() < 0.1


def test_the_second_order_start_takes_a_squaring_less_for_the_same_error():
    v = smooth_velocity()  # up to 3 voxels: squaring has work to do
    reference = fields.exp(v, SPACING, 12, second_order=True)
    error = {(s, second): (fields.exp(v, SPACING, s, second_order=second) - reference).norm(dim=1).mean().item()
             for s in (3, 4, 5) for second in (False, True)}
    assert error[4, True] < error[5, False] and error[3, True] < error[4, False]
    assert error[4, True] < 0.5 * error[4, False]
    assert (fields.exp(v, SPACING, 12) - reference).norm(dim=1).mean() < 0.01  # both starts converge to one exp


def test_warping_with_a_zero_field_returns_the_image():
    image = torch.rand(1, 1, 10, 12, 14)
    assert torch.allclose(fields.warp(image, torch.zeros(1, 3, 10, 12, 14), SPACING), image, atol=1e-5)


def test_a_translation_moves_samples_by_whole_voxels_along_x():
    image = torch.rand(1, 1, 6, 7, 9)
    shift = torch.zeros(1, 3, 6, 7, 9)
    shift[:, 0] = SPACING  # +1 voxel along x (the W axis)
    warped = fields.warp(image, shift, SPACING)
    assert torch.allclose(warped[..., :-1], image[..., 1:], atol=1e-5)


def test_jacobian_of_a_linear_map_is_its_determinant_on_the_work_grid():
    d, h, w = 9, 10, 11
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) * SPACING for n in (d, h, w)], indexing="ij")
    a = torch.tensor([[0.1, 0.05, 0.0], [0.0, -0.2, 0.1], [0.02, 0.0, 0.3]])
    u = torch.einsum("ij,jdhw->idhw", a, torch.stack([x, y, z]))[None]
    assert torch.allclose(fields.jacobian_determinant(u, SPACING), torch.det(torch.eye(3) + a), atol=1e-4)


OBLIQUE = (0.8, -0.6, 0, 0.6, 0.8, 0, 0, 0, 1)  # rotated 37 degrees about z: every derivative term counts


@pytest.mark.parametrize("direction", [(-1, 0, 0, 0, 0, 1, 0, -1, 0), OBLIQUE])
def test_jacobian_on_a_flipped_or_oblique_anisotropic_scan_grid_uses_physical_derivatives(direction):
    grid = Grid((11, 9, 7), (0.8, 1.2, 2.5), (10.0, -5.0, 3.0), direction)
    k, j, i = np.meshgrid(*[np.arange(n) for n in grid.shape_zyx], indexing="ij")
    points = grid.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3))
    a = np.array([[0.1, 0.05, 0.0], [0.0, -0.2, 0.1], [0.02, 0.0, 0.3]])
    u = (points @ a.T).T.reshape(3, *grid.shape_zyx).astype(np.float32)
    assert np.allclose(jacobian_determinant(u, grid, slab=3), np.linalg.det(np.eye(3) + a), atol=1e-4)


def test_diffusion_penalty_is_isotropic_in_millimetres():
    ramp = torch.arange(20, dtype=torch.float32) * SPACING * 0.1  # du/dx = 0.1 along each axis in turn
    along_x = torch.zeros(1, 3, 20, 20, 20)
    along_x[:, 0] = ramp.view(1, 1, 20)
    along_z = torch.zeros(1, 3, 20, 20, 20)
    along_z[:, 0] = ramp.view(20, 1, 1)
    assert torch.isclose(fields.diffusion_penalty(along_x, SPACING), fields.diffusion_penalty(along_z, SPACING))


def test_bending_energy_leaves_a_uniform_strain_free_and_measures_curvature_in_millimetres():
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) * SPACING for n in (12, 13, 14)], indexing="ij")
    strain = torch.stack([0.1 * x + 0.2 * y - 0.3 * z + 5.0, 0.05 * z, 0.2 * x])[None]  # affine: no bending
    assert fields.bending_penalty(strain, SPACING) < 1e-9 < fields.diffusion_penalty(strain, SPACING)
    # u_x = 0.01 x^2 (u_xx = 0.02 / mm), u_z = 0.02 x y (u_xy = 0.02 / mm, counted twice): mean over 3 components
    curved = torch.stack([0.01 * x ** 2, torch.zeros_like(x), 0.02 * x * y])[None]
    assert torch.isclose(fields.bending_penalty(curved, SPACING), torch.tensor((0.02 ** 2 + 2 * 0.02 ** 2) / 3))


def test_gaussian_blur_of_an_impulse_is_the_separable_kernel_and_keeps_constants():
    image = torch.zeros(1, 1, 15, 13, 17)
    image[0, 0, 7, 6, 8] = 1.0
    blurred = gaussian_blur(image, 1.5)[0, 0]
    offsets = np.arange(-5, 6)
    kernel = np.exp(-0.5 * (offsets / 1.5) ** 2)
    kernel /= kernel.sum()
    expected = np.einsum("i,j,k->ijk", kernel, kernel, kernel)
    assert np.allclose(blurred[2:13, 1:12, 3:14].numpy(), expected, atol=1e-7)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-5)
    constant = torch.full((2, 3, 6, 7, 8), 0.25)  # edges replicated: no darkening at the border
    assert torch.allclose(gaussian_blur(constant, 2.0), constant)
