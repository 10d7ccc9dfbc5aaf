"""Side by side: `unleash register` of val pairs with two or more checkouts' code, interleaved pair by pair,
so that each version meets the same load. Prints TRE (from the written fields), inverse consistency,
folding, wall and CPU seconds, the load and the stages of each run.

    .venv/bin/python benchmarks/registration_ab.py --checkouts old=/tmp/main,new=. --cases 055,117 --threads 1

Each checkout runs its own `unleash` package (the command runs in that folder) with this interpreter.
On a shared, loaded CPU use one thread each: two torch threads that wait for each other's core are
several times slower, and their seconds say more about the other jobs than about the code.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data")) / "lung250m4b_vessels"


def run(checkout: Path, case: str, output: Path, threads: int | None) -> tuple[dict, float, float]:
    """(report, wall seconds, CPU seconds) of one registration with `checkout`'s code."""
    val = DATA / "val"
    command = [sys.executable, "-m", "unleash", "register", str(val / f"case_{case}_1.nii.gz"),
               str(val / f"case_{case}_2.nii.gz"), "--output", str(output),
               "--landmarks", str(DATA / "val_landmarks" / f"case_{case}.csv"), "--overwrite", "--progress", "none"]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    process = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"{checkout}: registration of {case} failed: {process.stderr.strip()[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return json.loads((output / "report.json").read_text()), wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkouts", required=True, help="name=folder,name=folder,... (each a checkout of the repo)")
    parser.add_argument("--cases", default="002,055,056,117,121")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each run (default: the engine's)")
    args = parser.parse_args()
    checkouts = {name: Path(folder).resolve() for name, folder in (item.split("=", 1) for item in args.checkouts.split(","))}
    with tempfile.TemporaryDirectory() as scratch:
        for case in args.cases.split(","):
            for name, checkout in checkouts.items():
                load = os.getloadavg()[0]
                report, wall, cpu = run(checkout, case, Path(scratch) / f"{name}_{case}", args.threads)
                print(f"{case} {name:<8} TRE {report['tre_after_mm']['mean']:.3f} mm  "
                      f"ICE {report['inverse_consistency_error_mm']['mean']:.4f} mm  "
                      f"folding {100 * report['folding_fraction']:.4f} %  wall {wall:5.1f} s  CPU {cpu:5.1f} s  "
                      f"load {load:.1f}  stages " + " ".join(f"{k} {v:.2f}" for k, v in report["seconds"].items()),
                      flush=True)


if __name__ == "__main__":
    main()
