"""The files of a registration: the displacement fields on the work lattice over each scan, read by ITK as the
transform that the engine computed on the work grid, and the images on the fixed scan's own grid."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from unleash import fields
from unleash.geometry import Volume
from unleash.models.registration import RegistrationConfig
from unleash.outputs import FILES, to_scan_grids, write_fields
from unleash.register import Registration, prepare_pair
from unleash.synthetic import example_pair
from unleash.transforms import jacobian_determinant
from unleash.workgrid import field_to_grid

# A 2 mm work grid, as the shipped model's, narrower than the scans along x (80 vs 96 mm), so the fields
# also continue beyond the work box
WORK = RegistrationConfig(shape_xyz=[41, 49, 57], spacing_mm=2.0, lattice_mm=4.0, channels=[4, 8])


def reoriented(volume: Volume, axes, flips) -> Volume:
    image = sitk.Flip(sitk.PermuteAxes(volume.to_sitk(), list(axes)), list(flips))
    return Volume.from_sitk(image)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A 1 mm pair stored with permuted and flipped axes, a smooth diffeomorphism on the work grid, its files."""
    fixed, moving, _ = example_pair(seed=2, spacing_mm=1.0, size=(96, 80, 96), max_displacement_mm=6.0)
    pair = prepare_pair(reoriented(fixed, (2, 0, 1), (True, False, True)), reoriented(moving, (1, 2, 0), (False, True, False)),
                        WORK, "vessels")
    velocity = fields.resize(4.0 * torch.randn(1, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0)),
                             pair.fixed_occupancy.shape[2:])
    forward, inverse = fields.exp(torch.cat([velocity, -velocity]), WORK.spacing_mm)
    registration = Registration(forward[None], inverse[None])
    scan = to_scan_grids(pair, registration)
    folder = tmp_path_factory.mktemp("written")
    write_fields(folder, pair, scan)
    return pair, registration, folder


def itk_displacement(path, points_lps: np.ndarray) -> np.ndarray:
    transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
    return np.array([transform.TransformPoint([float(x) for x in p]) for p in points_lps]) - points_lps


@pytest.mark.parametrize("role", ["fixed", "moving"])
def test_each_field_lies_on_the_work_lattice_over_every_voxel_of_its_scan(written, role):
    pair, _, folder = written
    scan = pair.fixed if role == "fixed" else pair.moving
    field = sitk.ReadImage(str(folder / FILES["displacement" if role == "fixed" else "inverse_displacement"]))
    assert field.GetSpacing() == pytest.approx(pair.grid.spacing_mm)
    assert field.GetDirection() == pytest.approx(pair.grid.direction)
    # its voxels are the work grid's own: whole steps from the work grid's origin
    offset_vox = (np.array(field.GetOrigin()) - np.array(pair.grid.origin_lps)) / np.array(pair.grid.spacing_mm)
    assert np.allclose(offset_vox, np.round(offset_vox), atol=1e-3)
    for corner in itertools.product(*[(0, n - 1) for n in scan.grid.size]):
        index = field.TransformPhysicalPointToContinuousIndex(scan.grid.index_to_physical(np.array([corner]))[0].tolist())
        assert all(-1e-3 <= x <= n - 1 + 1e-3 for x, n in zip(index, field.GetSize())), (corner, index)
    # an eighth of the scan's voxels, give or take the edges
    assert np.prod(field.GetSize()) < np.prod(scan.grid.size) / 6


@pytest.mark.parametrize("role", ["fixed", "moving"])
def test_itk_maps_scan_points_through_the_file_as_the_work_grid_field_maps_them(written, role):
    """The old full-grid output (the work-grid field sampled at every scan voxel) and the written lattice
    field agree to well within 0.05 mm anywhere in the scan, also outside the work box."""
    pair, registration, folder = written
    scan = pair.fixed if role == "fixed" else pair.moving
    work_field = registration.forward_mm if role == "fixed" else registration.inverse_mm
    on_scan = field_to_grid(work_field, pair.grid, scan.grid)  # (3, k, j, i) at every scan voxel
    rng = np.random.default_rng(1)
    ijk = rng.integers(0, scan.grid.size, size=(400, 3))
    points = scan.grid.index_to_physical(ijk.astype(float))
    expected = on_scan[:, ijk[:, 2], ijk[:, 1], ijk[:, 0]].T
    assert np.abs(expected).max() > 1.0  # a field that moves points: the check can tell the two apart
    outside = np.abs(pair.grid.physical_to_index(points)[:, 0] - (WORK.shape_xyz[0] - 1) / 2) > (WORK.shape_xyz[0] - 1) / 2
    assert outside.sum() > 20  # some of the points lie beyond the work box
    name = FILES["displacement" if role == "fixed" else "inverse_displacement"]
    error = np.linalg.norm(itk_displacement(folder / name, points) - expected, axis=1)
    assert error.max() < 0.005, error.max()


def test_the_images_are_on_the_fixed_grid_and_the_jacobian_is_the_fields(written):
    pair, registration, folder = written
    for key in ("warped_moving", "jacobian_determinant"):
        image = sitk.ReadImage(str(folder / FILES[key]))
        assert image.GetSize() == pair.fixed.grid.size
        assert np.allclose(image.GetDirection(), pair.fixed.grid.direction)
        assert np.allclose(image.GetOrigin(), pair.fixed.grid.origin_lps)
    jacobian = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / FILES["jacobian_determinant"])))
    # against central differences of the full-grid field at the scan's own 1 mm
    reference = jacobian_determinant(field_to_grid(registration.forward_mm, pair.grid, pair.fixed.grid), pair.fixed.grid)
    inner = (slice(2, -2),) * 3
    assert np.abs(reference[inner] - 1).mean() > 0.05  # the field compresses and stretches
    assert np.abs(jacobian[inner] - reference[inner]).mean() < 0.01
