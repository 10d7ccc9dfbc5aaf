"""The landmarks on the vessels (within 2 mm of one in the fixed scan): what their error is made of.

Reads the per-landmark JSON of benchmarks/tail.py and asks of each such landmark:
- is the residual along the vessel (sliding along a tube, which the occupancy cannot see) or across it?
  The vessel's axis at the true moving landmark: the Hessian eigenvector of least curvature of the moving
  mask blurred by 1.5 mm. Isotropic errors put a third of the squared error along it;
- does the mapped landmark lie on a moving vessel (a fit that found vessels) or off them (a fit that failed)?
- how does the error go with the vessel's calibre (the largest distance to the vessel wall within 2 mm)?

    .venv/bin/python benchmarks/tail.py --json /tmp/tail.json
    .venv/bin/python benchmarks/on_vessels.py /tmp/tail.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.tail import DATA, distance_mm  # noqa: E402
from unleash.geometry import read_volume  # noqa: E402

ON_VESSEL_MM = 2.0
AXIS_BLUR_MM = 1.5
CALIBRE_BINS_MM = (0.0, 1.5, 2.5, 3.5, 5.0, np.inf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tail_json", help="the --json output of benchmarks/tail.py")
    rows = json.loads(Path(parser.parse_args().tail_json).read_text())["pairs"]
    found = np.concatenate([on_vessel_landmarks(case, row) for case, row in rows.items()])  # (n, 5)
    error, along, across, off_vessel_mm, calibre_mm = found.T
    print(f"{len(found)} landmarks within {ON_VESSEL_MM:g} mm of a vessel: mean TRE {error.mean():.2f} mm")
    print(f"residual along the vessel axis: mean {along.mean():.2f} mm, across it {across.mean():.2f} mm; "
          f"share of the squared error along it {(along ** 2).sum() / (error ** 2).sum():.2f} (isotropic: 0.33)")
    print(f"mapped landmark on a moving vessel (within 2 mm of one): {(off_vessel_mm <= 2).mean():.0%}")
    for low, high in zip(CALIBRE_BINS_MM[:-1], CALIBRE_BINS_MM[1:]):
        chosen = (calibre_mm >= low) & (calibre_mm < high)
        if chosen.any():
            print(f"vessel radius {low:.1f}-{high:.1f} mm: {chosen.sum():4d} landmarks, mean TRE {error[chosen].mean():.2f} mm")


def on_vessel_landmarks(case: str, row: dict) -> np.ndarray:
    """(n, 5): error, |residual along the axis|, |across it|, mapped point's distance to a moving vessel,
    and the fixed vessel's radius, in mm, for the pair's landmarks on a fixed vessel."""
    fixed = read_volume(DATA / "val" / f"case_{case}_1.nii.gz")
    moving = read_volume(DATA / "val" / f"case_{case}_2.nii.gz")
    residual, initial = np.asarray(row["residual_mm"]), np.asarray(row["initial_mm"])
    fixed_lps = np.asarray(row["fixed_lps"])
    true_lps = fixed_lps + initial
    on = np.asarray(row["to_vessel_mm"]) <= ON_VESSEL_MM
    moving_mask, fixed_mask = moving.array > 0, fixed.array > 0
    to_vessel = distance_mm(moving, ~moving_mask)
    radius = ndimage.maximum_filter(distance_mm(fixed, fixed_mask), size=5)  # to the wall, the largest within 2 voxels
    out = []
    for n in np.flatnonzero(on):
        axis = vessel_axis_lps(moving, moving_mask, true_lps[n])
        along = abs(residual[n] @ axis)
        across = np.linalg.norm(residual[n] - (residual[n] @ axis) * axis)
        out.append((np.linalg.norm(residual[n]), along, across, to_vessel[voxel_of(moving, true_lps[n] + residual[n])],
                    radius[voxel_of(fixed, fixed_lps[n])]))
    return np.asarray(out).reshape(-1, 5)


def voxel_of(volume, point_lps: np.ndarray) -> tuple[int, int, int]:
    """The [k, j, i] array index of the voxel holding a point, clipped to the volume."""
    ijk = np.round(volume.grid.physical_to_index(point_lps[None])[0]).astype(int)
    return tuple(np.clip(ijk, 0, np.array(volume.array.shape[::-1]) - 1)[::-1])


def vessel_axis_lps(volume, mask: np.ndarray, point_lps: np.ndarray) -> np.ndarray:
    """Unit direction (LPS) of least curvature of the blurred mask at a point: a tube's axis."""
    centre = np.array(voxel_of(volume, point_lps))
    low, high = np.maximum(centre - 10, 0), np.minimum(centre + 11, mask.shape)
    patch = mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]].astype(np.float32)
    at = tuple(centre - low)
    spacing_kji = np.asarray(volume.grid.spacing_mm)[::-1]
    sigma_vox = AXIS_BLUR_MM / spacing_kji
    hessian = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            order = [0, 0, 0]
            order[a] += 1
            order[b] += 1
            curvature = ndimage.gaussian_filter(patch, sigma_vox, order=order)[at] / (spacing_kji[a] * spacing_kji[b])
            hessian[a, b] = hessian[b, a] = curvature  # per mm^2 along the array axes
    values, vectors = np.linalg.eigh(hessian)
    axis_kji = vectors[:, np.argmin(np.abs(values))]
    axis = np.asarray(volume.grid.direction).reshape(3, 3) @ axis_kji[::-1]
    return axis / np.linalg.norm(axis)


if __name__ == "__main__":
    main()
