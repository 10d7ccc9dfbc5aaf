"""The vessel refiner (2 mm decoder probabilities -> 1 mm): its layout, its training, and the sampler
file that carries it, with tiny configs on the CPU."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, VESSELS
from test_denoiser import TINY_DENOISER, TINY_VQAE

from unleash.checkpoints import load_model, save_model
from unleash.models.autoencoder import InstanceNorm
from unleash.models.refiner import Refiner, RefinerConfig, pixel_shuffle_3d
from unleash.models.sampler import Sampler, SamplerConfig
from unleash.models.vqae import VQAEConfig, VQAutoEncoder
from unleash.sample import decode_pair, fine_probabilities, load_sampler, sample_grid
from unleash.train.refiner import RefinerTraining, draw_crop, refiner_loss, skeleton_tube, train_refiner

COARSE_VQAE = VQAEConfig(**{**TINY_VQAE.to_dict(), "spacing_mm": 2.0})
TINY_REFINER = RefinerConfig(width=4, layers=2)


def test_the_pixel_shuffle_puts_channel_abc_of_a_coarse_voxel_at_its_fine_voxel_abc():
    x = torch.arange(2 * 8 * 2 * 3 * 2, dtype=torch.float32).view(2, 8, 2, 3, 2)
    fine = pixel_shuffle_3d(x, 2)
    assert fine.shape == (2, 1, 4, 6, 4)
    for a, b, c in np.ndindex(2, 2, 2):
        assert torch.equal(fine[:, 0, a::2, b::2, c::2], x[:, 4 * a + 2 * b + c])


def test_an_untrained_refiner_draws_the_trilinear_upsampling_of_the_input_logit():
    torch.manual_seed(0)
    probability = torch.rand(1, 1, 6, 5, 7)
    logits = Refiner(RefinerConfig(width=4)).eval()(probability)
    expected = F.interpolate(probability.clamp(1e-4, 1 - 1e-4).logit(), scale_factor=2, mode="trilinear",
                             align_corners=False)
    assert logits.shape == (1, 1, 12, 10, 14) and torch.allclose(logits, expected, atol=1e-5)


def tube_scan(offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A straight 2-voxel-wide tube along k in a 1 mm mask (24, 24, 24) and the decoder-like soft
    blob of it at 2 mm: its 2 x 2 x 2 averages, blurred."""
    fine = torch.zeros(24, 24, 24, dtype=torch.uint8)
    fine[offset:offset + 2, 10:12, :] = 1
    coarse = F.avg_pool3d(fine[None, None].float(), 2)
    coarse = F.avg_pool3d(coarse, 3, 1, 1)[0, 0]
    return coarse, fine


@pytest.mark.parametrize("term", ["cldice_weight", "skeleton_recall_weight"])
def test_training_draws_thin_tubes_where_the_input_is_a_soft_blob(term):
    torch.manual_seed(0)
    scans = [tube_scan(offset) for offset in (4, 10, 16)]
    refiner = Refiner(TINY_REFINER)
    coarse, fine = tube_scan(8)
    with torch.no_grad():
        before = refiner(coarse[None, None])[0, 0]
    losses = train_refiner(refiner, scans, RefinerTraining(crop_coarse=8, batch_size=4, steps=150, learning_rate=1e-2,
                                                           **{term: 0.5}), log=lambda _: None)
    with torch.no_grad():
        after = refiner(coarse[None, None])[0, 0]

    def dice(logits):
        drawn = logits > 0
        return 2 * float((drawn & fine.bool()).sum()) / float(drawn.sum() + fine.sum())

    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20])
    assert dice(after) > dice(before) + 0.1


