"""Refinement on the pair, compared in one process on the same pairs: the network alone, test-time
adaptation of the network (the paper's refinement), instance optimisation of the field started from
the network, and instance optimisation alone (an untrained, identity-predicting network).

    .venv/bin/python benchmarks/refinement.py --cases 002,055,117,121
    .venv/bin/python benchmarks/refinement.py --cases 055,117,121 --variants io_only,network_io

Times are compute only (no file I/O), so they compare TRE per second between the methods; the
end-to-end time per pair is measured by benchmarks/registration.py.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unleash import fields  # noqa: E402
from unleash.adapt import adapt  # noqa: E402
from unleash.affine import AffineConfig  # noqa: E402
from unleash.checkpoints import load_model  # noqa: E402
from unleash.datasets import read_landmarks  # noqa: E402
from unleash.discrete import DiscreteConfig  # noqa: E402
from unleash.geometry import read_volume  # noqa: E402
from unleash.models.registration import TwoStepRegistration  # noqa: E402
from unleash.optimise import RefineConfig  # noqa: E402
from unleash.register import prepare_pair, register_prepared  # noqa: E402
from unleash.transforms import displacement_at  # noqa: E402

DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data")) / "lung250m4b_vessels"

# name -> (start from the trained network?, test-time adaptation iterations, instance optimisation)
VARIANTS = {
    "network": (True, 0, None),
    "tta20": (True, 20, None),
    "tta50": (True, 50, None),
    "network_io": (True, 0, RefineConfig()),
    "io_only": (False, 0, RefineConfig()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--cases", default="002,055,117,121")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; empty: only the --config ones")
    parser.add_argument("--config", action="append", default=[],
                        help="JSON RefineConfig fields to override (`search`: DiscreteConfig fields, or null); "
                             "each --config adds the io_only variant with those fields, named io_only/1, /2, ...")
    args = parser.parse_args()
    network, config, _ = load_model(args.model, "registration")
    identity = TwoStepRegistration(config).eval()  # zero velocity heads: predicts the identity
    names = args.variants.split(",") if args.variants else []
    overrides = {name: {} for name in names}
    for number, text in enumerate(args.config, 1):
        names.append(f"io_only/{number}")
        overrides[names[-1]] = json.loads(text)
    tre = {name: [] for name in names}
    seconds = {name: [] for name in names}
    folding = {name: [] for name in names}
    for case in args.cases.split(","):
        fixed = read_volume(DATA / "val" / f"case_{case}_1.nii.gz")
        moving = read_volume(DATA / "val" / f"case_{case}_2.nii.gz")
        pair = prepare_pair(fixed, moving, config)
        fixed_ijk, moving_ijk = read_landmarks(DATA / "val_landmarks" / f"case_{case}.csv")
        fixed_lps, moving_lps = fixed.grid.index_to_physical(fixed_ijk), moving.grid.index_to_physical(moving_ijk)
        line = f"case {case}: initial {np.linalg.norm(fixed_lps - moving_lps, axis=1).mean():5.2f} mm"
        for name in names:
            trained, tta_iterations, refine = VARIANTS[name.split("/")[0]]
            refine = refine_config(refine, overrides[name]) if refine is not None else None
            start = time.perf_counter()
            net = network if trained else identity
            if tta_iterations:
                net = adapt(net, pair.fixed_occupancy, pair.moving_occupancy, tta_iterations)
            result = register_prepared(pair, net, refine, torch.device("cpu"))
            seconds[name].append(time.perf_counter() - start)
            u = result.forward_mm[0].numpy()
            errors = np.linalg.norm(fixed_lps + displacement_at(u, pair.grid, fixed_lps) - moving_lps, axis=1)
            tre[name].append(errors.mean())
            # share of work-grid voxels with J <= 0 (register's report counts it on the scan grid)
            folding[name].append(100 * float((fields.jacobian_determinant(result.forward_mm, pair.grid.spacing_mm[0]) <= 0)
                                             .float().mean()))
            line += f"  {name} {tre[name][-1]:5.2f} mm / {seconds[name][-1]:4.0f} s / {folding[name][-1]:.3f} %"
        print(line, flush=True)
    print()
    for name in names:
        if overrides[name]:
            print(f"{name:<12} {json.dumps(overrides[name])}")
        print(f"{name:<12} mean TRE {np.mean(tre[name]):5.2f} mm   mean {np.mean(seconds[name]):5.1f} s per pair (compute)"
              f"   max folding {max(folding[name]):.3f} % (work grid)")


def refine_config(base: RefineConfig, overrides: dict) -> RefineConfig:
    fields_ = {**base.__dict__, **overrides}
    if isinstance(fields_.get("search"), dict):
        fields_["search"] = DiscreteConfig(**fields_["search"])
    if isinstance(fields_.get("affine"), dict):
        fields_["affine"] = AffineConfig(**fields_["affine"])
    return RefineConfig(**fields_)


if __name__ == "__main__":
    main()
