"""`unleash train`: the shared loop on tiny configs and real pairs and tokens from ../shared.

The runs here are short and deterministic (every step is seeded by (seed, step, rank)), so
"the loss goes down" and "resume reproduces the losses" compare fixed numbers, not luck.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import DATA, REPO, VESSELS

from unleash.checkpoints import DEFAULTS, load_model, write_safetensors
from unleash.cli import main
from unleash.datasets import find_pairs
from unleash.jobs import Progress
from unleash.models.vqae import VQAEConfig
from unleash.train.data import Source
from unleash.train.state import TrainingState, load_state, save_state
from unleash.train.vqae import VQAETask, VQAETrainer, cldice_loss, pair_on_token_grid, soft_skeleton

TINY_REGISTRATION = {"model": {"shape_xyz": [81, 57, 81], "spacing_mm": 4.0, "lattice_mm": 4.0, "channels": [4, 8],
                               "squaring_steps": 4},
                     "training": {"warmup": 2, "learning_rate": 0.003, "validate_every": 8, "checkpoint_every": 8},
                     "task": {"rotation_deg": 0, "scaling": 0, "translation_mm": 4}}
# 64 x 52 x 64 voxels of 4 mm (the paper's box at a quarter of the resolution) -> 16 x 13 x 16 tokens
TINY_VQAE = {"model": {"channels": [4, 8], "strides": [2, 2], "codebook_size": 1024, "volume_shape_ijk": [64, 52, 64],
                       "spacing_mm": 4.0},
             "training": {"warmup": 2, "learning_rate": 0.003, "validate_every": 4, "checkpoint_every": 4},
             "task": {"patch_shape_ijk": [32, 32, 32]}}
TINY_DENOISER = {"model": {"layers": 2, "width": 32, "heads": 2, "feed_forward": 64},
                 "training": {"warmup": 2, "learning_rate": 0.003, "validate_every": 5, "checkpoint_every": 3, "batch_size": 1},
                 "task": {"held_out_grids": 2, "validation_mask_shares": [0.5]}}
TOKENS = DATA / "seed_tokens" / "lung250m4b_train_tokens.npz"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def train_pairs(tmp_path_factory) -> Path:
    """Two real training pairs, linked into a folder of their own."""
    source = VESSELS / "train"
    if not (source / "case_032_1.nii.gz").is_file():
        pytest.skip(f"real Lung250M-4B training pairs not found under {source} (set UNLEASH_DATA)")
    folder = tmp_path_factory.mktemp("pairs") / "train"
    folder.mkdir()
    for case in ("032", "033"):
        for scan in ("1", "2"):
            (folder / f"case_{case}_{scan}.nii.gz").symlink_to(source / f"case_{case}_{scan}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def tokens() -> Path:
    if not TOKENS.is_file():
        pytest.skip(f"the paper's token file {TOKENS} is absent (set UNLEASH_DATA)")
    return TOKENS


def write_config(tmp_path: Path, values: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(values))
    return path


def losses(run: Path, column: str = "loss") -> dict[int, float]:
    with open(run / "metrics.csv", newline="") as handle:
        return {int(row["step"]): float(row[column]) for row in csv.DictReader(handle) if row[column]}


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unleash", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def test_registration_loss_goes_down_and_the_model_file_registers(train_pairs, tmp_path, capsys):
    config = write_config(tmp_path, TINY_REGISTRATION)
    code = main(["train", "registration", "--data", f"{train_pairs}:1", "--out", str(tmp_path / "run"),
                 "--config", str(config), "--iterations", "16", "--progress", "none"])
    assert code == 0, capsys.readouterr().err
    loss = losses(tmp_path / "run")
    assert sorted(loss) == list(range(1, 17))
    assert np.mean([loss[s] for s in (13, 14, 15, 16)]) < 0.8 * np.mean([loss[s] for s in (1, 2, 3, 4)])
    network, config_read, card = load_model(tmp_path / "run" / "model.safetensors", "registration")
    assert config_read.channels == [4, 8] and card["steps"] == 16
    assert card["trained_on"] == ["case_032", "case_033"] and card["training"]["iterations"] == 16
    assert (tmp_path / "run" / "previews" / "step_000016.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["task"]["translation_mm"] == 4 and saved["training"]["learning_rate"] == 0.003


def test_vqae_validates_reconstruction_dice_and_its_loss_goes_down(train_pairs, tmp_path, capsys):
    config = write_config(tmp_path, TINY_VQAE)
    code = main(["train", "vqae", "--data", str(train_pairs), "--val", str(train_pairs), "--out", str(tmp_path / "run"),
                 "--config", str(config), "--iterations", "8", "--progress", "json"])
    assert code == 0, capsys.readouterr().err
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    validations = [e for e in events if e["event"] == "validation"]
    assert [e["step"] for e in validations] == [4, 8]
    assert all(0 <= e["dice"] <= 1 and e["codes_used"] >= 1 for e in validations)
    result = events[-1]
    assert result["event"] == "result" and Path(result["best_model"]).is_file()
    loss = losses(tmp_path / "run")
    assert loss[8] < loss[1]
    assert load_model(result["model"], "vqae")[1].codebook_size == 1024


def test_stop_with_sigterm_then_resume_reproduces_the_uninterrupted_losses(tokens, tmp_path):
    """The denoiser has dropout, so this also checks that a resumed step draws the same randomness."""
    config = write_config(tmp_path, TINY_DENOISER)
    common = ["--config", str(config), "--iterations", "10", "--progress", "json", "--device", "cpu"]
    whole = run_cli(["train", "denoiser", "--data", str(tokens), "--out", str(tmp_path / "whole"), *common])
    assert whole.returncode == 0, whole.stderr

    command = [sys.executable, "-m", "unleash", "train", "denoiser", "--data", str(tokens),
               "--out", str(tmp_path / "cut"), *common]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    lines = []
    for line in job.stdout:
        lines.append(line)
        if json.loads(line).get("step") == 4 and json.loads(line)["event"] == "progress":
            job.send_signal(signal.SIGTERM)
    job.wait(timeout=120)
    assert job.returncode == 0, job.stderr.read()
    events = [json.loads(line) for line in lines]  # every stdout line is one JSON event
    stopped = events[-1]
    assert stopped["event"] == "stopped" and stopped["reason"] == "SIGTERM" and 4 <= stopped["step"] < 10
    assert load_state(tmp_path / "cut" / "checkpoints" / "last.safetensors", "denoiser").step == stopped["step"]
    assert not (tmp_path / "cut" / "model.safetensors").exists()

    resumed = run_cli(["train", "denoiser", "--resume", str(tmp_path / "cut"), "--progress", "json"])
    assert resumed.returncode == 0, resumed.stderr
    assert all(json.loads(line)["event"] for line in resumed.stdout.splitlines())
    assert json.loads(resumed.stdout.splitlines()[-1])["step"] == 10
    expected, found = losses(tmp_path / "whole"), losses(tmp_path / "cut")
    assert sorted(found) == list(range(1, 11))
    np.testing.assert_allclose([found[s] for s in range(1, 11)], [expected[s] for s in range(1, 11)], rtol=1e-5)
    assert losses(tmp_path / "cut", "nll") == losses(tmp_path / "whole", "nll")  # validated at steps 5 and 10


def test_two_gloo_processes_equal_one_process_on_the_same_global_batch(train_pairs, tmp_path):
    config = write_config(tmp_path, {**TINY_VQAE, "training": {**TINY_VQAE["training"], "validate_every": 0}})
    common = ["train", "vqae", "--data", str(train_pairs), "--config", str(config), "--iterations", "4",
              "--batch-size", "2", "--progress", "none", "--device", "cpu"]
    one = run_cli([*common, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    two = subprocess.run([*torchrun, "-m", "unleash", *common, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-4)
    # The trained networks compute the same reconstruction. (Their weights are compared through what
    # they compute: a convolution bias in front of an instance norm has a gradient of zero up to
    # rounding, which Adam's normalised step turns into arbitrary values that change no output.)
    network_one, config, _ = load_model(tmp_path / "one" / "model.safetensors", "vqae")
    network_two = load_model(tmp_path / "two" / "model.safetensors", "vqae")[0]
    pair = pair_on_token_grid(find_pairs(train_pairs)[0], config)[None].float()
    with torch.no_grad():
        torch.testing.assert_close(network_two.decode(network_two.encode(pair)), network_one.decode(network_one.encode(pair)),
                                   rtol=1e-3, atol=1e-4)


def test_denoiser_with_a_vqae_becomes_a_sampler_model(tokens, train_pairs, tmp_path, capsys):
    vqae_config = write_config(tmp_path, {**TINY_VQAE, "training": {"validate_every": 0}}, "vqae.json")
    assert main(["train", "vqae", "--data", str(train_pairs), "--out", str(tmp_path / "vqae"), "--config", str(vqae_config),
                 "--iterations", "1", "--progress", "none"]) == 0
    config = write_config(tmp_path, TINY_DENOISER)
    assert main(["train", "denoiser", "--data", str(tokens), "--out", str(tmp_path / "run"), "--config", str(config),
                 "--iterations", "2", "--vqae", str(tmp_path / "vqae" / "model.safetensors"), "--progress", "none"]) == 0
    sampler, sampler_config, card = load_model(tmp_path / "run" / "model.safetensors", "sampler")
    assert sampler_config.vqae.channels == [4, 8] and sampler_config.denoiser.width == 32
    assert card["kind"] == "sampler" and card["steps"] == 2


def test_denoiser_with_a_sampler_file_keeps_its_refiner(tokens, tmp_path, capsys):
    from unleash.checkpoints import save_model
    from unleash.models.denoiser import DenoiserConfig
    from unleash.models.refiner import RefinerConfig
    from unleash.models.sampler import Sampler, SamplerConfig

    torch.manual_seed(0)
    given = SamplerConfig(vqae=VQAEConfig(**{**TINY_VQAE["model"], "spacing_mm": 2.0}),
                          denoiser=DenoiserConfig(**TINY_DENOISER["model"]), refiner=RefinerConfig(width=4, layers=2))
    network = Sampler(given)
    torch.nn.init.normal_(network.refiner.head.weight)
    save_model(tmp_path / "given.safetensors", network, given, {"kind": "sampler"})
    assert main(["train", "denoiser", "--data", str(tokens), "--out", str(tmp_path / "run"),
                 "--config", str(write_config(tmp_path, TINY_DENOISER)), "--iterations", "1",
                 "--vqae", str(tmp_path / "given.safetensors"), "--progress", "none"]) == 0
    sampler, config, _ = load_model(tmp_path / "run" / "model.safetensors", "sampler")
    assert config.refiner == given.refiner
    torch.testing.assert_close(sampler.refiner.state_dict(), network.refiner.state_dict())


def test_a_decoder_for_given_tokens_meets_the_asked_share_of_drawn_codes(train_pairs, tokens, tmp_path, capsys):
    noisy = {**TINY_VQAE, "task": {**TINY_VQAE["task"], "token_noise": 0.3}}
    assert main(["train", "vqae", "--data", str(train_pairs), "--tokens", str(tokens), "--out", str(tmp_path / "run"),
                 "--config", str(write_config(tmp_path, noisy)), "--iterations", "2", "--progress", "none"]) == 0
    _, config, card = load_model(tmp_path / "run" / "model.safetensors", "vqae")
    assert not config.encoder and card["trained_on"] == ["case_032", "case_033"]

    settings = VQAETask(**noisy["task"], token_file=str(tokens))
    trainer = VQAETrainer(VQAEConfig(**{**TINY_VQAE["model"], "encoder": False}), settings, [Source(train_pairs)], [],
                          torch.device("cpu"), Progress("none"))
    grid = trainer.tokens["case_032"][None]  # (1, 16, 13, 16)
    noisy_grid = trainer._with_noise(grid, np.random.default_rng(0))
    replaced = (noisy_grid != grid).float().mean().item()
    assert 0.2 < replaced <= 0.3  # a drawn code may equal the one it replaces
    used = set(torch.cat([t.flatten() for t in trainer.tokens.values()]).tolist())
    assert set(noisy_grid.flatten().tolist()) <= used

    without_tokens = write_config(tmp_path, noisy, "without_tokens.json")  # token noise, but no --tokens
    assert "task.token_noise is a share" in bad(["vqae", "--data", str(train_pairs), "--out", str(tmp_path / "plain"),
                                                 "--config", str(without_tokens)], capsys)


def test_a_crashed_checkpoint_write_leaves_the_last_good_one(tmp_path):
    path = tmp_path / "last.safetensors"
    good = TrainingState(7, {"w": torch.ones(3)}, {"state": {0: {"step": torch.tensor(7.0)}}, "param_groups": [{"lr": 0.1,
                         "betas": (0.9, 0.999), "params": [0]}]}, None, {"metric": "nll", "value": 2.5, "step": 5})
    save_state(path, "denoiser", good)
    with pytest.raises(TypeError):  # safetensors takes string metadata only: this write fails half-way
        write_safetensors(path, {"w": torch.ones(3)}, {"format": 1234})
    back = load_state(path, "denoiser")
    assert back.step == 7 and back.best["value"] == 2.5
    assert back.optimiser["param_groups"][0]["betas"] == (0.9, 0.999) and 0 in back.optimiser["state"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]  # no temporary file left


def bad(args: list[str], capsys) -> str:
    """Runs `unleash train ...` in this process; returns its one error line (and checks it is one)."""
    assert main(["train", *args, "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unleash: error: ") and "\n" not in err, err
    return err


def test_bad_inputs_get_one_line_and_leave_the_run_folder_untouched(train_pairs, tokens, tmp_path, capsys):
    config = write_config(tmp_path, TINY_REGISTRATION)
    out = tmp_path / "run"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image pairs found" in bad(["registration", "--data", str(empty), "--out", str(out)], capsys)
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(train_pairs / "case_032_1.nii.gz", half / "case_032_1.nii.gz")
    assert "moving scan case_032_2.nii.gz is missing" in bad(["registration", "--data", str(half), "--out", str(out)], capsys)
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    shutil.copy(train_pairs / "case_032_1.nii.gz", mismatched / "case_032_1.nii.gz")
    moving = sitk.ReadImage(str(train_pairs / "case_032_2.nii.gz"))
    sitk.WriteImage(moving[:, :, : moving.GetSize()[2] - 10], str(mismatched / "case_032_2.nii.gz"))
    assert "training pairs must share one grid" in bad(["registration", "--data", str(mismatched), "--out", str(out),
                                                        "--config", str(config)], capsys)
    unknown = write_config(tmp_path, {"training": {"iterations": 5, "learning_rat": 0.1}}, "unknown.json")
    assert "unknown training setting(s): learning_rat" in bad(["registration", "--data", str(train_pairs), "--out",
                                                               str(out), "--config", str(unknown)], capsys)
    assert "no such token file" in bad(["denoiser", "--data", str(train_pairs), "--out", str(out)], capsys)
    assert not out.exists()  # nothing above created the run folder
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert "parent does not exist" in bad(["registration", "--data", str(train_pairs), "--out", str(blocked / "run")],
                                          capsys)

    assert main(["train", "denoiser", "--data", str(tokens), "--out", str(out), "--config",
                 str(write_config(tmp_path, TINY_DENOISER, "denoiser.json")), "--iterations", "1", "--progress", "none"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert "is a 'denoiser' run, not a 'vqae' run" in bad(["vqae", "--resume", str(out)], capsys)
    assert "exists and is not empty" in bad(["denoiser", "--data", str(tokens), "--out", str(out)], capsys)
    assert "keeps the settings" in bad(["denoiser", "--resume", str(out), "--lr", "0.1"], capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere, so an unwritable folder cannot be made")
def test_an_unwritable_run_location_is_refused(train_pairs, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "is not writable" in bad(["registration", "--data", str(train_pairs), "--out", str(locked / "run")], capsys)
    finally:
        locked.chmod(0o700)


def test_time_left_of_a_resumed_run_follows_the_pace_of_its_own_steps():
    """A run resumed at step 400 of 1000: 10 steps in 0.2 s leave 590 steps, about 12 s, not the
    0.3 s that counting the checkpoint's 400 steps as done in this process would give."""
    events = io.StringIO()
    progress = Progress("json", stdout=events)
    progress.progress("training", 400, 1000)
    time.sleep(0.2)
    progress.progress("training", 410, 1000)
    first, second = (json.loads(line) for line in events.getvalue().splitlines())
    assert first["eta_s"] is None
    assert 10 < second["eta_s"] < 30


