"""Sampling synthetic pairs and `unleash sample` / `unleash encode`, with a tiny untrained sampler on the CPU."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from conftest import VESSELS
from test_cli import assert_one_clear_line, run_cli
from test_denoiser import TINY_DENOISER, TINY_VQAE

import unleash.sample
from unleash.checkpoints import DEFAULTS, load_model, save_model
from unleash.cli import build_parser
from unleash.datasets import find_pairs
from unleash.encode import occupancy_ijk, token_volume_grid
from unleash.geometry import read_volume
from unleash.jobs import parse_event, sample_command
from unleash.modelfile import read_metadata
from unleash.models.sampler import Sampler, SamplerConfig
from unleash.models.vqae import VQAEConfig, VQAutoEncoder
from unleash.output_folder import MARKER
from unleash.sample import SCHEDULES, decode_pair, sample_grid, sample_tokens, vessel_mask

L = TINY_DENOISER.tokens
CODES = TINY_DENOISER.codebook_size


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny networks do less work per call than it takes to start a second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sampler_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = SamplerConfig(vqae=TINY_VQAE, denoiser=TINY_DENOISER)
    path = tmp_path_factory.mktemp("models") / "tiny_sampler.safetensors"
    save_model(path, Sampler(config), config, {"kind": "sampler", "note": "tiny untrained test model"})
    return path


@pytest.fixture(scope="module")
def sampler(sampler_file):
    return load_model(sampler_file, "sampler")[0]


def sample(sampler, schedule, steps=12, seed=0, count=3, on_step=None):
    return sample_tokens(sampler.denoiser, count, schedule, steps, 0.9, torch.Generator().manual_seed(seed), on_step)


# ---- the sampler ----

@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_token_is_unmasked_exactly_once_and_no_mask_id_is_left(sampler, schedule):
    times_unmasked = torch.zeros(3, L, dtype=torch.long)
    tokens = sample(sampler, schedule, on_step=lambda step, steps, unmask: times_unmasked.add_(unmask))
    assert (times_unmasked == 1).all()
    assert tokens.shape == (3, L) and tokens.min() >= 0 and tokens.max() < CODES  # the mask id is CODES


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_the_same_seed_gives_the_same_tokens_and_another_seed_others(sampler, schedule):
    assert torch.equal(sample(sampler, schedule, seed=1), sample(sampler, schedule, seed=1))
    assert not torch.equal(sample(sampler, schedule, seed=1), sample(sampler, schedule, seed=2))


def test_the_paper_schedule_unmasks_a_1_over_T_minus_t_share_of_the_masked_tokens_at_step_t(sampler):
    steps, shares = 8, []
    masked = [3 * L]

    def record(step, total, unmask):
        shares.append((int(unmask.sum()), masked[-1], 1 / (total - step + 1)))
        masked.append(masked[-1] - int(unmask.sum()))

    sample(sampler, "paper", steps=steps, on_step=record)
    assert len(shares) == steps and masked[-1] == 0
    for unmasked, before, p in shares:
        assert abs(unmasked - p * before) <= 5 * math.sqrt(before * p * (1 - p)) + 1e-9


def test_maskgit_keeps_a_cosine_share_masked(sampler):
    steps, masked = 12, [L]
    sample(sampler, "maskgit", steps=steps, count=2,
           on_step=lambda step, total, unmask: masked.append(masked[-1] - int(unmask[0].sum())))
    assert masked[1:] == [math.floor(L * math.cos(math.pi / 2 * t / steps)) for t in range(1, steps + 1)]


class ConfidentHalf(torch.nn.Module):
    """A stand-in denoiser: sure of token 1 in the first half of the sequence, undecided in the second."""

    def __init__(self):
        super().__init__()
        self.config = TINY_DENOISER
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, CODES)
        logits[:, : L // 2, 1] = 50.0
        return logits * self.scale


def test_maskgit_without_choice_noise_fills_the_most_confident_tokens_first(monkeypatch):
    monkeypatch.setattr(unleash.sample, "CHOICE_NOISE", 0.0)
    order = []
    sample_tokens(ConfidentHalf(), 1, "maskgit", 8, 0.9, torch.Generator().manual_seed(0),
                  lambda step, steps, unmask: order.append(unmask[0].nonzero()[:, 0]))
    first = torch.cat(order)[: L // 2]
    assert (first < L // 2).all()


def test_a_coarser_decoder_writes_1mm_volumes_over_the_same_box():
    torch.manual_seed(0)
    coarse = VQAEConfig(**{**TINY_VQAE.to_dict(), "spacing_mm": 2.0})
    vqae = VQAutoEncoder(coarse)
    grid = sample_grid(vqae.config)
    assert grid.spacing_mm == (1.0, 1.0, 1.0) and grid.size == tuple(2 * n for n in coarse.volume_shape_ijk)
    assert np.allclose(grid.index_to_physical((np.asarray(grid.size)[None] - 1) / 2), 0)
    tokens = torch.randint(0, coarse.codebook_size, (math.prod(coarse.token_shape_ijk),))
    volumes = decode_pair(vqae, tokens, grid)
    assert volumes["fixed"].array.shape == grid.shape_zyx and volumes["moving_probability"].array.max() <= 1


def test_decoded_volumes_are_label_maps_on_a_1mm_grid_centred_at_0(sampler):
    grid = sample_grid(sampler.vqae.config)
    volumes = decode_pair(sampler.vqae, sample(sampler, "maskgit", count=1)[0], grid)
    assert grid.size == tuple(TINY_VQAE.volume_shape_ijk) and grid.spacing_mm == (1.0, 1.0, 1.0)
    assert grid.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert np.allclose(grid.index_to_physical((np.asarray(grid.size)[None] - 1) / 2), 0)
    for name in ("fixed", "moving"):
        labels, probability = volumes[name].array, volumes[f"{name}_probability"].array
        assert labels.shape == tuple(reversed(TINY_VQAE.volume_shape_ijk)) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1}
        assert probability.min() >= 0 and probability.max() <= 1
        mask = vessel_mask(torch.from_numpy(probability).permute(2, 1, 0), volumes[f"{name}_threshold"], 1)
        assert np.array_equal(labels, mask.permute(2, 1, 0).numpy().astype(np.uint8))  # the mask rule, [k, j, i]


def graded_map(shares_and_values, shape=(40, 50, 60), seed=0) -> torch.Tensor:
    """A probability map with the given shares of its voxels at the given probabilities (the rest 0), shuffled."""
    flat = torch.zeros(math.prod(shape))
    start = 0
    for share, value in shares_and_values:
        flat[start:start + round(share * flat.numel())] = value
        start += round(share * flat.numel())
    return flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))].view(shape)


def test_a_scan_within_the_real_vessel_range_is_thresholded_at_one_half():
    probability = graded_map([(0.02, 0.9), (0.05, 0.3)])
    assert unleash.sample.vessel_threshold(probability) == 0.5


def test_a_nearly_empty_drawing_is_widened_along_its_probabilities_to_the_real_minimum():
    low, high = unleash.sample.REAL_VESSEL_FRACTION
    probability = graded_map([(0.005, 0.9), (0.004, 0.4), (0.004, 0.3), (0.004, 0.2), (0.1, 0.01)])
    threshold = unleash.sample.vessel_threshold(probability)
    vessels = probability > threshold
    assert low <= float(vessels.float().mean()) < 0.0135  # 0.9 % above 0.4, then the 0.3s: 1.3 %
    assert vessels[probability > 0.5].all() and not vessels[probability <= 0.2].any()


def test_a_flooded_drawing_is_narrowed_to_the_real_maximum():
    low, high = unleash.sample.REAL_VESSEL_FRACTION
    probability = graded_map([(0.03, 0.99), (0.01, 0.8), (0.01, 0.7), (0.03, 0.6)])
    threshold = unleash.sample.vessel_threshold(probability)
    assert 0.5 < threshold and float((probability > threshold).float().mean()) == pytest.approx(0.04, abs=1e-3)


def test_an_empty_drawing_stays_empty_rather_than_every_voxel_turning_vessel():
    probability = torch.zeros(30, 30, 30)
    assert not (probability > unleash.sample.vessel_threshold(probability)).any()


# ---- `unleash sample` ----

def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_sample_end_to_end_as_the_sampler_module_runs_it(sampler_file, tmp_path):
    out = tmp_path / "synthetic"
    command = sample_command(out, 3, model=sampler_file, steps=6, batch_size=2, probabilities=True, device="cpu",
                             seed=3, python=sys.executable)
    job = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert job.returncode == 0, job.stderr
    events = [parse_event(line) for line in job.stdout.splitlines() if line.strip()]
    assert all(events) and {"log", "progress"} <= {e["event"] for e in events} and events[-1]["event"] == "result"
    pairs = [f"pair_{i:04d}_{side}" for i in (1, 2, 3) for side in ("fixed", "moving")]
    expected = {f"{p}.nii.gz" for p in pairs} | {f"{p}_probability.nii.gz" for p in pairs}
    expected |= {"samples.json", "preview.png", MARKER}
    assert {p.name for p in out.iterdir()} == expected
    image = sitk.ReadImage(str(out / "pair_0002_moving.nii.gz"))
    assert image.GetPixelID() == sitk.sitkUInt8 and image.GetSize() == tuple(TINY_VQAE.volume_shape_ijk)
    assert image.GetSpacing() == (1.0, 1.0, 1.0) and np.allclose(image.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2 for n in image.GetSize()]), 0)
    report = json.loads((out / "samples.json").read_text())
    assert report["settings"]["seed"] == 3 and report["settings"]["steps"] == 6 and report["count"] == 3
    assert report["model"]["id"].startswith("tiny_sampler@") and report["seconds"]["total"] > 0
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in find_pairs(out)] == ["pair_0001", "pair_0002", "pair_0003"]  # registration training data


def test_the_same_seed_gives_the_same_pairs(sampler_file, tmp_path, capsys):
    for name in ("a", "b"):
        code, err = run_cli(["sample", "-n", "2", "-o", str(tmp_path / name), "--model", str(sampler_file), "--steps", "5",
                             "--schedule", "paper", "--seed", "5", "--device", "cpu", "--progress", "none"], capsys)
        assert code == 0, err
    for file in ("pair_0001_fixed.nii.gz", "pair_0002_moving.nii.gz"):
        assert np.array_equal(read(tmp_path / "a" / file), read(tmp_path / "b" / file))


def test_the_command_line_of_a_sampling_job_parses():
    args = build_parser().parse_args(sample_command("out", 4, model="m.safetensors", schedule="paper", steps=64,
                                                    temperature=0.8, batch_size=2, seed=7)[3:])
    assert (args.count, args.schedule, args.steps, args.temperature, args.batch_size, args.seed) == (4, "paper", 64, 0.8, 2, 7)
    assert args.progress == "json" and args.overwrite and not args.probabilities


# ---- bad input: one clear line, a non-zero exit, nothing written ----

def assert_nothing_written(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("case, extra, expected", [
    ("count_zero", ["-n", "0"], "-n must be 1 or more"),
    ("count_negative", ["-n", "-2"], "-n must be 1 or more"),
    ("temperature_zero", ["--temperature", "0"], "--temperature must be above 0"),
    ("temperature_negative", ["--temperature", "-1"], "--temperature must be above 0"),
    ("steps_zero", ["--steps", "0"], "--steps must be 1 or more"),
    ("batch_zero", ["--batch-size", "0"], "--batch-size must be 1 or more"),
    ("registration_model", [], "is a 'registration' model, but a 'sampler' model is needed"),
    ("vqae_model", [], "is a 'vqae' model, but a 'sampler' model is needed"),
    ("under_a_file", [], "does not exist"),
])
def test_bad_input_gets_one_clear_line_and_writes_nothing(case, extra, expected, sampler_file, sampler, tiny_model,
                                                          tmp_path, capsys):
    model = {"registration_model": tiny_model, "vqae_model": tmp_path / "vqae.safetensors"}.get(case, sampler_file)
    if case == "vqae_model":
        save_model(model, sampler.vqae, TINY_VQAE, {"kind": "vqae"})
    out = tmp_path / "out"
    if case == "under_a_file":
        (tmp_path / "a_file").write_text("")
        out = tmp_path / "a_file" / "out"
    args = ["sample", "-n", "2", "-o", str(out), "--steps", "2", "--device", "cpu", "--model", str(model), *extra]
    code, err = run_cli(args, capsys)
    assert_one_clear_line(code, err, expected)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_the_shipped_sampler_writes_a_1mm_pair_without_model_option(tmp_path, capsys):
    """The shipped sampler (the paper's token space, a 2 mm decoder) end to end, with 2 denoiser steps."""
    card = read_metadata(DEFAULTS["sampler"])["card"]
    assert "paper's VQ-autoencoder tokens" in card["token_space"] and card["denoiser"]["steps"] > 0
    code, err = run_cli(["sample", "-n", "1", "--steps", "2", "-o", str(tmp_path / "out"), "--device", "cpu"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "samples.json").read_text())
    assert report["model"]["path"] == str(DEFAULTS["sampler"])
    fixed = read_volume(tmp_path / "out" / "pair_0001_fixed.nii.gz")
    assert fixed.grid.spacing_mm == (1.0, 1.0, 1.0) and fixed.array.shape == (256, 208, 256)
    assert set(np.unique(fixed.array)) <= {0, 1}


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output_location_is_refused(sampler_file, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, err = run_cli(["sample", "-n", "1", "-o", str(locked / "out"), "--model", str(sampler_file)], capsys)
    assert_one_clear_line(code, err, "is not writable")


def test_a_disk_too_full_for_the_pairs_is_refused_before_any_work(sampler_file, tmp_path, capsys):
    code, err = run_cli(["sample", "-n", str(10**12), "-o", str(tmp_path / "out"), "--model", str(sampler_file)], capsys)
    assert_one_clear_line(code, err, "MiB free")
    assert_nothing_written(tmp_path / "out")


# ---- `unleash encode` ----

def test_encode_turns_a_folder_of_pairs_into_token_grids(sampler_file, sampler, tmp_path, capsys):
    pairs = tmp_path / "pairs"
    assert run_cli(["sample", "-n", "2", "-o", str(pairs), "--model", str(sampler_file), "--steps", "3",
                    "--device", "cpu", "--progress", "none"], capsys)[0] == 0
    vqae_file = tmp_path / "vqae.safetensors"
    save_model(vqae_file, sampler.vqae, TINY_VQAE, {"kind": "vqae"})
    for model, out in ((sampler_file, tmp_path / "from_sampler"), (vqae_file, tmp_path / "from_vqae")):
        code, err = run_cli(["encode", str(pairs), "-o", str(out), "--model", str(model), "--device", "cpu",
                             "--progress", "none"], capsys)
        assert code == 0, err
    tokens = np.load(tmp_path / "from_sampler" / "tokens.npz")
    assert tokens["tokens"].shape == (2, *TINY_VQAE.token_shape_ijk) and tokens["tokens"].dtype == np.int16
    assert list(tokens["names"]) == ["pair_0001", "pair_0002"]
    assert np.array_equal(tokens["tokens"], np.load(tmp_path / "from_vqae" / "tokens.npz")["tokens"])
    report = json.loads((tmp_path / "from_sampler" / "encode.json").read_text())
    assert all(0 <= row["reconstruction_dice"]["fixed"] <= 1 for row in report["pairs"])


def test_encode_refuses_a_ct_and_a_model_of_another_kind(sampler_file, tiny_model, tmp_path, capsys):
    folder = tmp_path / "cts"
    folder.mkdir()
    ct = np.random.default_rng(0).integers(-1000, 400, (24, 32, 32)).astype(np.int16)
    for name in ("case_001_1", "case_001_2"):
        sitk.WriteImage(sitk.GetImageFromArray(ct), str(folder / f"{name}.nii.gz"))
    code, err = run_cli(["encode", str(folder), "-o", str(tmp_path / "a"), "--model", str(sampler_file),
                         "--progress", "none"], capsys)
    assert_one_clear_line(code, err, "is not a vessel label map")
    code, err = run_cli(["encode", str(folder), "-o", str(tmp_path / "b"), "--model", str(tiny_model)], capsys)
    assert_one_clear_line(code, err, "is a 'registration' model, but a 'vqae' or 'sampler' model is needed")


def test_encode_places_a_lung250m_pair_exactly_as_the_paper_padded_it():
    path = VESSELS / "train" / "case_032_1.nii.gz"
    if not path.is_file():
        pytest.skip(f"real Lung250M-4B vessel pairs not found under {VESSELS} (set UNLEASH_DATA)")
    volume = read_volume(path)
    occupancy, kept = occupancy_ijk(volume, token_volume_grid(volume.grid, VQAEConfig()), path)
    scan_ijk = torch.from_numpy((volume.array > 0).transpose(2, 1, 0).astype(np.float32))  # nibabel's order
    H, W, D = scan_ijk.shape
    h1, w1, d1 = (352 - H) // 2 - 48, (256 - W) // 2 - 32, (352 - D) // 2 - 48
    h2, w2, d2 = 352 - H - h1 - 96, 256 - W - w1 - 48, 352 - D - d1 - 96
    assert torch.equal(occupancy, F.pad(scan_ijk, (d1, d2, w1, w2, h1, h2)))
    assert 0.9 < kept <= 1
