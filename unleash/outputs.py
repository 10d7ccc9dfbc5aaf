"""From a registration on the work grid to the files users get, and the numbers in report.json.

Files (names are part of the interface; the Slicer module and users' scripts rely on them):
  displacement.nii.gz          LPS mm over the fixed scan, fixed point x -> x + u(x) in the moving scan
  inverse_displacement.nii.gz  LPS mm over the moving scan, moving point y -> y + v(y) in the fixed scan
  warped_moving.nii.gz         the moving scan resampled onto the fixed grid
  jacobian_determinant.nii.gz  det(I + du/dx) on the fixed grid
  report.json                  timings, device, model, deformation quality, TRE
The two displacement fields lie on the work grid's lattice (its spacing and voxel positions, axis-aligned
in LPS) over the box of the scan they start from (`workgrid.covering`): the registration is that
lattice's field, linearly interpolated, so they are the transform itself at an eighth of a 1 mm scan
grid's voxels, and ITK and Slicer map every point with them as the engine does.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import fields, workgrid
from .datasets import read_landmarks
from .geometry import Grid, Volume, write_image
from .jobspec import REGISTRATION_FILES as FILES
from .register import PreparedPair, Registration
from .transforms import displacement_at, displacement_image, jacobian_determinant, warp_volume


@dataclass
class ScanFields:
    """The registration over the scans: (3, k, j, i) LPS mm fields on their grids (the work lattice over
    the fixed, resp. moving, scan), and J (k, j, i) on the fixed scan's own grid."""

    forward_lps_mm: np.ndarray
    forward_grid: Grid
    inverse_lps_mm: np.ndarray
    inverse_grid: Grid
    jacobian: np.ndarray


def to_scan_grids(pair: PreparedPair, registration: Registration) -> ScanFields:
    """The fields on the work lattice over each scan; J by central differences on that lattice (where the
    transform's derivatives live), linearly interpolated onto the fixed grid that users see it over."""
    forward_grid = workgrid.covering(pair.grid, pair.fixed.grid)
    inverse_grid = workgrid.covering(pair.grid, pair.moving.grid)
    forward = workgrid.field_to_grid(registration.forward_mm, pair.grid, forward_grid)
    inverse = workgrid.field_to_grid(registration.inverse_mm, pair.grid, inverse_grid)
    jacobian = torch.from_numpy(jacobian_determinant(forward, forward_grid))[None, None]
    return ScanFields(forward, forward_grid, inverse, inverse_grid,
                      workgrid.field_to_grid(jacobian, forward_grid, pair.fixed.grid)[0])


def percentiles(errors_mm: np.ndarray) -> dict:
    p25, p50, p75 = np.percentile(errors_mm, [25, 50, 75])
    return {"mean": round(float(errors_mm.mean()), 3), "p25": round(float(p25), 3), "p50": round(float(p50), 3),
            "p75": round(float(p75), 3), "max": round(float(errors_mm.max()), 3), "count": int(errors_mm.size)}


def landmark_errors_mm(pair: PreparedPair, forward_lps_mm: np.ndarray | None, landmarks_csv, field_grid=None) -> np.ndarray:
    """||x_f + u(x_f) - x_m|| per landmark; with no field, the initial misalignment ||x_f - x_m||.
    The field lies on the fixed scan's grid unless `field_grid` says otherwise (e.g. the work grid)."""
    fixed_ijk, moving_ijk = read_landmarks(landmarks_csv, pair.fixed.grid, pair.moving.grid)
    fixed_lps = pair.fixed.grid.index_to_physical(fixed_ijk)
    moving_lps = pair.moving.grid.index_to_physical(moving_ijk)
    if forward_lps_mm is None:
        return np.linalg.norm(fixed_lps - moving_lps, axis=1)
    mapped = fixed_lps + displacement_at(forward_lps_mm, field_grid or pair.fixed.grid, fixed_lps)
    return np.linalg.norm(mapped - moving_lps, axis=1)