def test_the_skeleton_tube_of_a_real_mask_is_its_centrelines_within_the_vessels():
    """Case 032's fixed mask, a 64-voxel crop around its vessels' centre: the tube holds every skeleton
    voxel, only vessel voxels next to the skeleton, and not the rims of the thick vessels."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    from unleash.geometry import read_volume

    path = VESSELS / "train" / "case_032_1.nii.gz"
    if not path.is_file():
        pytest.skip(f"real Lung250M-4B vessel masks not found under {VESSELS} (set UNLEASH_DATA)")
    mask = read_volume(path).array > 0
    centre = np.argwhere(mask).mean(axis=0).astype(int)
    crop = mask[tuple(slice(max(0, c - 32), c + 32) for c in centre)]
    tube = skeleton_tube(torch.from_numpy(crop.astype(np.uint8))).numpy().astype(bool)
    skeleton = skeletonize(crop).astype(bool)
    near = ndimage.binary_dilation(skeleton, ndimage.generate_binary_structure(3, 1))
    assert skeleton.sum() > 100 and tube[skeleton].all()
    assert not tube[~crop].any() and not tube[~near].any()
    assert tube.sum() < 0.6 * crop.sum()  # thick vessels' rims are off it


def test_skeleton_recall_makes_missing_a_thin_vessel_cost_more_than_the_same_voxels_of_a_thick_one():
    """A thick (6 x 6) and a thin (1 x 1) tube along k; two drawings each miss 24 vessel voxels: the thin
    tube, or a rim layer of the thick one. Dice and cross-entropy cannot tell them apart; skeleton recall can."""
    target = torch.zeros(16, 16, 24)
    target[2:8, 2:8, :] = 1
    target[12, 12, :] = 1
    no_thin, no_rim = target.clone(), target.clone()
    no_thin[12, 12, :] = 0
    no_rim[2, 2:8, :4] = 0
    assert no_thin.sum() == no_rim.sum()
    targets = torch.stack([target, skeleton_tube(target.to(torch.uint8)).float()])[None]

    def loss(drawing, weight):
        logits = (20 * drawing - 10)[None, None]
        return float(refiner_loss(logits, targets, RefinerTraining(skeleton_recall_weight=weight)))

    assert loss(no_thin, 0.0) == pytest.approx(loss(no_rim, 0.0), rel=1e-4)
    assert loss(no_thin, 1.0) > loss(no_rim, 1.0) + 0.01


def test_crops_of_coarse_and_fine_cover_the_same_box_and_are_flipped_alike():
    torch.manual_seed(0)
    fine = (torch.rand(24, 20, 16) > 0.7).to(torch.uint8)
    coarse = F.avg_pool3d(fine[None, None].float(), 2)[0, 0]
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = draw_crop(coarse, fine, 2, 6, rng)
        assert x.shape == (1, 6, 6, 6) and y.shape == (1, 12, 12, 12)
        assert torch.allclose(F.avg_pool3d(y[None], 2)[0], x)
    maps = torch.stack([fine, 1 - fine])  # more fine maps than the target: cropped alike
    x, y = draw_crop(coarse, maps, 2, 6, np.random.default_rng(1))
    assert y.shape == (2, 12, 12, 12) and torch.equal(y[1], 1 - y[0])
    assert torch.allclose(F.avg_pool3d(y[:1][None], 2)[0], x)


def coarse_sampler_config(refiner: RefinerConfig | None = TINY_REFINER) -> SamplerConfig:
    return SamplerConfig(vqae=COARSE_VQAE, denoiser=TINY_DENOISER, refiner=refiner)


def test_a_sampler_file_with_a_refiner_loads_and_decodes_through_it(tmp_path):
    torch.manual_seed(0)
    config = coarse_sampler_config()
    sampler = Sampler(config)
    torch.nn.init.normal_(sampler.refiner.head.weight, std=1.0)  # a refiner that changes the drawing
    path = save_model(tmp_path / "sampler.safetensors", sampler, config, {"kind": "sampler"})
    loaded, loaded_config, _ = load_model(path, "sampler")
    assert loaded_config.refiner == TINY_REFINER and loaded_config.to_dict()["refiner"]["width"] == 4
    grid = sample_grid(loaded.vqae.config)
    tokens = torch.randint(0, COARSE_VQAE.codebook_size, (math.prod(COARSE_VQAE.token_shape_ijk),))
    refined = decode_pair(loaded.vqae, tokens, grid, loaded.refiner)
    trilinear = decode_pair(loaded.vqae, tokens, grid)
    assert refined["fixed"].array.shape == trilinear["fixed"].array.shape == grid.shape_zyx
    assert not np.allclose(refined["fixed_probability"].array, trilinear["fixed_probability"].array, atol=1e-2)
    assert 0 <= refined["moving_probability"].array.min() and refined["moving_probability"].array.max() <= 1


def test_a_sampler_file_without_a_refiner_has_none_and_its_config_no_refiner_key(tmp_path):
    config = coarse_sampler_config(refiner=None)
    path = save_model(tmp_path / "sampler.safetensors", Sampler(config), config, {"kind": "sampler"})
    loaded, loaded_config, _ = load_model(path, "sampler")
    assert loaded.refiner is None and loaded_config.refiner is None and "refiner" not in loaded_config.to_dict()


def test_a_refiner_that_does_not_reach_1mm_is_refused():
    with pytest.raises(ValueError, match="does not bring the decoder's 2.0 mm"):
        coarse_sampler_config(RefinerConfig(factor=4))
    with pytest.raises(ValueError, match="unknown refiner config keys"):
        RefinerConfig.from_dict({"width": 4, "depth": 2})


def autocast_probabilities(refiner: Refiner, coarse: torch.Tensor) -> torch.Tensor:
    """How sampling drew the refined probabilities before `Refiner.probabilities`: forward under bfloat16 autocast."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return torch.sigmoid(refiner(coarse).float())


