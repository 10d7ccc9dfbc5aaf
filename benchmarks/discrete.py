"""What the discrete correspondence search (unleash/discrete.py) buys, on the same pairs in one process:
work-grid TRE and the compute seconds of each step itself (the last two: the 8-4 mm levels only) for

  coarse         the continuous 32-16 mm levels of the default refinement, from zero
  search         the search alone over its whole window, from zero (the alternative first stage)
  coarse+window  the coarse levels, then the search in a +-8 mm window on the warped pair
  default        the coarse levels, then the default's 8-4 mm levels (the default schedule)
  with window    the coarse levels, the +-8 mm search, then the same 8-4 mm levels

    .venv/bin/python benchmarks/discrete.py --cases 055,056

The whole-window search started refinements (`RefineConfig.search`) are compared by
benchmarks/refinement.py --config '{"search": {}, ...}'.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unleash import discrete, fields, workgrid  # noqa: E402
from unleash.checkpoints import load_model  # noqa: E402
from unleash.datasets import read_landmarks  # noqa: E402
from unleash.geometry import read_volume  # noqa: E402
from unleash.optimise import Occupancy, RefineConfig, refine  # noqa: E402
from unleash.register import prepare_pair  # noqa: E402
from unleash.transforms import displacement_at  # noqa: E402

DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data")) / "lung250m4b_vessels"
DEFAULT = RefineConfig()
COARSE = DEFAULT.levels(slice(0, 2))
FINE = DEFAULT.levels(slice(2, None))
WINDOW = discrete.DiscreteConfig(radius_steps=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="055,056")
    args = parser.parse_args()
    _, config, _ = load_model(None, "registration")
    tre = {}
    for case in args.cases.split(","):
        for name, value in compare(case, config).items():
            tre.setdefault(name, []).append(value)
    print()
    for name, values in tre.items():
        print(f"{name:<14} mean TRE {np.mean([v[0] for v in values]):5.2f} mm   mean {np.mean([v[1] for v in values]):5.1f} s")


def compare(case: str, config) -> dict:
    """name -> (work-grid mean TRE mm, seconds) of each variant on one val pair."""
    torch.manual_seed(0)
    fixed = read_volume(DATA / "val" / f"case_{case}_1.nii.gz")
    moving = read_volume(DATA / "val" / f"case_{case}_2.nii.gz")
    pair = prepare_pair(fixed, moving, config)
    fixed_ijk, moving_ijk = read_landmarks(DATA / "val_landmarks" / f"case_{case}.csv")
    fixed_lps, moving_lps = fixed.grid.index_to_physical(fixed_ijk), moving.grid.index_to_physical(moving_ijk)
    a, b, spacing = pair.fixed_occupancy, pair.moving_occupancy, pair.grid.spacing_mm[0]
    fine_grid = workgrid.finer(pair.grid, round(spacing / DEFAULT.finest_image_mm))
    images = [Occupancy(a, b, spacing), Occupancy(workgrid.occupancy_on(fine_grid, pair.fixed_vessels, supersample=1),
                                                  workgrid.occupancy_on(fine_grid, pair.moving_vessels, supersample=1),
                                                  fine_grid.spacing_mm[0])]

    def displacement(velocity):  # (1, 3, D, H, W) mm on the work grid
        lattice_mm = (a.shape[-1] - 1) * spacing / (velocity.shape[-1] - 1)
        return fields.resize(fields.exp(velocity, lattice_mm, DEFAULT.squaring_steps), a.shape[2:])

    def error(velocity) -> float:
        u = displacement(velocity)[0].numpy()
        return float(np.linalg.norm(fixed_lps + displacement_at(u, pair.grid, fixed_lps) - moving_lps, axis=1).mean())

    row, start = {}, time.perf_counter()
    coarse = refine(images, COARSE)
    row["coarse"] = (error(coarse), time.perf_counter() - start)
    start = time.perf_counter()
    searched, _ = discrete.start_velocity(a, b, spacing, discrete.DiscreteConfig(), DEFAULT.squaring_steps,
                                         DEFAULT.second_order_start)
    row["search"] = (error(searched), time.perf_counter() - start)
    start = time.perf_counter()
    warped = fields.warp(b, displacement(coarse), spacing)
    window, _ = discrete.start_velocity(a, warped, spacing, WINDOW, DEFAULT.squaring_steps, DEFAULT.second_order_start)
    # exp(v_coarse) o exp(w) ~ exp(v_coarse + w) to first order: w is a few mm
    combined = fields.resize(coarse, window.shape[2:]) + window
    row["coarse+window"] = (error(combined), time.perf_counter() - start)
    start = time.perf_counter()
    row["default"] = (error(refine(images, FINE, start=coarse)), time.perf_counter() - start)
    start = time.perf_counter()
    row["with window"] = (error(refine(images, FINE, start=combined)), time.perf_counter() - start)
    print(f"case {case}: initial {np.linalg.norm(fixed_lps - moving_lps, axis=1).mean():5.2f} mm  "
          + "  ".join(f"{name} {mm:5.2f} mm / {s:4.0f} s" for name, (mm, s) in row.items()), flush=True)
    return row


if __name__ == "__main__":
    main()