def deformation_quality(pair: PreparedPair, registration: Registration, scan: ScanFields) -> dict:
    """Folding over the whole fixed grid, spread of log J and inverse consistency inside the lungs."""
    lungs = pair.fixed_lungs
    jacobian_in_lungs = scan.jacobian[lungs]
    log_j = np.log(np.clip(jacobian_in_lungs, 1e-6, None))
    spacing = pair.grid.spacing_mm[0]
    with torch.no_grad():
        ice = fields.inverse_consistency_error_mm(registration.forward_mm, registration.inverse_mm, spacing)[0]
    # the lungs on the work grid only choose where the error is averaged: plain linear resampling is
    # enough there (a quarter of the supersampled occupancy's points)
    lungs_on_work = workgrid.occupancy_on(pair.grid, Volume(lungs.astype(np.uint8), pair.fixed.grid), supersample=1)[0, 0] > 0.5
    ice_in_lungs = ice[lungs_on_work] if lungs_on_work.any() else ice.flatten()
    return {
        "folding_fraction": float((scan.jacobian <= 0).mean()),
        "folding_fraction_lungs": float((jacobian_in_lungs <= 0).mean()),
        "jacobian_min": round(float(scan.jacobian.min()), 4),
        "jacobian_max": round(float(scan.jacobian.max()), 4),
        "log_jacobian_std_lungs": round(float(log_j.std()), 4),
        "inverse_consistency_error_mm": {"mean": round(float(ice_in_lungs.mean()), 4), "p99": round(float(torch.quantile(
            ice_in_lungs[torch.randperm(ice_in_lungs.numel())[:1_000_000]], 0.99)), 4),
            "max": round(float(ice_in_lungs.max()), 4)},
    }


def write_fields(folder: Path, pair: PreparedPair, scan: ScanFields) -> None:
    """The four images into `folder` (a staging folder that output_folder.atomic_output_dir moves into place),
    made and written two at a time: SimpleITK compresses, resamples and numpy converts without holding the GIL."""
    labels = pair.inputs.startswith("vessels") and pair.inputs.endswith("vessels")
    makers = {
        "warped_moving": lambda: warp_volume(pair.moving, scan.forward_lps_mm, scan.forward_grid, pair.fixed.grid,
                                             labels=labels).to_sitk(),
        "jacobian_determinant": lambda: Volume(_rounded_up(scan.jacobian), pair.fixed.grid).to_sitk(),
        "displacement": lambda: displacement_image(_rounded(scan.forward_lps_mm), scan.forward_grid),
        "inverse_displacement": lambda: displacement_image(_rounded(scan.inverse_lps_mm), scan.inverse_grid),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        for written in [pool.submit(_make_and_write, make, folder / FILES[key]) for key, make in makers.items()]:
            written.result()


def _make_and_write(make, path: Path) -> None:
    write_image(make(), path)


def _rounded(displacement_mm: np.ndarray, step_mm: float = 2.0 ** -10) -> np.ndarray:
    """Displacements to the nearest 1/1024 mm (exact in float32): the low mantissa bits are noise
    to gzip; without them a 1 mm lung field wrote in 4.8 instead of 6.4 s, 132 instead of 212 MB."""
    return np.round(displacement_mm / step_mm) * step_mm


def _rounded_up(jacobian: np.ndarray, step: float = 2.0 ** -12) -> np.ndarray:
    """J up to the next 1/4096 (exact in float32), so J <= 0 (folding) stays J <= 0 and J > 0 stays > 0:
    half the file and the time of the unrounded values on a 1 mm lung scan (38 vs 74 MB)."""
    return np.ceil(jacobian / step) * step


def write_report(folder: Path, report: dict) -> None:
    # strict JSON: every number is checked finite where it arises, so a NaN here is a bug, not a value
    (folder / FILES["report"]).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
