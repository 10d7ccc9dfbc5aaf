"""Shared fixtures: the real data folder (skipped with a reason when absent) and tiny models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from unleash.checkpoints import save_model
from unleash.models.registration import RegistrationConfig, TwoStepRegistration

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
