"""The synthetic example pair (determinism, vessel fraction, deformation, ITK convention) and the preview PNG."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread

from unleash.geometry import Grid, Volume
from unleash.preview import overview_png
from unleash.synthetic import (
    example_pair,
    smooth_deformation,
    true_tre_mm,
)
from unleash.transforms import jacobian_determinant

# coarser than the demo's 1.5 mm grid (same physical extent) so that the tests stay fast
SMALL = {"spacing_mm": 2.5, "size": (116, 96, 116), "max_displacement_mm": 10.0}


@pytest.fixture(scope="module")
def pair():
    return example_pair(seed=3, **SMALL)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _warp_with_sitk(moving: Volume, displacement_lps_mm: np.ndarray, fixed_grid: Grid) -> np.ndarray:
    """`moving` resampled onto `fixed_grid` through ITK's displacement field transform, nearest neighbour."""
    field = sitk.GetImageFromArray(np.moveaxis(displacement_lps_mm, 0, -1).astype(np.float64), isVector=True)
    field.SetSpacing(fixed_grid.spacing_mm)
    field.SetOrigin(fixed_grid.origin_lps)
    field.SetDirection(fixed_grid.direction)
    transform = sitk.DisplacementFieldTransform(field)
    warped = sitk.Resample(moving.to_sitk(), fixed_grid.to_sitk(), transform, sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(warped)


def test_same_seed_gives_the_same_pair(pair):
    fixed, moving, u = pair
    again_fixed, again_moving, again_u = example_pair(seed=3, **SMALL)
    assert np.array_equal(fixed.array, again_fixed.array)
    assert np.array_equal(moving.array, again_moving.array)
    assert np.array_equal(u, again_u)
    assert fixed.grid == again_fixed.grid


def test_other_seed_gives_another_pair(pair):
    other_fixed, _, _ = example_pair(seed=4, **SMALL)
    assert not np.array_equal(pair[0].array, other_fixed.array)


def test_pair_shapes_types_and_geometry(pair):
    fixed, moving, u = pair
    assert fixed.array.dtype == np.uint8 and moving.array.dtype == np.uint8
    assert set(np.unique(moving.array)) == {0, 1}
    assert u.shape == (3, *fixed.grid.shape_zyx) and u.dtype == np.float32
    assert fixed.grid == moving.grid
    # the example must exercise geometry: a flipped direction and an origin away from zero
    assert fixed.grid.direction != (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert np.linalg.norm(fixed.grid.origin_lps) > 10


def test_vessel_fraction(pair):
    for volume in pair[:2]:
        assert 0.005 <= volume.array.mean() <= 0.05


def test_deformation_is_invertible_and_has_the_requested_size(pair):
    fixed, _, u = pair
    assert jacobian_determinant(u, fixed.grid).min() > 0
    max_mm = np.sqrt((u ** 2).sum(axis=0)).max()
    assert max_mm == pytest.approx(SMALL["max_displacement_mm"], rel=0.05)


def test_deformation_is_mostly_cranio_caudal(pair):
    u = pair[2]
    assert np.abs(u[2]).mean() > max(np.abs(u[0]).mean(), np.abs(u[1]).mean())


def test_deformation_is_in_physical_space():
    """The same physical box with a flipped direction gives the same field at the same points."""
    plain = Grid((40, 36, 44), (3.0, 3.0, 3.0), (-58.5, -52.5, -64.5))
    flipped = Grid((40, 36, 44), (3.0, 3.0, 3.0), (58.5, 52.5, -64.5), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    u_plain = smooth_deformation(plain, 8.0, seed=1)
    u_flipped = smooth_deformation(flipped, 8.0, seed=1)
    # voxel (i, j, k) of `flipped` is voxel (n-1-i, n-1-j, k) of `plain`: same point, same vector
    assert np.allclose(u_flipped, u_plain[:, :, ::-1, ::-1], atol=1e-4)


def test_true_displacement_follows_the_itk_convention(pair):
    fixed, moving, u = pair
    warped = _warp_with_sitk(moving, u, fixed.grid)
    assert _dice(warped, fixed.array) > 0.9
    # and the deformation is large enough that doing nothing would not pass
    assert _dice(moving.array, fixed.array) < 0.8


def test_true_tre():
    true_u = np.zeros((3, 4, 5, 6), np.float32)
    estimated = true_u.copy()
    estimated[0] = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    mask = np.zeros((4, 5, 6), bool)
    mask[0, 0, :4] = True  # errors 0, 1, 2, 3 mm
    tre = true_tre_mm(estimated, true_u, mask)
    assert tre == pytest.approx({"mean": 1.5, "p25": 0.75, "p50": 1.5, "p75": 2.25})


def test_overview_png(pair, tmp_path):
    fixed, moving, u = pair
    path = tmp_path / "overview.png"
    overview_png(path, fixed, moving, fixed, u, jacobian_determinant(u, fixed.grid), title="test")
    assert path.stat().st_size > 0
    image = imread(path)
    assert image.shape[0] > 600 and image.shape[1] > 600
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
