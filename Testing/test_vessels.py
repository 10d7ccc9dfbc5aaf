"""Vessel input handling: kind detection, lung masks and the CT vessel map, on a synthetic chest CT
(and on a real vessel mask from the shared data when it is there)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from unleash import vessels
from unleash.errors import UserError
from unleash.geometry import Grid, Volume, read_volume
from unleash.vessels import (
    detect_input_kind,
    lung_mask,
    lung_mask_from_vessels,
    vessel_map,
    vessels_from_input,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("UNLEASH_DATA", REPO_ROOT.parent / "shared" / "data"))
REAL_VESSELS = DATA_ROOT / "lung250m4b_vessels" / "val" / "case_002_1.nii.gz"

# Anisotropic voxels and a flipped direction, as in many scanner files.
SIZE_IJK = (150, 150, 90)
SPACING_MM = (0.8, 0.8, 1.5)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
GRID = Grid(SIZE_IJK, SPACING_MM, (60.0, -60.0, 70.0), DIRECTION)

# (start mm, end mm, radius mm) in phantom coordinates (x, y, z), all inside the lungs.
TUBES_MM = [
    ((-26, 0, -35), (-26, 0, 35), 2.5),
    ((26, 5, -35), (26, 5, 35), 2.0),
    ((-35, -15, -25), (-18, 12, 25), 1.5),
    ((34, -20, 10), (34, 20, 10), 3.0),
    ((18, -10, -30), (36, 10, -5), 1.5),
]


def _coordinates_mm():
    """Phantom coordinates (z, y, x) in mm, centred, broadcastable to the [k, j, i] array."""
    k, j, i = (np.arange(n, dtype=np.float64) for n in reversed(SIZE_IJK))
    z = ((k - (SIZE_IJK[2] - 1) / 2) * SPACING_MM[2])[:, None, None]
    y = ((j - (SIZE_IJK[1] - 1) / 2) * SPACING_MM[1])[None, :, None]
    x = ((i - (SIZE_IJK[0] - 1) / 2) * SPACING_MM[0])[None, None, :]
    return z, y, x


def _tube(z, y, x, start, end, radius_mm) -> np.ndarray:
    """Voxels within `radius_mm` of the segment start-end (capsule)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = end - start
    t = np.clip(((x - start[0]) * axis[0] + (y - start[1]) * axis[1] + (z - start[2]) * axis[2])
                / (axis @ axis), 0, 1)
    distance_sq = ((x - start[0] - t * axis[0]) ** 2 + (y - start[1] - t * axis[1]) ** 2
                   + (z - start[2] - t * axis[2]) ** 2)
    return distance_sq <= radius_mm ** 2


@pytest.fixture(scope="module")
def phantom():
    """A chest CT: body cylinder (30 HU) in air (-1000 HU), two lungs (-850 HU) joined by a trachea
    that reaches the top slice, vessels (30 HU) inside the lungs, noise 20 HU."""
    z, y, x = _coordinates_mm()
    body = np.broadcast_to((x / 55) ** 2 + (y / 45) ** 2 < 1, GRID.shape_zyx)
    lungs = ((np.abs(x) - 26) / 20) ** 2 + (y / 30) ** 2 + (z / 50) ** 2 < 1
    trachea = (x ** 2 + y ** 2 < 8 ** 2) & (z > -5)
    tubes = np.zeros(lungs.shape, bool)
    for start, end, radius_mm in TUBES_MM:
        tubes |= _tube(z, y, x, start, end, radius_mm)
    assert not (tubes & ~lungs).any()
    hu = np.full(lungs.shape, -1000.0)
    hu[body] = 30.0
    hu[lungs | trachea] = -850.0
    hu[trachea & ~lungs] = -1000.0
    hu[tubes] = 30.0
    hu += np.random.default_rng(0).normal(0, 20, hu.shape)
    ct = Volume(np.round(hu).astype(np.int16), GRID)
    return {"ct": ct, "lungs": lungs, "trachea": trachea & ~lungs, "tubes": tubes}


