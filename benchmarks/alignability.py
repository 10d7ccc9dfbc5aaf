"""How well pairs can be aligned: the fixed-versus-moving vessel overlap before and after a
learning-free registration, for sampled pairs next to real ones.

A pair whose two scans show one vessel tree under a smooth motion aligns well; a pair whose scans
disagree in structure does not, and asks a registration network trained on it to force a match
that is not there. Dice before registration (benchmarks/sampler.py) cannot tell the two apart.

    .venv/bin/python benchmarks/alignability.py --pairs runs/e2e12/synthetic --limit 16 [--json FILE]

(runs/e2e12/synthetic: `unleash sample -n 64 --seed 0 -o runs/e2e12/synthetic`, the shipped sampler.)

Real reference: the val pairs. Registration: instance optimisation on the 2 mm work grid (the
default's coarse levels, 32-16-8 mm lattices, no network, so neither kind of pair is favoured by
what a network was trained on). Overlap: soft Dice of the 2 mm vessel occupancy maps.
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
from unleash.checkpoints import load_model  # noqa: E402
from unleash.datasets import find_pairs  # noqa: E402
from unleash.encode import dice  # noqa: E402  (on occupancy maps: the soft Dice)
from unleash.geometry import read_volume  # noqa: E402
from unleash.optimise import RefineConfig  # noqa: E402
from unleash.register import prepare_pair, register_prepared  # noqa: E402

DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data"))
VAL = DATA / "lung250m4b_vessels" / "val"
COARSE = RefineConfig(lattice_mm=[32.0, 16.0, 8.0], image_mm=[8.0, 4.0, 4.0], blur_mm=[8.0, 4.0, 3.0],
                      iterations=[60, 60, 60])


def alignability(folder: Path, limit: int | None, config) -> list[tuple[str, float, float]]:
    """(name, Dice before, Dice after) per pair of `folder`, on the work grid of the registration model `config`."""
    rows = []
    for files in find_pairs(folder)[:limit]:
        pair = prepare_pair(read_volume(files.fixed), read_volume(files.moving), config, inputs="vessels")
        registration = register_prepared(pair, None, COARSE, torch.device("cpu"))
        with torch.no_grad():
            aligned = fields.warp(pair.moving_occupancy, registration.forward_mm, pair.grid.spacing_mm[0])
        rows.append((files.name, dice(pair.fixed_occupancy, pair.moving_occupancy), dice(pair.fixed_occupancy, aligned)))
        print(f"{files.name:<12} Dice {rows[-1][1]:.3f} -> {rows[-1][2]:.3f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True, help="a folder of pairs, e.g. the output of `unleash sample`")
    parser.add_argument("--limit", type=int, help="at most this many pairs of --pairs")
    parser.add_argument("--real", default=str(VAL), help="real pairs for reference (default: the val pairs)")
    parser.add_argument("--labels", default="sampled,real", help="the two groups' names in the table and the JSON")
    parser.add_argument("--json", help="also write the per-pair figures as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    pairs_label, real_label = args.labels.split(",")
    _, config, _ = load_model(None, "registration")  # the shipped model's work grid
    table = {name: alignability(Path(folder), limit, config)
             for name, folder, limit in ((pairs_label, args.pairs, args.limit), (real_label, args.real, None))}
    print(f"\n{'soft Dice, min / median / max':<32} {'before':>22} {'after registration':>22}")
    for name, rows in table.items():
        before, after = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
        cells = [f"{v.min():.3f} / {np.median(v):.3f} / {v.max():.3f}" for v in (before, after)]
        print(f"{name + f' ({len(rows)} pairs)':<32} {cells[0]:>22} {cells[1]:>22}")
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"pairs": args.pairs, "real": args.real, "registration": "instance optimisation, 32-16-8 mm lattices",
             **{name: [{"name": n, "dice_before": round(b, 4), "dice_after": round(a, 4)} for n, b, a in rows]
                for name, rows in table.items()}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