def test_time_left_follows_the_work_done_where_steps_differ_in_cost():
    """The refinement's 1 mm iterations cost several times its coarse ones: 4 % of the work in 0.2 s
    leaves about 4.8 s, not the 0.2 s per step that the step count would give (1.6 s)."""
    events = io.StringIO()
    progress = Progress("json", stdout=events)
    progress.progress("refinement", 1, 10, work=0.01)
    time.sleep(0.2)
    progress.progress("refinement", 2, 10, work=0.05)
    second = json.loads(events.getvalue().splitlines()[1])
    assert second["fraction"] == 0.05 and second["step"] == 2
    assert 3.0 < second["eta_s"] < 9.0


def test_a_run_started_from_a_model_file_begins_with_its_weights_and_config(tokens, tmp_path, capsys):
    """Fine-tuning: --init takes the file's model config and weights; a step at a vanishing learning
    rate leaves them as they were, where a fresh start has other (random) weights."""
    config = write_config(tmp_path, TINY_DENOISER)
    assert main(["train", "denoiser", "--data", str(tokens), "--out", str(tmp_path / "first"), "--config", str(config),
                 "--iterations", "3", "--progress", "none"]) == 0
    first = tmp_path / "first" / "model.safetensors"
    settings = write_config(tmp_path, {key: TINY_DENOISER[key] for key in ("training", "task")}, "settings.json")
    for name, init in (("tuned", ["--init", str(first)]), ("fresh", [])):
        assert main(["train", "denoiser", "--data", str(tokens), "--out", str(tmp_path / name), "--config",
                     str(settings if init else config), *init, "--iterations", "1", "--lr", "1e-12", "--seed", "5",
                     "--progress", "none"]) == 0
    start = load_model(first, "denoiser")[0].state_dict()
    tuned, tuned_config, card = load_model(tmp_path / "tuned" / "model.safetensors", "denoiser")
    fresh = load_model(tmp_path / "fresh" / "model.safetensors", "denoiser")[0].state_dict()
    assert tuned_config.width == 32 and card["init"] == str(first.resolve())
    assert all(torch.allclose(tuned.state_dict()[key], start[key], atol=1e-6) for key in start)
    assert not all(torch.allclose(fresh[key], start[key], atol=1e-6) for key in start)
    capsys.readouterr()
    assert "is a 'denoiser' model" in bad(["registration", "--data", str(tokens), "--init", str(first),
                                          "--out", str(tmp_path / "wrong")], capsys)
    assert "--init fixes the model" in bad(["denoiser", "--data", str(tokens), "--init", str(first), "--config", str(config),
                                            "--out", str(tmp_path / "both")], capsys)
    assert "drop --init" in bad(["denoiser", "--resume", str(tmp_path / "tuned"), "--init", str(first)], capsys)


