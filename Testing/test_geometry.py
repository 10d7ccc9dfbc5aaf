"""Geometry: files keep origin, spacing and direction; orientation and spacing do not change the physical result."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from unleash import geometry
from unleash.geometry import Grid, Volume, read_volume, resample, write_image
from unleash.synthetic import example_pair
from unleash.workgrid import field_to_grid, finer, occupancy_on, work_grid


@pytest.fixture(scope="module")
def pair():
    fixed, moving, u = example_pair(seed=3, spacing_mm=2.5, size=(116, 96, 116), max_displacement_mm=8.0)
    return fixed, moving, u


def reoriented(volume: Volume, axes=(2, 0, 1), flips=(True, False, True)) -> Volume:
    """The same physical image stored with permuted and flipped array axes (and a matching direction)."""
    image = volume.to_sitk()
    image = sitk.PermuteAxes(image, list(axes))
    image = sitk.Flip(image, list(flips))
    return Volume.from_sitk(image)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_files_keep_array_origin_spacing_and_direction(tmp_path, pair, suffix):
    fixed = reoriented(pair[0])
    path = tmp_path / f"scan{suffix}"
    write_image(fixed.to_sitk(), path)
    back = read_volume(path)
    assert np.array_equal(back.array, fixed.array)
    assert np.allclose(back.grid.spacing_mm, fixed.grid.spacing_mm, atol=1e-5)
    assert np.allclose(back.grid.origin_lps, fixed.grid.origin_lps, atol=1e-4)
    assert np.allclose(back.grid.direction, fixed.grid.direction, atol=1e-6)


def test_a_gzipped_nifti_is_the_same_file_content_with_either_compressor_and_leaves_no_temporary_file(
        tmp_path, pair, monkeypatch):
    """ISA-L gzip (the fast path) and SimpleITK's own zlib (where `isal` is not installed) both write a
    standard .nii.gz that reads back as the same vector field with the same geometry."""
    pytest.importorskip("isal", reason="the fast gzip path needs the isal package")
    fixed = reoriented(pair[0])
    field = np.random.default_rng(0).normal(size=(*fixed.array.shape, 3)).astype(np.float32)
    image = sitk.GetImageFromArray(field, isVector=True)
    image.CopyInformation(fixed.to_sitk())
    write_image(image, tmp_path / "isal.nii.gz")
    monkeypatch.setattr(geometry, "igzip", None)
    write_image(image, tmp_path / "zlib.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["isal.nii.gz", "zlib.nii.gz"]
    fast, plain = sitk.ReadImage(str(tmp_path / "isal.nii.gz")), sitk.ReadImage(str(tmp_path / "zlib.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(fast), field)
    assert np.array_equal(sitk.GetArrayFromImage(plain), field)
    assert Grid.of(fast) == Grid.of(plain) and fast.GetNumberOfComponentsPerPixel() == 3


def test_permuted_and_flipped_axes_give_the_same_work_grid_occupancy(pair):
    fixed = pair[0]
    other = reoriented(fixed)
    assert other.array.shape != fixed.array.shape and other.grid.direction != fixed.grid.direction
    grid = work_grid(np.array([5.0, -20.0, -150.0]), (41, 33, 45), 4.0)
    assert torch.allclose(occupancy_on(grid, fixed), occupancy_on(grid, other), atol=1e-4)


def test_another_spacing_gives_nearly_the_same_work_grid_occupancy(pair):
    fixed = pair[0]
    fine = Grid(tuple(int(s * 2.5 / f) for s, f in zip(fixed.grid.size, (1.25, 1.0, 2.5))), (1.25, 1.0, 2.5),
                fixed.grid.origin_lps, fixed.grid.direction)
    finer = resample(fixed, fine, linear=False)
    grid = work_grid(np.array([5.0, -20.0, -150.0]), (41, 33, 45), 4.0)
    coarse, refined = occupancy_on(grid, fixed), occupancy_on(grid, finer)
    assert (coarse - refined).abs().sum() / coarse.sum() < 0.15
    assert abs(float(refined.sum() / coarse.sum()) - 1) < 0.05


def test_the_finer_grid_covers_the_same_box_and_its_occupancy_averages_to_the_work_grid(pair):
    """The refinement's last level reads the vessels at 1 mm on a grid over the work grid's box."""
    fixed = pair[0]
    grid = work_grid(np.array([5.0, -20.0, -150.0]), (41, 33, 45), 4.0)
    fine = finer(grid, 4)
    corners = np.array([[0, 0, 0], [40, 32, 44]], np.float64)
    assert np.allclose(fine.index_to_physical(corners * 4), grid.index_to_physical(corners))
    coarse = occupancy_on(grid, fixed)
    detailed = occupancy_on(fine, fixed, supersample=1)
    assert detailed.shape[2:] == fine.shape_zyx == (177, 129, 161)
    assert abs(float(detailed.mean() / coarse.mean()) - 1) < 0.1
    def partial_share(occupancy):  # voxels that a vessel only partly fills, among those it touches
        touched = occupancy[occupancy > 0]
        return float((touched < 1).float().mean())
    assert partial_share(detailed) < 0.9 * partial_share(coarse)  # the detail the finer grid keeps


def test_fields_mapped_to_a_reoriented_grid_agree_at_the_same_physical_points(pair):
    fixed = pair[0]
    other = reoriented(fixed)
    source = work_grid(np.array([5.0, -20.0, -150.0]), (21, 17, 23), 8.0)
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(1, 3, 23, 17, 21, generator=generator)
    # onto its own grid the field comes back as it is
    assert np.allclose(field_to_grid(u, source, source, chunk_slices=5), u[0].numpy(), atol=1e-5)
    on_fixed = field_to_grid(u, source, fixed.grid)
    on_other = field_to_grid(u, source, other.grid)
    ijk = np.array([[10, 20, 30], [50, 40, 60], [100, 80, 5]])
    points = fixed.grid.index_to_physical(ijk)
    other_ijk = np.rint(other.grid.physical_to_index(points)).astype(int)
    for (i, j, k), (oi, oj, ok) in zip(ijk, other_ijk):
        assert np.allclose(on_fixed[:, k, j, i], on_other[:, ok, oj, oi], atol=1e-4)


@pytest.mark.parametrize("direction", [(0, 1, 0, 0, 0, -1, -1, 0, 0), (0.8, 0.6, 0, -0.6, 0.8, 0, 0, 0, 1)],
                         ids=["permuted and flipped (1-D interpolations)", "oblique (grid_sample)"])
def test_a_field_on_another_grid_is_its_trilinear_interpolation_with_the_border_continued(direction):
    source = Grid((21, 17, 23), (2.0, 2.0, 2.0), (-20.0, -16.0, -22.0))
    target = Grid((30, 25, 40), (1.1, 0.7, 1.3), (15.3, -14.1, -30.2), direction)  # reaching beyond the source
    u = torch.randn(1, 3, 23, 17, 21, generator=torch.Generator().manual_seed(0))
    k, j, i = np.meshgrid(*[np.arange(n) for n in target.shape_zyx], indexing="ij")
    at = source.physical_to_index(target.index_to_physical(np.stack([i, j, k], -1).reshape(-1, 3)))
    assert (at < -1).any() and (at > np.array(source.size)).any()
    expected = np.stack([ndimage.map_coordinates(u[0, c].numpy(), at[:, ::-1].T, order=1, mode="nearest")
                         for c in range(3)]).reshape(3, *target.shape_zyx)
    assert np.abs(field_to_grid(u, source, target, chunk_slices=7) - expected).max() < 1e-4
