"""The sampler's mask rule (`sample.vessel_mask`): the vessels above the threshold, joined and extended by
the centrelines of the fainter mask around them; on a drawn tube geometry and on the shipped sampler's
drawing of a real token grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DATA
from scipy import ndimage

from unleash.checkpoints import DEFAULTS
from unleash.sample import CENTRELINE_THRESHOLD, NEIGHBOURS_26, decode_pair, load_sampler, sample_grid, vessel_mask

TOKENS = DATA / "seed_tokens" / "lung250m4b_train_tokens.npz"
SURE, FAINT = 0.9, 0.4  # a confident vessel's probability, and a faint one's (below 0.5, above the centreline threshold)


def tube(probability: torch.Tensor, i: slice, j: int, k: int, value: float, radius: float = 2.0) -> None:
    """Voxels within `radius` of the line along i through (j, k) in the range `i` take `value`."""
    jj, kk = torch.meshgrid(torch.arange(probability.shape[1]), torch.arange(probability.shape[2]), indexing="ij")
    probability[i, (jj - j) ** 2 + (kk - k) ** 2 <= radius ** 2] = value


def tubes() -> torch.Tensor:
    """(I, J, K) = (48, 24, 24) probabilities: two sure tubes along i (5 voxels wide) with an 8-voxel gap
    that a faint tube bridges, and a faint tube alone further off."""
    probability = torch.zeros(48, 24, 24)
    tube(probability, slice(4, 16), 12, 12, SURE)
    tube(probability, slice(16, 24), 12, 12, FAINT)
    tube(probability, slice(24, 36), 12, 12, SURE)
    tube(probability, slice(8, 40), 4, 19, FAINT)  # no sure voxel anywhere near
    return probability


def components(mask: torch.Tensor) -> int:
    return ndimage.label(mask.numpy(), NEIGHBOURS_26)[1]


def test_a_faint_ridge_joins_two_sure_pieces_with_a_centreline_not_its_volume():
    probability = tubes()
    core = probability > 0.5
    mask = vessel_mask(probability, 0.5, 2)
    added = mask & ~core
    assert components(core) == 2 and components(mask) == 1
    assert mask[core].all() and (probability[added] > CENTRELINE_THRESHOLD).all()
    assert 0 < int(added.sum()) <= 16  # about the gap's length of 8 voxels, where the faint tube holds 104
    assert not mask[:, :8, 15:].any()  # the faint tube that touches no sure vessel is not drawn


def test_on_the_decoders_own_grid_the_centrelines_are_the_fine_skeleton():
    probability = tubes()
    mask = vessel_mask(probability, 0.5, 1)
    assert components(mask) == 1 and int((mask & ~(probability > 0.5)).sum()) <= 16


def test_a_scan_without_faint_vessels_keeps_its_threshold_mask():
    probability = tubes().clamp(max=0.2)  # nothing above the centreline threshold
    assert not vessel_mask(probability, 0.1, 2).logical_xor(probability > 0.1).any()


@pytest.mark.skipif(not TOKENS.is_file(), reason=f"the paper's tokens not found at {TOKENS} (set UNLEASH_DATA)")
@pytest.mark.skipif(not DEFAULTS["sampler"].is_file(), reason="the shipped sampler is not installed")
def test_the_shipped_sampler_joins_pieces_of_a_real_token_grid_at_a_few_hundred_voxels():
    """The paper's tokens of case 032 through the shipped decoder and refiner: the written mask holds every
    voxel above the scan's threshold, has fewer pieces, and adds only centreline voxels (< 0.01 % of the box)."""
    torch.set_num_threads(2)
    model, _ = load_sampler(None, torch.device("cpu"))
    tokens = torch.from_numpy(np.load(TOKENS)["tokens"][0].astype(np.int64)).view(-1)
    volumes = decode_pair(model.vqae, tokens, sample_grid(model.vqae.config), model.refiner)
    for role in ("fixed", "moving"):
        probability, mask = volumes[f"{role}_probability"].array, volumes[role].array.astype(bool)
        core = probability > volumes[f"{role}_threshold"]
        added = mask & ~core
        assert mask[core].all() and (probability[added] > CENTRELINE_THRESHOLD).all()
        assert 0 < added.sum() < 1e-4 * mask.size
        assert components(torch.from_numpy(mask)) < components(torch.from_numpy(core))
