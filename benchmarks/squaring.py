"""Scaling and squaring in the refinement: error and cost per number of squarings, first- against
second-order start (fields.exp), on the velocity the default refinement fits to a val pair.

    .venv/bin/python benchmarks/squaring.py --case 055

Error: mean |exp_n(v) - exp_12(v)| in mm over the finest lattice, both directions. Cost: CPU seconds
of one iteration (loss and backward pass) of each level on one thread, the variants interleaved in
rounds so that a changing load meets them all; the lowest of the rounds is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unleash import fields, workgrid  # noqa: E402
from unleash.checkpoints import load_model  # noqa: E402
from unleash.geometry import read_volume  # noqa: E402
from unleash.optimise import Occupancy, RefineConfig, _LevelLoss, refine  # noqa: E402
from unleash.register import prepare_pair  # noqa: E402

DATA = Path(os.environ.get("UNLEASH_DATA", REPO.parent / "shared" / "data")) / "lung250m4b_vessels" / "val"
VARIANTS = {"first-order start, 5": (5, False), "second-order, 4": (4, True), "second-order, 3": (3, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="055")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, network_config, _ = load_model(None, "registration")
    pair = prepare_pair(read_volume(DATA / f"case_{args.case}_1.nii.gz"), read_volume(DATA / f"case_{args.case}_2.nii.gz"),
                        network_config)
    spacing = pair.grid.spacing_mm[0]
    fine = workgrid.finer(pair.grid, round(spacing))
    grids = [Occupancy(pair.fixed_occupancy, pair.moving_occupancy, spacing),
             Occupancy(workgrid.occupancy_on(fine, pair.fixed_vessels, supersample=1),
                       workgrid.occupancy_on(fine, pair.moving_vessels, supersample=1), fine.spacing_mm[0])]
    default = RefineConfig()
    velocity = refine(grids, default)
    box_mm = (pair.fixed_occupancy.shape[-1] - 1) * spacing
    lattice_mm = box_mm / (velocity.shape[-1] - 1)
    both = torch.cat([velocity, -velocity])
    reference = fields.exp(both, lattice_mm, 12, second_order=True)
    print(f"val {args.case}: the default's velocity on its {default.lattice_mm[-1]:g} mm lattice, max |v| "
          f"{velocity.norm(dim=1).max():.1f} mm; mean error against 12 squarings, mm")
    for second in (False, True):
        errors = [(fields.exp(both, lattice_mm, n, second_order=second) - reference).norm(dim=1).mean().item()
                  for n in range(2, 7)]
        print(f"  {'second' if second else 'first'}-order start, 2-6 squarings: " + " ".join(f"{e:.4f}" for e in errors))
    for level in range(1, len(default.lattice_mm)):
        source = grids[1] if default.image_mm[level] < spacing else grids[0]
        a, b, image_mm = workgrid.blurred_level(source.fixed, source.moving_warped, source.spacing_mm,
                                                 default.image_mm[level], default.blur_mm[level])
        shape = workgrid.lattice_shape(pair.fixed_occupancy.shape[2:], spacing, default.lattice_mm[level])
        start = fields.resize(velocity, shape).clone().requires_grad_(True)
        seconds = {name: [] for name in VARIANTS}
        loss = _LevelLoss(a, b, image_mm, shape, default, level)
        for _ in range(args.rounds):
            for name, (steps, second) in VARIANTS.items():
                loss.config = RefineConfig(squaring_steps=steps, second_order_start=second)
                repeats = 3 if default.image_mm[level] < spacing else 10
                tick = time.process_time()
                for _ in range(repeats):
                    start.grad = None
                    loss(start).backward()
                seconds[name].append((time.process_time() - tick) / repeats)
        print(f"level {level + 1} ({default.lattice_mm[level]:g} mm lattice, {image_mm:g} mm image), CPU s an iteration: "
              + ", ".join(f"{name} {min(s):.3f}" for name, s in seconds.items()), flush=True)


if __name__ == "__main__":
    main()