@pytest.fixture(scope="module")
def ct_result(phantom):
    return vessels_from_input(phantom["ct"], "auto")


def test_kind_of_ct_and_label_map(phantom):
    assert detect_input_kind(phantom["ct"]) == "ct"
    labels = np.zeros(GRID.shape_zyx, np.uint8)
    labels[10:20, 30:40, 50:60] = 1
    labels[30:40, 30:40, 50:60] = 2
    assert detect_input_kind(Volume(labels, GRID)) == "vessels"
    assert detect_input_kind(Volume(labels.astype(np.float32), GRID)) == "vessels"


def test_bad_inputs_raise_user_error(phantom):
    with pytest.raises(UserError, match="vessel mask is empty"):
        detect_input_kind(Volume(np.zeros(GRID.shape_zyx, np.uint8), GRID))
    with pytest.raises(UserError, match="vessel mask is empty"):
        vessels_from_input(Volume(np.zeros(GRID.shape_zyx, np.uint8), GRID), "vessels")
    with pytest.raises(UserError, match="constant"):
        detect_input_kind(Volume(np.full(GRID.shape_zyx, -1000.0, np.float32), GRID))
    noise = np.random.default_rng(1).uniform(0, 1, GRID.shape_zyx).astype(np.float32)
    with pytest.raises(UserError, match="neither"):
        detect_input_kind(Volume(noise, GRID))
    with pytest.raises(UserError, match="unknown input kind"):
        vessels_from_input(phantom["ct"], "mri")


def test_no_lungs_in_a_ct_without_air_inside(phantom):
    no_lungs = np.where(phantom["lungs"] | phantom["trachea"], 30, phantom["ct"].array).astype(np.int16)
    with pytest.raises(UserError, match="no lungs found"):
        lung_mask(Volume(no_lungs, GRID))


def test_lung_mask_covers_the_lungs(phantom, ct_result):
    _, mask, kind = ct_result
    assert kind == "ct"
    assert mask.dtype == bool and mask.shape == GRID.shape_zyx
    lungs = phantom["lungs"]
    assert (mask & lungs).sum() > 0.9 * lungs.sum()
    outside = mask & ~lungs & ~phantom["trachea"]
    assert outside.sum() < 0.1 * lungs.sum()


def test_vessel_map_finds_the_tubes(phantom, ct_result):
    vessels, mask, _ = ct_result
    assert vessels.grid == GRID and vessels.array.dtype == np.uint8
    found = vessels.array > 0
    tubes = phantom["tubes"]
    recall = (found & tubes).sum() / tubes.sum()
    # The map is dilated by one voxel like the training data, so it is judged against dilated tubes.
    precision = (found & ndimage.binary_dilation(tubes, np.ones((3, 3, 3)))).sum() / found.sum()
    assert recall > 0.7, recall
    assert precision > 0.5, precision
    assert np.array_equal(vessel_map(phantom["ct"], mask).array, vessels.array)


def test_label_map_gives_binary_vessels_and_lungs(phantom):
    labels = phantom["tubes"].astype(np.uint8) * 2
    vessels, mask, kind = vessels_from_input(Volume(labels, GRID), "auto")
    assert kind == "vessels"
    assert set(np.unique(vessels.array)) == {0, 1}
    assert mask[labels > 0].mean() > 0.95
    assert mask.mean() < 0.5


@pytest.mark.skipif(not REAL_VESSELS.is_file(), reason=f"real vessel data not found at {REAL_VESSELS} "
                    "(set UNLEASH_DATA to the shared data folder)")
def test_real_vessel_mask():
    volume = read_volume(REAL_VESSELS)
    assert detect_input_kind(volume) == "vessels"
    vessels = volume.with_array((volume.array > 0).astype(np.uint8))
    mask = lung_mask_from_vessels(vessels)
    inside = mask[vessels.array > 0].mean()
    assert inside > 0.95, inside
    assert mask.mean() < 0.7, mask.mean()


