"""CT path benchmark: seconds of the vessel extraction that a CT input adds to `unleash register`,
for a clinical-size chest CT (512 x 512 x 400 voxels), printed next to the issue's target.

    .venv/bin/python benchmarks/ct_path.py                      # val cases 002 and 117, fixed scans
    .venv/bin/python benchmarks/ct_path.py --cases 002 --json benchmarks/results/ct_path_cpu.json
    .venv/bin/python benchmarks/ct_path.py --cases 002 --register   # also `unleash register` on CTs vs masks

No real CT ships with the data, so each CT is a phantom built from a real vessel label map: the
map placed in a 512 x 512 x 400 grid of 0.7 x 0.7 x 1.0 mm (a common chest protocol), lungs at
-860 HU where the vessel tree's envelope is, vessels at +40 HU with partial volume from the label
map's trilinear resampling, a soft-tissue body at +40 HU around the lungs, air outside, and
Gaussian noise of 20 HU. It times what the CT costs on top of a label map: the lung mask and the
vesselness (vessels.vessels_from_input with kind 'ct'), and how well the extracted vessels
overlap the label map they were drawn from (Dice on the CT grid). With --register it also writes
both scans of each case as phantom CTs and runs `unleash register` on the CTs and on the label maps
(each its own process, as the Slicer module runs it): the CT path's extra wall time and its TRE.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from registration import run_pair  # noqa: E402  (benchmarks/registration.py)

from unleash.datasets import LANDMARK_COLUMNS, find_pairs, read_landmarks  # noqa: E402
from unleash.geometry import Grid, Volume, read_volume  # noqa: E402
from unleash.jobs import register_command  # noqa: E402
from unleash.vessels import lung_mask, lung_mask_from_vessels, vessel_map  # noqa: E402

DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data"))
TARGET_S = 8.0  # the registration issue: the CT path's extra time for a 512 x 512 x 400 scan
BEFORE_S = (10.0, 16.0)  # the issue: what vessel extraction added to a registration before

CT_SIZE_IJK = (512, 512, 400)
CT_SPACING_MM = (0.7, 0.7, 1.0)
LUNG_HU, VESSEL_HU, BODY_HU, AIR_HU = -860.0, 40.0, 40.0, -1000.0
BODY_MARGIN_MM = 25.0
NOISE_HU = 20.0


def phantom_ct(vessels: Volume, seed: int = 0) -> tuple[Volume, np.ndarray]:
    """(CT phantom int16 on a 512 x 512 x 400 grid centred on the label map, its true vessel mask)."""
    label = sitk.GetImageFromArray((vessels.array > 0).astype(np.float32))
    label.SetSpacing(vessels.grid.spacing_mm)
    label.SetOrigin(vessels.grid.origin_lps)
    label.SetDirection(vessels.grid.direction)
    source_centre = label.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in label.GetSize()])
    extent = np.asarray(CT_SIZE_IJK[:]) * np.asarray(CT_SPACING_MM)
    direction = np.asarray(vessels.grid.direction).reshape(3, 3)
    origin = np.asarray(source_centre) - direction @ ((extent - np.asarray(CT_SPACING_MM)) / 2)
    grid = Grid(CT_SIZE_IJK, CT_SPACING_MM, tuple(float(o) for o in origin), vessels.grid.direction)

    def on_ct_grid(image: sitk.Image) -> np.ndarray:
        out = sitk.Resample(image, [int(s) for s in grid.size], sitk.Transform(), sitk.sitkLinear,
                            [float(o) for o in grid.origin_lps], [float(s) for s in grid.spacing_mm],
                            [float(d) for d in grid.direction], 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out)

    vessel_fraction = on_ct_grid(label)  # [k, j, i], partial volume in 0..1
    lungs_image = sitk.GetImageFromArray(lung_mask_from_vessels(vessels).astype(np.float32))
    lungs_image.CopyInformation(label)
    lungs = on_ct_grid(lungs_image) > 0.5
    body = _body_around(lungs, np.asarray(CT_SPACING_MM)[::-1])
    hu = np.where(body, BODY_HU, AIR_HU).astype(np.float32)
    hu[lungs] = LUNG_HU
    hu += lungs * vessel_fraction * (VESSEL_HU - LUNG_HU)
    hu += np.random.default_rng(seed).normal(0.0, NOISE_HU, hu.shape).astype(np.float32)
    return Volume(np.clip(hu, -1024, 3071).astype(np.int16), grid), (vessel_fraction > 0.5) & lungs


def _body_around(lungs: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """An elliptic cylinder along the array's first axis that holds every lung voxel, with a margin:
    lungs that reached the air outside would be taken for outside air."""
    footprint = lungs.any(axis=0)
    j, i = np.nonzero(footprint)
    centre_j, centre_i = (j.min() + j.max()) / 2, (i.min() + i.max()) / 2
    half_j, half_i = (j.max() - j.min()) / 2 + 1, (i.max() - i.min()) / 2 + 1
    reach = np.sqrt(((j - centre_j) / half_j) ** 2 + ((i - centre_i) / half_i) ** 2).max()  # >= 1 at box corners
    margin = BODY_MARGIN_MM / spacing_zyx
    half_j, half_i = half_j * reach + margin[1], half_i * reach + margin[2]
    jj, ii = np.ogrid[:lungs.shape[1], :lungs.shape[2]]
    section = ((jj - centre_j) / half_j) ** 2 + ((ii - centre_i) / half_i) ** 2 <= 1
    return np.broadcast_to(section, lungs.shape)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def measure(case: str) -> dict:
    path = DATA / "lung250m4b_vessels" / "val" / f"case_{case}_1.nii.gz"
    ct, truth = phantom_ct(read_volume(path))
    start = time.perf_counter()
    lungs = lung_mask(ct)
    lungs_s = time.perf_counter() - start
    vessels = vessel_map(ct, lungs)
    total_s = time.perf_counter() - start
    return {"case": case, "size_ijk": list(ct.grid.size), "spacing_mm": list(ct.grid.spacing_mm),
            "lung_mask_s": round(lungs_s, 2), "vesselness_s": round(total_s - lungs_s, 2),
            "extraction_s": round(total_s, 2), "vessel_dice": round(dice(vessels.array > 0, truth), 3)}


def register_both(case: str, scratch: Path) -> dict:
    """`unleash register` on the label maps and on phantom CTs of both scans: wall seconds and TRE."""
    files = next(f for f in find_pairs(DATA / "lung250m4b_vessels" / "val") if f.name.endswith(case))
    cts, landmarks_ijk = [], []
    for scan, ijk in zip((files.fixed, files.moving), read_landmarks(files.landmarks)):
        label_map = read_volume(scan)
        ct, _ = phantom_ct(label_map)
        path = scratch / f"ct_{Path(scan).name}"
        sitk.WriteImage(_sitk(ct), str(path), useCompression=True)
        cts.append(str(path))
        # landmarks are voxel indices: the same points in the CT's voxels
        landmarks_ijk.append(ct.grid.physical_to_index(label_map.grid.index_to_physical(ijk)))
    ct_landmarks = scratch / f"{files.name}_ct_landmarks.csv"
    np.savetxt(ct_landmarks, np.hstack(landmarks_ijk), fmt="%.3f", delimiter=",", header=",".join(LANDMARK_COLUMNS),
               comments="")
    row = {}
    for kind, (fixed, moving), landmarks in (("vessels", (files.fixed, files.moving), files.landmarks),
                                             ("ct", cts, ct_landmarks)):
        command = register_command(fixed, moving, str(scratch / kind), landmarks=landmarks, device="cpu",
                                   python=sys.executable)
        report, wall, _ = run_pair(command)
        row[kind] = {"wall_s": round(wall, 1), "tre_before_mm": round(report["tre_before_mm"]["mean"], 3),
                     "tre_mm": round(report["tre_after_mm"]["mean"], 3),
                     "stages_s": report["seconds"]}
    row["ct_extra_s"] = round(row["ct"]["wall_s"] - row["vessels"]["wall_s"], 1)
    row["ct_extra_prepare_s"] = round(row["ct"]["stages_s"]["prepare"] - row["vessels"]["stages_s"]["prepare"], 1)
    return row


def _sitk(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(volume.grid.spacing_mm)
    image.SetOrigin(volume.grid.origin_lps)
    image.SetDirection(volume.grid.direction)
    return image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="002,117", help="val cases, comma-separated (fixed scans)")
    parser.add_argument("--register", action="store_true", help="also register CTs and label maps of each case")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    if not (DATA / "lung250m4b_vessels" / "val").is_dir():
        print(f"ct_path: no val data under {DATA} (set UNLEASH_DATA)", file=sys.stderr)
        return 2
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    rows = [measure(case) for case in cases]
    print(f"{'case':6} {'lung mask':>10} {'vesselness':>11} {'extraction':>11} {'target':>7} {'before':>8} {'vessel Dice':>12}")
    for row in rows:
        print(f"{row['case']:6} {row['lung_mask_s']:>9.2f}s {row['vesselness_s']:>10.2f}s "
              f"{row['extraction_s']:>10.2f}s {TARGET_S:>6.1f}s {BEFORE_S[0]:>3.0f}-{BEFORE_S[1]:.0f}s "
              f"{row['vessel_dice']:>12.3f}")
    print(f"load average {os.getloadavg()[0]:.1f}; CT {CT_SIZE_IJK} voxels at {CT_SPACING_MM} mm")
    if args.register:
        with tempfile.TemporaryDirectory() as scratch:
            for row in rows:
                row["register"] = register_both(row["case"], Path(scratch))
                r = row["register"]
                print(f"{row['case']}: unleash register on label maps {r['vessels']['wall_s']:.1f} s, TRE "
                      f"{r['vessels']['tre_mm']:.2f} mm; on phantom CTs {r['ct']['wall_s']:.1f} s, TRE "
                      f"{r['ct']['tre_mm']:.2f} mm; the CT path adds {r['ct_extra_prepare_s']:.1f} s of preparing "
                      f"(the extraction of two scans) and {r['ct_extra_s']:.1f} s in all (with the larger output "
                      f"grids; load average {os.getloadavg()[0]:.1f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"target_s": TARGET_S, "before_s": BEFORE_S,
                                         "load_average": os.getloadavg()[0], "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
