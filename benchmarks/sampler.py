"""Sampler benchmark: speed and quality of the shipped schedule against the paper's, same weights,
same machine, one after the other; quality next to the real pairs.

    .venv/bin/python benchmarks/sampler.py                       # the shipped sampler, 4 pairs per schedule, CPU
    .venv/bin/python benchmarks/sampler.py --model FILE --count 8 --device cuda --json benchmarks/results/sampler_gpu.json

Each schedule runs as one `unleash sample` process (exactly the job the Slicer module runs), so the
time includes loading the model and writing the files, and peak memory is that process's maximum
resident set. Quality per pair: vessel volume fraction of the 256 x 208 x 256 mm box, connected
components (26-connected) and fixed-versus-moving Dice before registration; the real pairs are the
Lung250M-4B training pairs placed in the same box (encode.token_volume_grid).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unleash.datasets import find_pairs  # noqa: E402
from unleash.encode import token_volume_grid  # noqa: E402
from unleash.geometry import read_volume, resample  # noqa: E402
from unleash.jobs import sample_command  # noqa: E402
from unleash.modelfile import DEFAULTS, read_metadata  # noqa: E402
from unleash.models.vqae import VQAEConfig  # noqa: E402

DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data"))
TRAIN = DATA / "lung250m4b_vessels" / "train"
PAPER_SECONDS_FOR_TWO_PAIRS_GPU = 30.0  # the paper's sampler, 256 steps, batch of 2, on its GPU


def pair_quality(fixed: np.ndarray, moving: np.ndarray) -> dict:
    """Binary [k, j, i] maps of one pair -> vessel fraction, components and Dice of fixed vs moving."""
    structure = np.ones((3, 3, 3), bool)
    overlap = 2 * np.logical_and(fixed, moving).sum() / max(1, fixed.sum() + moving.sum())
    return {"vessel_fraction_pct": 100 * (fixed.mean() + moving.mean()) / 2,
            "components": (ndimage.label(fixed, structure)[1] + ndimage.label(moving, structure)[1]) / 2,
            "dice_fixed_moving": float(overlap)}


def summary(rows: list[dict]) -> dict:
    return {key: [round(float(np.min([r[key] for r in rows])), 4), round(float(np.median([r[key] for r in rows])), 4),
                  round(float(np.max([r[key] for r in rows])), 4)] for key in rows[0]}


def real_quality(limit: int) -> list[dict]:
    rows = []
    box = VQAEConfig()  # the paper's 1 mm box
    for files in find_pairs(TRAIN)[:limit]:
        fixed, moving = read_volume(files.fixed), read_volume(files.moving)
        grid = token_volume_grid(fixed.grid, box)
        on_box = [resample(volume, grid, linear=False).array > 0 for volume in (fixed, moving)]
        rows.append(pair_quality(*on_box))
    return rows


def run_schedule(model: str | None, schedule: str, count: int, device: str, seed: int, output: Path,
                 steps: int | None = None) -> tuple[dict, list[dict], float]:
    """(samples.json, quality rows, wall seconds) of one `unleash sample` process writing into `output`."""
    command = sample_command(str(output), count, model=model, schedule=schedule, steps=steps, batch_size=count, device=device,
                             seed=seed, python=sys.executable)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"unleash sample failed: {done.stderr.strip()}")
    report = json.loads((output / "samples.json").read_text())
    rows = [pair_quality(*(read_volume(output / p["files"][role]).array > 0 for role in ("fixed", "moving")))
            for p in report["pairs"]]
    return report, rows, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="sampler model file (default: the shipped one)")
    parser.add_argument("--count", type=int, default=4, help="pairs per schedule, sampled as one batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", help="steps of the fast schedule (default: its own default); a comma list "
                                        "(32,16,12) runs each, the first is the one the speed-up line reports")
    parser.add_argument("--real", type=int, default=10, help="real training pairs to compare with")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    model = args.model or str(DEFAULTS["sampler"])
    card = read_metadata(model)["card"]
    results = {"model": model, "device": args.device, "count": args.count, "platform": platform.platform(terse=True),
               "command": " ".join(["python", "benchmarks/sampler.py", *sys.argv[1:]]),
               "denoiser_held_out_nll": (card.get("denoiser") or {}).get("validation_metrics"), "schedules": {}}
    fast_steps = [int(n) for n in args.steps.split(",")] if args.steps else [None]
    # (name in the results, schedule, steps); the paper's schedule last: peak memory is the largest child so far
    runs = [("maskgit" if i == 0 else f"maskgit_{n}", "maskgit", n) for i, n in enumerate(fast_steps)]
    with tempfile.TemporaryDirectory(prefix="unleash-sampler-bench-") as temporary:
        for name, schedule, steps in [*runs, ("paper", "paper", None)]:
            report, rows, wall = run_schedule(model, schedule, args.count, args.device, args.seed,
                                              Path(temporary) / name, steps)
            results["schedules"][name] = {"steps": report["settings"]["steps"],
                                              "seconds": report["seconds"], "wall_s": round(wall, 1),
                                              "sampling_s_per_pair": round(report["seconds"]["sampling"] / args.count, 2),
                                              "s_per_pair": round(report["seconds"]["per_pair"], 2),
                                              # the largest child so far: run the paper schedule second
                                              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                                                   / 2**20, 2),
                                              "quality_min_median_max": summary(rows)}
    results["real_min_median_max"] = summary(real_quality(args.real))
    paper = results["schedules"]["paper"]
    for name, _, _ in runs:
        fast = results["schedules"][name]
        fast["speedup_sampling"] = round(paper["seconds"]["sampling"] / fast["seconds"]["sampling"], 1)
        fast["speedup_total"] = round(paper["seconds"]["total"] / fast["seconds"]["total"], 1)
    results["speedup_sampling"] = results["schedules"]["maskgit"]["speedup_sampling"]
    results["speedup_total"] = results["schedules"]["maskgit"]["speedup_total"]

    print(f"{'':<22} {'steps':>6} {'token sampling s/pair':>22} {'total s/pair':>13} {'peak RSS GB':>12} {'speed-up':>9}")
    for name, row in results["schedules"].items():
        speedup = f"{row['speedup_total']}x" if "speedup_total" in row else ""
        print(f"{name:<22} {row['steps']:>6} {row['sampling_s_per_pair']:>22.2f} {row['s_per_pair']:>13.2f} "
              f"{row['peak_rss_gb']:>12.2f} {speedup:>9}")
    print(f"{'paper (its GPU, 2 pairs)':<22} {'':>6} {'':>22} {PAPER_SECONDS_FOR_TWO_PAIRS_GPU / 2:>13.1f}")
    print(f"speed-up of the first fast schedule: {results['speedup_sampling']}x token sampling, "
          f"{results['speedup_total']}x in all (decoding and writing included)")
    print(f"\n{'quality (min / median / max)':<30} {'vessel %':>22} {'components':>22} {'Dice fixed-moving':>24}")
    for name, quality in [*((n, r["quality_min_median_max"]) for n, r in results["schedules"].items()),
                          ("real pairs", results["real_min_median_max"])]:
        print(f"{name:<30} " + " ".join(f"{' / '.join(f'{v:g}' for v in quality[k]):>22}"
                                        for k in ("vessel_fraction_pct", "components", "dice_fixed_moving")))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
