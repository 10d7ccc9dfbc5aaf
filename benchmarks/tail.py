"""Where the large landmark errors of a refinement lie, per landmark of the val pairs: the error, the
initial displacement, the distance to the nearest vessel and to the vessel envelope in the fixed scan,
the residual along the initial displacement (negative: motion under-captured), its agreement with the
residuals of the five nearest landmarks (a smooth miss, or an isolated mismatch), and whether the
mapped landmark ends nearer the other tree (labels 1 and 2) than the true moving landmark does.

    .venv/bin/python benchmarks/tail.py --cases 121,119,118,055 --json /tmp/tail.json
    .venv/bin/python benchmarks/tail.py --cases 121,119 --config '{"diffusion": [0.1, 0.1, 0.1, 1.0]}'

Compute only, on the work grid (as benchmarks/refinement.py); `--config` overrides RefineConfig fields.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.refinement import refine_config  # noqa: E402
from unleash import fields  # noqa: E402
from unleash.checkpoints import load_model  # noqa: E402
from unleash.datasets import read_landmarks  # noqa: E402
from unleash.geometry import Volume, read_volume  # noqa: E402
from unleash.models.registration import TwoStepRegistration  # noqa: E402
from unleash.optimise import RefineConfig  # noqa: E402
from unleash.register import prepare_pair, register_prepared  # noqa: E402
from unleash.transforms import displacement_at  # noqa: E402

DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data")) / "lung250m4b_vessels"
LARGE_MM = 4.0   # a landmark error above this is the tail
FAR_MM = 5.0     # a landmark this far from any segmented vessel lies where the penalty decides the field
NEIGHBOURS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="121,119,118,055")
    parser.add_argument("--config", default="{}", help="JSON RefineConfig fields to override")
    parser.add_argument("--json", help="write the per-landmark table here")
    args = parser.parse_args()
    _, model_config, _ = load_model(None, "registration")
    identity = TwoStepRegistration(model_config).eval()  # zero velocity heads: instance optimisation alone
    config = refine_config(RefineConfig(), json.loads(args.config))
    rows = {}
    for case in args.cases.split(","):
        rows[case] = landmarks_of(case, model_config, identity, config)
        r = {key: np.asarray(value) for key, value in rows[case].items()}
        print(f"{case}: TRE {r['error_mm'].mean():5.2f} mm, {int((r['error_mm'] > LARGE_MM).sum())} of "
              f"{len(r['error_mm'])} above {LARGE_MM:g} mm, folding {r['folding_pct']:.4f} %, ICE {r['ice_mm']:.3f} mm, "
              f"{r['seconds']:.0f} s", flush=True)
    summarise(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": json.loads(args.config), "pairs": rows}) + "\n")


def landmarks_of(case: str, model_config, identity, config: RefineConfig) -> dict:
    fixed = read_volume(DATA / "val" / f"case_{case}_1.nii.gz")
    moving = read_volume(DATA / "val" / f"case_{case}_2.nii.gz")
    pair = prepare_pair(fixed, moving, model_config)
    fixed_ijk, moving_ijk = read_landmarks(DATA / "val_landmarks" / f"case_{case}.csv")
    fixed_lps, moving_lps = fixed.grid.index_to_physical(fixed_ijk), moving.grid.index_to_physical(moving_ijk)
    torch.manual_seed(0)  # the shuffled order of the 1 mm level's points, as `unleash register`'s default seed
    start = time.perf_counter()
    result = register_prepared(pair, identity, config, torch.device("cpu"))
    seconds = time.perf_counter() - start
    mapped = fixed_lps + displacement_at(result.forward_mm[0].numpy(), pair.grid, fixed_lps)
    spacing = pair.grid.spacing_mm[0]
    at = np.round(fixed_ijk).astype(int)
    at = (at[:, 2], at[:, 1], at[:, 0])
    return {"error_mm": np.linalg.norm(mapped - moving_lps, axis=1).tolist(),
            "residual_mm": (mapped - moving_lps).tolist(), "initial_mm": (moving_lps - fixed_lps).tolist(),
            "fixed_lps": fixed_lps.tolist(),
            "to_vessel_mm": distance_mm(fixed, fixed.array == 0)[at].tolist(),
            "to_envelope_mm": distance_mm(fixed, pair.fixed_lungs)[at].tolist(),
            "other_tree": np.not_equal(*nearest_labels(moving, [mapped, moving_lps])).tolist(),
            "folding_pct": 100 * float((fields.jacobian_determinant(result.forward_mm, spacing) <= 0).float().mean()),
            "ice_mm": float(fields.inverse_consistency_error_mm(result.forward_mm, result.inverse_mm, spacing).mean()),
            "seconds": seconds}


def distance_mm(volume: Volume, where: np.ndarray) -> np.ndarray:
    """Distance in mm from each voxel of `where` (bool [k, j, i]) to the nearest voxel outside it."""
    return ndimage.distance_transform_edt(where, sampling=np.asarray(volume.grid.spacing_mm)[::-1])


def nearest_labels(labels: Volume, point_sets: list[np.ndarray]) -> list[np.ndarray]:
    """For each set of points (N, 3), the label of the vessel voxel nearest each point of a vessel label map."""
    nearest = ndimage.distance_transform_edt(labels.array == 0, sampling=np.asarray(labels.grid.spacing_mm)[::-1],
                                             return_distances=False, return_indices=True)
    top = np.array(labels.array.shape[::-1]) - 1
    found = []
    for points in point_sets:
        ijk = np.clip(np.round(labels.grid.physical_to_index(points)).astype(int), 0, top)
        found.append(labels.array[tuple(nearest[:, ijk[:, 2], ijk[:, 1], ijk[:, 0]])])
    return found


def summarise(rows: dict) -> None:
    def joined(key):
        return np.concatenate([np.asarray(r[key], dtype=float) for r in rows.values()])

    error, residual, initial = joined("error_mm"), joined("residual_mm"), joined("initial_mm")
    agreement = np.concatenate([neighbour_agreement(np.asarray(r["fixed_lps"]), np.asarray(r["residual_mm"]))
                                for r in rows.values()])
    distance = np.linalg.norm(initial, axis=1)
    tail = error > LARGE_MM
    print(f"\n{len(error)} landmarks: mean TRE {error.mean():.3f} mm, quartiles "
          + "/".join(f"{q:.2f}" for q in np.percentile(error, [25, 50, 75]))
          + f"; {tail.sum()} above {LARGE_MM:g} mm ({100 * tail.mean():.0f} %) carry "
          f"{100 * error[tail].sum() / error.sum():.0f} % of the error")
    measures = {"distance to the nearest vessel, mm": joined("to_vessel_mm"),
                "distance to the vessel envelope, mm": joined("to_envelope_mm"),
                "initial displacement, mm": distance,
                "residual along the initial displacement, mm": (residual * initial).sum(1) / distance,
                f"cosine with the {NEIGHBOURS} nearest landmarks' residual": agreement}
    print(f"{'median':<52} {'tail':>7} {'rest':>7}")
    for name, values in measures.items():
        print(f"{name:<52} {np.median(values[tail]):7.2f} {np.median(values[~tail]):7.2f}")
    other = joined("other_tree").astype(bool)
    print(f"mapped nearer the other tree: tail {100 * other[tail].mean():.0f} %, rest {100 * other[~tail].mean():.0f} %")
    to_vessel = measures["distance to the nearest vessel, mm"]
    for low, high in ((0, 2), (2, FAR_MM), (FAR_MM, 10), (10, np.inf)):
        band = (to_vessel >= low) & (to_vessel < high)
        if band.any():
            print(f"{low:g}-{high:g} mm from a vessel: {band.sum()} landmarks, mean TRE {error[band].mean():.2f} mm")


def neighbour_agreement(points: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """Cosine between each landmark's residual and the mean residual of its nearest landmarks."""
    apart = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(apart, np.inf)
    mean = residual[np.argsort(apart, 1)[:, :NEIGHBOURS]].mean(1)
    return (residual * mean).sum(1) / (np.linalg.norm(residual, axis=1) * np.linalg.norm(mean, axis=1) + 1e-9)


if __name__ == "__main__":
    main()