def test_the_sampling_path_of_the_refiner_gives_its_forward_probabilities():
    torch.manual_seed(0)
    refiner = Refiner(RefinerConfig(width=8)).eval()
    for parameter in refiner.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    coarse = torch.rand(2, 1, 9, 7, 8) ** 4
    drawn = refiner.probabilities(coarse)
    assert drawn.shape == (2, 1, 18, 14, 16) and drawn.dtype == torch.float32
    assert torch.equal(drawn, autocast_probabilities(refiner, coarse))
    with torch.no_grad():
        exact = torch.sigmoid(refiner(coarse))
    assert 0.01 < float((exact - 0.5).abs().mean()) and torch.allclose(drawn, exact, atol=0.02)  # bfloat16 convolutions


def test_the_instance_norm_that_keeps_channels_last_normalises_as_torchs():
    torch.manual_seed(0)
    x = (3 * torch.randn(2, 5, 6, 7, 8) + 1).contiguous(memory_format=torch.channels_last_3d)
    y = InstanceNorm(1e-5)(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(y, torch.nn.InstanceNorm3d(5)(x), atol=1e-5)


def test_a_channels_last_decoder_draws_the_same_logits():
    torch.manual_seed(0)
    vqae = VQAutoEncoder(COARSE_VQAE).eval()
    tokens = torch.randint(0, COARSE_VQAE.codebook_size, (2, *COARSE_VQAE.token_shape_ijk))
    with torch.no_grad():
        before = vqae.decode(tokens)
        after = vqae.channels_last().decode(tokens)
    assert not any(isinstance(m, torch.nn.InstanceNorm3d) for m in vqae.modules())
    assert any(isinstance(m, InstanceNorm) for m in vqae.modules())
    assert float(before.std()) > 0.01 and torch.allclose(after, before, atol=1e-4)


@torch.no_grad()
def test_the_shipped_sampler_draws_a_real_token_grid_as_before_its_faster_layouts():
    """The paper's tokens of its case 000 through the shipped decoder and refiner: `unleash sample`'s
    channels-last decoder and refiner path against the plain decoder and the refiner under autocast."""
    path = DATA / "seed_tokens" / "lung250m4b_train_tokens.npz"
    if not path.is_file():
        pytest.skip(f"the paper's token file is not at {path} (set UNLEASH_DATA)")
    tokens = torch.from_numpy(np.load(path)["tokens"][0].astype(np.int64))
    plain, _, _ = load_model(None, "sampler")
    fast, _ = load_sampler(None, torch.device("cpu"))
    grid_tokens = tokens[None].view(1, *plain.vqae.config.token_shape_ijk)

    def coarse(vqae):
        logits = vqae.decode(grid_tokens)[0]
        return torch.stack([logits[0:2].softmax(0)[1], logits[2:4].softmax(0)[1]])

    before, after = coarse(plain.vqae), coarse(fast.vqae)
    assert float((after - before).abs().max()) < 1e-4
    refined = fine_probabilities(before, 2, fast.refiner)
    assert torch.equal(refined, autocast_probabilities(plain.refiner, before[:, None])[:, 0])
    drawn_before, drawn_after = refined > 0.5, fine_probabilities(after, 2, fast.refiner) > 0.5
    assert 0.01 < float(drawn_before.float().mean()) < 0.05  # a real drawing, not an empty one
    assert int((drawn_before != drawn_after).sum()) < 1e-5 * drawn_before.numel()
