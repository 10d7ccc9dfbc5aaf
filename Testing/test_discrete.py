"""The discrete correspondence search: exact on a known shift, consistent both ways, folding-free,
and closer than the start on a real val pair."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY, VESSELS

from unleash import discrete, fields
from unleash.datasets import read_landmarks
from unleash.geometry import read_volume
from unleash.losses import gaussian_blur
from unleash.register import prepare_pair
from unleash.transforms import displacement_at

SPACING_MM = 2.0
SHIFT_VOX = (2, -3, 1)  # (x, y, z) in 4 mm feature voxels: (8, -12, 4) mm
SMALL_WINDOW = discrete.DiscreteConfig(radius_steps=4)  # +-16 mm: holds the shift, for speed


def _tubes(shape=(65, 49, 57), seed: int = 0) -> torch.Tensor:
    """A random thresholded-noise occupancy (1, 1, *shape) on a 2 mm grid: structure everywhere."""
    generator = torch.Generator().manual_seed(seed)
    return (gaussian_blur(torch.rand(1, 1, *shape, generator=generator), 1.5) > 0.52).float()


@pytest.fixture(scope="module")
def shifted_pair():
    """Two crops (65, 49, 57) of one larger image: a fixed point x lies at x + shift in the moving crop."""
    image, o = _tubes((79, 63, 71)), 7
    x, y, z = [2 * s for s in SHIFT_VOX]
    return image[..., o:o + 65, o:o + 49, o:o + 57], image[..., o - z:o - z + 65, o - y:o - y + 49, o - x:o - x + 57]


def _interior(u: torch.Tensor, margin: int = 5) -> torch.Tensor:
    """u (1, 3, d, h, w) 5 control points (40 mm) from the box's edges, beyond which the crops differ
    in content and the smoothing carries that inwards."""
    return u[..., margin:-margin, margin:-margin, margin:-margin]


def test_a_shift_of_whole_feature_voxels_is_found_exactly_both_ways(shifted_pair):
    forward, backward = discrete.search(*shifted_pair, SPACING_MM, SMALL_WINDOW)
    shift_mm = torch.tensor(SHIFT_VOX, dtype=torch.float32).view(1, 3, 1, 1, 1) * 4.0
    assert torch.equal(_interior(forward), _interior(shift_mm.expand_as(forward)))
    assert torch.equal(_interior(backward), _interior(-shift_mm.expand_as(backward)))


def test_the_start_velocity_reproduces_the_shift_without_folding(shifted_pair):
    velocity, lattice_mm = discrete.start_velocity(*shifted_pair, SPACING_MM, SMALL_WINDOW, 5)
    assert lattice_mm == pytest.approx(8.0)
    displacement = fields.exp(velocity, lattice_mm, 5)
    shift_mm = torch.tensor(SHIFT_VOX, dtype=torch.float32).view(3, 1, 1, 1) * 4.0
    assert (_interior(displacement)[0] - shift_mm).abs().max() < 0.1
    assert (fields.jacobian_determinant(displacement, lattice_mm) > 0).all()


def test_an_image_against_itself_gives_zero_displacement():
    fixed = _tubes(seed=3)
    forward, backward = discrete.search(fixed, fixed, SPACING_MM, SMALL_WINDOW)
    assert forward.abs().max() == 0 and backward.abs().max() == 0


def test_a_work_grid_that_is_not_whole_feature_voxels_is_refused():
    with pytest.raises(ValueError, match="feature voxels"):
        discrete.descriptors(torch.zeros(1, 1, 64, 49, 57), SPACING_MM, discrete.DiscreteConfig())


def test_on_a_real_val_pair_the_search_lands_closer_than_the_start(val_folder):
    """Val 055 (19.5 mm initial): the forward and backward searches agree, folding-free, and the
    landmarks end closer than they started."""
    case = "case_055"
    fixed, moving = read_volume(val_folder / f"{case}_1.nii.gz"), read_volume(val_folder / f"{case}_2.nii.gz")
    pair = prepare_pair(fixed, moving, TINY)
    spacing = pair.grid.spacing_mm[0]
    config = discrete.DiscreteConfig(feature_mm=8.0, control_mm=16.0, radius_steps=3)  # +-24 mm, for speed
    velocity, lattice_mm = discrete.start_velocity(pair.fixed_occupancy, pair.moving_occupancy, spacing, config, 5)
    forward = fields.resize(fields.exp(velocity, lattice_mm, 5), pair.fixed_occupancy.shape[2:])
    fixed_ijk, moving_ijk = read_landmarks(VESSELS / "val_landmarks" / f"{case}.csv")
    fixed_lps, moving_lps = fixed.grid.index_to_physical(fixed_ijk), moving.grid.index_to_physical(moving_ijk)
    before = np.linalg.norm(fixed_lps - moving_lps, axis=1).mean()
    after = np.linalg.norm(fixed_lps + displacement_at(forward[0].numpy(), pair.grid, fixed_lps) - moving_lps,
                           axis=1).mean()
    assert after < 0.6 * before
    assert (fields.jacobian_determinant(forward, spacing) > 0).float().mean() > 0.9995
    searched_forward, searched_backward = discrete.search(pair.fixed_occupancy, pair.moving_occupancy, spacing, config)
    round_trip = fields.compose(searched_backward, searched_forward, lattice_mm)
    assert round_trip.norm(dim=1).median() < 8.0  # one feature voxel
