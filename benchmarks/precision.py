"""The default refinement in fp32 and under bf16 autocast, on the same pairs in one process: TRE,
seconds and how far the two fields lie apart (a GPU check: bf16 autocast is what CUDA offers).

    .venv/bin/python benchmarks/precision.py --device cuda --cases 002,055,056,117

Times are compute only (no file I/O), after one warm-up pair; the end-to-end time per pair is
measured by benchmarks/registration.py.
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

from unleash.checkpoints import load_model  # noqa: E402
from unleash.datasets import read_landmarks  # noqa: E402
from unleash.devices import resolve_device  # noqa: E402
from unleash.geometry import read_volume  # noqa: E402
from unleash.optimise import RefineConfig  # noqa: E402
from unleash.register import prepare_pair, register_prepared  # noqa: E402
from unleash.transforms import displacement_at  # noqa: E402

DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data")) / "lung250m4b_vessels"
PRECISIONS = ("fp32", "bf16")


def refined(pair, device: torch.device, precision: str):
    """(forward field on the work grid, compute seconds) of the default refinement."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        result = register_prepared(pair, None, RefineConfig(), device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result.forward_mm.float(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cases", default="002,055,056,117")
    parser.add_argument("--json", help="also write the table as JSON here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    _, config, _ = load_model(None, "registration")
    rows = []
    for number, case in enumerate(args.cases.split(",")):
        fixed = read_volume(DATA / "val" / f"case_{case}_1.nii.gz")
        moving = read_volume(DATA / "val" / f"case_{case}_2.nii.gz")
        pair = prepare_pair(fixed, moving, config)
        fixed_ijk, moving_ijk = read_landmarks(DATA / "val_landmarks" / f"case_{case}.csv")
        fixed_lps, moving_lps = fixed.grid.index_to_physical(fixed_ijk), moving.grid.index_to_physical(moving_ijk)
        if number == 0:
            refined(pair, device, "fp32")  # warm-up: kernels and allocator
        row, fields = {"case": case}, {}
        for precision in PRECISIONS:
            torch.manual_seed(0)
            fields[precision], row[f"{precision}_s"] = refined(pair, device, precision)
            u = fields[precision][0].numpy()
            errors = np.linalg.norm(fixed_lps + displacement_at(u, pair.grid, fixed_lps) - moving_lps, axis=1)
            row[f"{precision}_tre_mm"] = float(errors.mean())
        difference = (fields["bf16"] - fields["fp32"]).norm(dim=1)
        row["difference_mean_mm"], row["difference_max_mm"] = float(difference.mean()), float(difference.max())
        rows.append(row)
        print(f"case {case}: fp32 {row['fp32_tre_mm']:.3f} mm in {row['fp32_s']:.2f} s, bf16 {row['bf16_tre_mm']:.3f} mm "
              f"in {row['bf16_s']:.2f} s; fields differ by {row['difference_mean_mm']:.4f} mm mean, "
              f"{row['difference_max_mm']:.4f} mm max", flush=True)
    summary = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != "case"}
    print("mean: " + ", ".join(f"{key} {value:.4f}" for key, value in summary.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "summary": summary, "pairs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
