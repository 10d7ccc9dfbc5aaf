"""The registration engine on a pair with a known answer (the synthetic example) and on itself."""
from __future__ import annotations

import numpy as np
import pytest

from unleash.geometry import write_image
from unleash.jobs import Progress
from unleash.outputs import FILES
from unleash.pipeline import RegisterOptions, register_files
from unleash.synthetic import example_pair, true_tre_mm
from unleash.transforms import displacement_at, read_displacement, read_displacement_on

SMALL = {"spacing_mm": 2.5, "size": (116, 96, 116), "max_displacement_mm": 8.0}


@pytest.fixture(scope="module")
def example_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("example")
    fixed, moving, true_u = example_pair(seed=1, **SMALL)
    write_image(fixed.to_sitk(), folder / "fixed.nii.gz")
    write_image(moving.to_sitk(), folder / "moving.nii.gz")
    return folder, fixed, true_u


@pytest.fixture(scope="module")
def registered(example_files, tiny_model, tmp_path_factory):
    folder, _, _ = example_files
    out = tmp_path_factory.mktemp("registered") / "out"
    report = register_files(folder / "fixed.nii.gz", folder / "moving.nii.gz", out,
                            RegisterOptions(model=str(tiny_model), adapt_iters=60), Progress("none"))
    return out, report


def test_registering_a_scan_against_itself_gives_the_identity(example_files, tiny_model, tmp_path):
    folder, fixed, _ = example_files
    register_files(folder / "fixed.nii.gz", folder / "fixed.nii.gz", tmp_path / "self",
                   RegisterOptions(model=str(tiny_model), adapt_iters=20), Progress("none"))
    u, _ = read_displacement(tmp_path / "self" / FILES["displacement"])
    assert np.abs(u).max() < 1e-3


def test_a_known_deformation_is_recovered_to_within_half_its_size(example_files, registered):
    _, fixed, true_u = example_files
    out, report = registered
    estimated = read_displacement_on(out / FILES["displacement"], fixed.grid)
    vessels = fixed.array > 0
    before = true_tre_mm(np.zeros_like(true_u), true_u, vessels)["mean"]
    after = true_tre_mm(estimated, true_u, vessels)["mean"]
    assert before > 1.5
    assert after < 0.55 * before and after < 1.2
    assert report["folding_fraction"] < 1e-3


def test_refining_the_networks_prediction_recovers_a_known_deformation_too(example_files, registered, tiny_model,
                                                                            tmp_path):
    """`--start network`: the refinement starts from the network's prediction instead of the
    identity (the default with instance optimisation, as `registered` shows)."""
    folder, fixed, true_u = example_files
    report = register_files(folder / "fixed.nii.gz", folder / "moving.nii.gz", tmp_path / "net",
                            RegisterOptions(model=str(tiny_model), adapt_iters=60, start="network"), Progress("none"))
    estimated = read_displacement_on(tmp_path / "net" / FILES["displacement"], fixed.grid)
    vessels = fixed.array > 0
    before = true_tre_mm(np.zeros_like(true_u), true_u, vessels)["mean"]
    assert true_tre_mm(estimated, true_u, vessels)["mean"] < 0.55 * before
    assert report["refinement"]["start"] == "network" and "network" in report["seconds"]
    assert registered[1]["refinement"]["start"] == "identity" and "network" not in registered[1]["seconds"]


def test_written_forward_and_inverse_fields_compose_to_the_identity(example_files, registered):
    _, fixed, _ = example_files
    out, _ = registered
    forward, fixed_grid = read_displacement(out / FILES["displacement"])
    inverse, moving_grid = read_displacement(out / FILES["inverse_displacement"])
    k, j, i = np.nonzero(fixed.array)
    points = fixed_grid.index_to_physical(np.stack([i, j, k], 1).astype(float))
    in_moving = points + displacement_at(forward, fixed_grid, points)
    back = in_moving + displacement_at(inverse, moving_grid, in_moving)
    error_mm = np.linalg.norm(back - points, axis=1)
    assert error_mm.mean() < 0.3 and np.percentile(error_mm, 99) < 1.0


def test_report_has_the_documented_keys(registered):
    _, report = registered
    for key in ("seconds", "device", "model", "folding_fraction", "log_jacobian_std_lungs", "inverse_consistency_error_mm"):
        assert key in report
    assert set(report["seconds"]) >= {"read", "prepare", "refinement", "write", "total"}