# ---------------------------------------------------------------------------- the fast paths agree with the plain ones

def _blobs(shape, seed: int, share: float = 0.5) -> np.ndarray:
    """A random mask with holes of all sizes: smoothed noise, thresholded."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 2.0)
    return noise > np.quantile(noise, 1 - share)


def test_holes_filled_as_scipy_fills_them():
    mask = _blobs((40, 50, 60), seed=2, share=0.6)
    assert np.array_equal(vessels._holes_filled(mask, ndimage.generate_binary_structure(3, 1), range(3)),
                          ndimage.binary_fill_holes(mask))
    for si_axis in range(3):  # slice by slice: scipy with an empty slice padded at both ends of that axis
        in_plane = np.zeros((3, 3, 3), bool)
        in_plane[(slice(None),) * si_axis + (1,)] = ndimage.generate_binary_structure(2, 1)
        pad = [(0, 0)] * 3
        pad[si_axis] = (1, 1)
        expected = np.take(ndimage.binary_fill_holes(np.pad(mask, pad), structure=in_plane),
                           np.arange(1, mask.shape[si_axis] + 1), axis=si_axis)
        border_axes = [axis for axis in range(3) if axis != si_axis]
        assert np.array_equal(vessels._holes_filled(mask, in_plane, border_axes), expected)


def test_dilation_by_the_cube():
    mask = _blobs((30, 31, 32), seed=3, share=0.05)
    assert np.array_equal(vessels._dilated(mask), ndimage.binary_dilation(mask, np.ones((3, 3, 3), bool)))


def test_eigenvalues_sorted_by_magnitude():
    rng = np.random.default_rng(4)
    a, b, c, d, e, f = rng.normal(size=(6, 2000)).astype(np.float32)
    matrices = np.stack([np.stack([a, d, e], -1), np.stack([d, b, f], -1), np.stack([e, f, c], -1)], -2)
    expected = np.linalg.eigvalsh(matrices.astype(np.float64))
    expected = np.take_along_axis(expected, np.argsort(np.abs(expected), -1), -1)
    found = np.stack(vessels._eigenvalues_by_magnitude(a, b, c, d, e, f), -1)
    assert np.abs(found - expected).max() < 1e-3 * np.abs(expected).max()


def test_interpolation_at_chosen_voxels_and_in_the_mask_box():
    """Point sampling and the boxed mask resampling give what resampling the whole grid gives,
    on grids with a flipped direction like the phantom's."""
    fine = GRID
    coarse = Grid((61, 61, 70), (2.0, 2.0, 2.0), (61.0, -59.0, 69.5), DIRECTION)
    values = ndimage.gaussian_filter(np.random.default_rng(5).normal(size=coarse.shape_zyx), 1.0).astype(np.float32)
    whole = vessels._resample(values, coarse, fine)
    at = np.random.default_rng(6).choice(whole.size, 5000, replace=False)
    assert np.abs(vessels._sample_at(values, coarse, fine, at) - whole.ravel()[at]).max() < 1e-4
    mask = np.zeros(coarse.shape_zyx, bool)
    mask[20:40, 15:35, 25:50] = _blobs((20, 20, 25), seed=7)
    low = coarse.to_sitk()
    assert np.array_equal(vessels._to_grid(mask, low, fine), vessels._resample(mask, coarse, fine) > 0.5)


def test_vesselness_only_where_a_vessel_can_be(phantom, ct_result):
    """Computing the vesselness at the dense lung voxels only changes nothing there (the CT's own grid)."""
    _, lungs, _ = ct_result
    hu = np.clip(phantom["ct"].array.astype(np.float32), *vessels.HU_CLIP)
    dense = (hu > vessels.VESSEL_MIN_HU) & lungs
    spacing_zyx = np.asarray(GRID.spacing_mm)[::-1]
    everywhere = vessels._vesselness(hu, lungs, spacing_zyx)
    assert np.array_equal(vessels._vesselness(hu, dense, spacing_zyx)[dense], everywhere[dense])
