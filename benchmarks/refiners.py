"""Refiners (or mask thresholds) compared on the same sampled token grids: each sampler file's decoder and
refiner draw the grids that `unleash sample -n PAIRS --seed 0` draws with the shipped denoiser (its first
batch), and the written masks' morphometry is tabled as benchmarks/realism.py does (each pair the mean of its
two scans; min / median / max over the pairs). No files are written and no pair is registered, so a
variant costs about a minute for four pairs; realism.py measures the motion and draws the figure.

    .venv/bin/python benchmarks/refiners.py --sampler shipped --sampler runs/candidate.safetensors \
        [--pairs 4] [--temperature 0.9] [--threshold 0.5] [--centreline-threshold 0.25]

--threshold replaces the mask rule's base threshold (sample.THRESHOLD; the vessel share's real range
still applies); --centreline-threshold replaces sample.CENTRELINE_THRESHOLD (1: no centrelines, the mask
rule before them); --temperature draws other grids (the shipped denoiser at that temperature).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from morphometry import MEASURES, scan_morphometry  # noqa: E402
from realism import print_table  # noqa: E402

from unleash import sample  # noqa: E402
from unleash.errors import UserError  # noqa: E402
from unleash.jobspec import DEFAULT_SAMPLE_BATCH, DEFAULT_SCHEDULE, DEFAULT_TEMPERATURE, SCHEDULES  # noqa: E402
from unleash.vessels import lung_mask_from_vessels  # noqa: E402

SHIPPED = "shipped"


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sampler", action="append", default=[], help=f"a sampler model file, or '{SHIPPED}' (repeatable)")
    parser.add_argument("--pairs", type=int, default=4, help=f"token grids (at most {DEFAULT_SAMPLE_BATCH}: one batch)")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    parser.add_argument("--threshold", type=float, default=sample.THRESHOLD)
    parser.add_argument("--centreline-threshold", type=float, default=sample.CENTRELINE_THRESHOLD)
    args = parser.parse_args()
    if not 1 <= args.pairs <= DEFAULT_SAMPLE_BATCH or not args.sampler:
        raise SystemExit(f"give --sampler at least once and --pairs 1-{DEFAULT_SAMPLE_BATCH}")
    device = torch.device("cpu")
    shipped, _ = sample.load_sampler(None, device)
    try:  # every file before the minute of sampling
        models = {path: shipped if path == SHIPPED else sample.load_sampler(path, device)[0] for path in args.sampler}
    except UserError as error:
        raise SystemExit(str(error)) from None
    tokens = sample.sample_tokens(shipped.denoiser, DEFAULT_SAMPLE_BATCH, DEFAULT_SCHEDULE, SCHEDULES[DEFAULT_SCHEDULE],
                                  args.temperature, torch.Generator(device).manual_seed(0))[:args.pairs]
    sample.THRESHOLD, sample.CENTRELINE_THRESHOLD = args.threshold, args.centreline_threshold
    groups = {}
    for path, model in models.items():
        grid = sample.sample_grid(model.vqae.config)
        rows, started = [], time.perf_counter()
        for row in tokens:
            volumes = sample.decode_pair(model.vqae, row, grid, model.refiner)
            scans = []
            for role in ("fixed", "moving"):
                scans.append(scan_morphometry(volumes[role].array > 0, grid.spacing_mm[0]))
                scans[-1]["lung_cover_pct"] = 100 * float(lung_mask_from_vessels(volumes[role]).mean())
            rows.append({key: (scans[0][key] + scans[1][key]) / 2 for key in MEASURES})
        groups[Path(path).stem] = rows
        print(f"{path}: {len(rows)} pairs in {time.perf_counter() - started:.0f} s", flush=True)
    print(f"\ntemperature {args.temperature}, threshold {args.threshold}, centrelines {args.centreline_threshold}", end="")
    print_table(groups, MEASURES)


if __name__ == "__main__":
    main()
