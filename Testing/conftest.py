"""Shared fixtures: the real data folder (skipped with a reason when absent), tiny models, and one real
registration result and sampler output for the Slicer-side tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from unleash.checkpoints import save_model
from unleash.datasets import read_landmarks
from unleash.jobs import Progress
from unleash.models.registration import RegistrationConfig, TwoStepRegistration
from unleash.pipeline import RegisterOptions, register_files

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data"))
VESSELS = DATA / "lung250m4b_vessels"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def val_folder() -> Path:
    folder = VESSELS / "val"
    if not (folder / "case_002_1.nii.gz").is_file():
        pytest.skip(f"real Lung250M-4B vessel pairs not found under {VESSELS} (set UNLEASH_DATA)")
    return folder


# A tiny registration model: a 4 mm work grid over the usual 320 x 224 x 320 mm box and a few
# channels, so that the whole pipeline runs in seconds. Untrained, it predicts the identity
# (the velocity heads start at zero) and all the alignment comes from the refinement.
TINY = RegistrationConfig(shape_xyz=[81, 57, 81], spacing_mm=4.0, lattice_mm=4.0, channels=[4, 8], squaring_steps=4)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny_registration.safetensors"
    save_model(path, TwoStepRegistration(TINY), TINY, {"kind": "registration", "note": "tiny untrained test model"})
    return path


CASE = "case_002"
STRIDE = 2  # every second voxel of the val pair: the same anatomy at 2 mm, for speed


@pytest.fixture(scope="session")
def val_pair(val_folder, tmp_path_factory) -> dict:
    """The val pair at every second voxel, its landmarks in those voxels' indices, and the engine's result."""
    folder = tmp_path_factory.mktemp("val_pair")
    paths = {}
    for role, number in (("fixed", 1), ("moving", 2)):
        image = sitk.ReadImage(str(val_folder / f"{CASE}_{number}.nii.gz"))
        paths[role] = folder / f"{role}.nii.gz"
        sitk.WriteImage(image[::STRIDE, ::STRIDE, ::STRIDE], str(paths[role]))
    fixedIjk, movingIjk = read_landmarks(val_folder.parent / "val_landmarks" / f"{CASE}.csv")
    landmarks = folder / "landmarks.csv"
    np.savetxt(landmarks, np.hstack([fixedIjk, movingIjk]) / STRIDE, delimiter=",", fmt="%.4f",
               header="fixed_i,fixed_j,fixed_k,moving_i,moving_j,moving_k", comments="")
    return {"fixed": paths["fixed"], "moving": paths["moving"], "landmarks": landmarks, "folder": folder}


@pytest.fixture(scope="session")
def engine_result(val_pair, tiny_model) -> dict:
    """`unleash register` of the val pair (tiny model, a few refinement iterations): its report with files."""
    return register_files(val_pair["fixed"], val_pair["moving"], val_pair["folder"] / "result",
                          RegisterOptions(model=str(tiny_model), adapt_iters=10, landmarks=str(val_pair["landmarks"])),
                          Progress("none"))


@pytest.fixture(scope="session")
def sampled(tmp_path_factory) -> dict:
    """Two pairs from the shipped sampler, as the module runs it (a job, JSON events): the `result` event."""
    out = tmp_path_factory.mktemp("samples") / "pairs"
    run = subprocess.run([sys.executable, "-m", "unleash", "sample", "-n", "2", "--steps", "4", "-o", str(out),
                          "--progress", "json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return next(e for e in events if e.get("event") == "result")
