"""The affine start: exactly invertible, and it finds a known breathing-like affine motion of a real vessel map."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unleash import fields, workgrid
from unleash.affine import AffineConfig, _corner_displacements, _matrices, fit_affine
from unleash.errors import UserError
from unleash.geometry import read_volume


def _known_affine(extent_mm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    theta_mm = torch.zeros(3, 4)
    theta_mm[2, 2], theta_mm[2, 3], theta_mm[0, 1], theta_mm[1, 3] = 8.0, 5.0, 2.0, -3.0  # 8 % SI strain, shear, shifts
    return theta_mm, _corner_displacements(_matrices(theta_mm), extent_mm)


def test_the_affine_and_its_inverse_compose_to_the_identity():
    spacing_mm, shape_dhw = 10.0, (33, 25, 33)
    extent_mm = (torch.tensor(shape_dhw[::-1]) - 1) * spacing_mm  # x, y, z
    _, corners = _known_affine(extent_mm)
    both = fields.resize(corners, shape_dhw)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))  # mapped points stay in the box
    assert both[0].abs().max() > 10  # a real motion
    assert fields.compose(both[1:], both[:1], spacing_mm)[inner].abs().max() < 1e-3
    assert fields.compose(both[:1], both[1:], spacing_mm)[inner].abs().max() < 1e-3


def test_a_known_affine_motion_of_a_real_vessel_map_is_found_within_half_a_mm(val_folder):
    fixed = read_volume(val_folder / "case_002_1.nii.gz")
    binary = fixed.with_array((fixed.array > 0).astype(np.uint8))
    spacing_mm = 4.0
    grid = workgrid.work_grid(workgrid.lung_center_lps(binary, binary.array > 0), (77, 57, 81), spacing_mm)
    a = workgrid.occupancy_on(grid, binary)
    extent_mm = (torch.tensor(a.shape[2:][::-1]) - 1) * spacing_mm
    _, corners = _known_affine(extent_mm)
    truth = fields.resize(corners, a.shape[2:])
    b = fields.warp(a, truth[1:], spacing_mm)  # b(A(x)) = a(x)
    found = fit_affine(a, b, spacing_mm, AffineConfig(image_mm=[8.0, 4.0], blur_mm=[8.0, 4.0], iterations=[60, 30]))
    error_mm = (found - truth).norm(dim=1).mean(dim=(1, 2, 3))
    assert truth[0].norm(dim=0).mean() > 5 and bool((error_mm < 0.5).all()), error_mm


def test_a_diverging_affine_fit_is_one_clear_error_not_a_field_of_nan():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, 20, 21, 22, generator=generator)
    b = a.roll(2, dims=4)
    config = AffineConfig(image_mm=[4.0], blur_mm=[4.0], iterations=[3], learning_rate_mm=float("inf"))
    with pytest.raises(UserError, match="affine start .* diverged"):
        fit_affine(a, b, 4.0, config)
    assert fit_affine(a, b, 4.0, AffineConfig(image_mm=[4.0], blur_mm=[4.0], iterations=[3])).isfinite().all()