def tube_map(radius_vox: float, shape=(1, 40, 24, 24)) -> torch.Tensor:
    """A binary straight tube (N, I, J, K) along I, centred in J and K."""
    j, k = torch.meshgrid(torch.arange(shape[2]), torch.arange(shape[3]), indexing="ij")
    section = ((j - shape[2] // 2) ** 2 + (k - shape[3] // 2) ** 2 <= radius_vox ** 2).float()
    tube = section.expand(shape).clone()
    tube[:, :4] = tube[:, -4:] = 0
    return tube


def test_the_soft_skeleton_of_a_tube_lies_on_its_axis():
    tube = tube_map(4)
    skeleton = soft_skeleton(tube)
    assert (skeleton[0, 8:32, 12, 12] == 1).all()  # the axis, all along the tube
    assert skeleton[0, 8:32].sum() < 0.25 * tube[0, 8:32].sum()  # and a thin line: a few voxels per section


def test_cldice_charges_a_thickened_or_broken_drawing_of_a_tube():
    target = tube_map(2)
    broken = target.clone()
    broken[:, 18:22] = 0
    exact = cldice_loss(target, target).item()
    assert exact < 0.02
    assert cldice_loss(tube_map(5), target).item() > exact + 0.1
    assert cldice_loss(broken, target).item() > exact + 0.02


def test_a_shipped_decoder_is_fine_tuned_with_the_cldice_term(train_pairs, tokens, tmp_path, capsys):
    if not DEFAULTS["sampler"].is_file():
        pytest.skip("the shipped sampler model file is missing from this installation")
    settings = {"training": {"warmup": 1, "validate_every": 0, "checkpoint_every": 2},
                "task": {"patch_shape_ijk": [32, 32, 32], "cldice_weight": 0.5}}
    assert main(["train", "vqae", "--init", str(DEFAULTS["sampler"]), "--data", str(train_pairs), "--tokens", str(tokens),
                 "--out", str(tmp_path / "run"), "--config", str(write_config(tmp_path, settings)), "--iterations", "2",
                 "--progress", "none"]) == 0, capsys.readouterr().err
    assert all(0 < value < 0.5 for value in losses(tmp_path / "run", "cldice_loss").values())
    _, config, _ = load_model(tmp_path / "run" / "model.safetensors", "vqae")
    assert config.spacing_mm == load_model(None, "sampler")[1].vqae.spacing_mm and not config.encoder
