"""Realism of sampled pairs: morphometry of each scan's vessel tree and the fixed-to-moving motion of
each pair, next to the ten real training pairs (never the val pairs), and a figure to judge by eye.

    .venv/bin/python benchmarks/realism.py --sampled default=runs/s12 --sampled paper=runs/s256 \
        [--real 10] [--limit 8] [--json benchmarks/results/realism_cpu.json] [--figure benchmarks/results/realism_cpu.png]

Each --sampled is LABEL=FOLDER, a folder written by `unleash sample`. Real pairs are placed in the
sampler's 256 x 208 x 256 mm box (encode.token_volume_grid), as the sampled ones are drawn.
Morphometry: benchmarks/morphometry.py, per scan; the lung envelope is vessels.lung_mask_from_vessels.
Motion: a learning-free registration of each pair (benchmarks/alignability.py's instance optimisation,
no network), then inside the fixed scan's lung envelope on the 2 mm work grid the displacement
magnitude (median, p95) and the Jacobian determinant (p5, p95): breathing compresses and stretches
the lungs smoothly, a pair of unrelated trees asks for folds and large pulls.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from alignability import COARSE  # noqa: E402
from decoder import TRAIN  # noqa: E402
from morphometry import MEASURES, scan_morphometry  # noqa: E402

from unleash import fields, workgrid  # noqa: E402
from unleash.checkpoints import load_model  # noqa: E402
from unleash.datasets import find_pairs  # noqa: E402
from unleash.encode import token_volume_grid  # noqa: E402
from unleash.geometry import Volume, read_volume, resample  # noqa: E402
from unleash.models.vqae import VQAEConfig  # noqa: E402
from unleash.preview_pairs import pair_projections  # noqa: E402
from unleash.register import prepare_pair, register_prepared  # noqa: E402
from unleash.sample import REAL_VESSEL_FRACTION  # noqa: E402
from unleash.vessels import lung_mask_from_vessels  # noqa: E402

MOTION = {"displacement_median_mm": ("|u| median in the lungs, mm", "{:.2f}"),
          "displacement_p95_mm": ("|u| p95 in the lungs, mm", "{:.2f}"),
          "jacobian_p5": ("Jacobian p5 in the lungs", "{:.3f}"),
          "jacobian_p95": ("Jacobian p95 in the lungs", "{:.3f}")}
FIGURE_PAIRS = 3


def real_pairs(limit: int):
    """(name, fixed, moving) of the training pairs, each placed in the sampler's box."""
    box = VQAEConfig()
    for files in find_pairs(TRAIN)[:limit]:
        fixed, moving = read_volume(files.fixed), read_volume(files.moving)
        grid = token_volume_grid(fixed.grid, box)
        on_box = [resample(volume, grid, linear=False) for volume in (fixed, moving)]
        yield files.name, *(volume.with_array((volume.array > 0).astype(np.uint8)) for volume in on_box)


def sampled_pairs(folder: Path, limit: int | None):
    report = json.loads((folder / "samples.json").read_text())
    for pair in report["pairs"][:limit]:
        yield pair["name"], *(read_volume(folder / pair["files"][role]) for role in ("fixed", "moving"))


def vessel_share_check(folder: Path) -> str:
    """Every scan of a folder (not only the --limit ones), from its samples.json: the vessel share's
    range and how many scans fall outside the real training pairs' range."""
    shares = [100 * share for pair in json.loads((folder / "samples.json").read_text())["pairs"]
              for share in pair["vessel_fraction"].values()]
    low, high = (100 * f for f in REAL_VESSEL_FRACTION)
    outside = sum(not low <= share <= high for share in shares)
    return (f"{len(shares)} scans: vessel {min(shares):.2f}-{max(shares):.2f} % of the box, "
            f"{outside} outside the real {low:.2f}-{high:.2f} %")


def motion(fixed: Volume, moving: Volume, config) -> dict[str, float]:
    """Displacement and Jacobian statistics of a learning-free registration, inside the fixed lungs."""
    pair = prepare_pair(fixed, moving, config, inputs="vessels")
    registration = register_prepared(pair, None, COARSE, torch.device("cpu"))
    lungs = workgrid.occupancy_on(pair.grid, fixed.with_array(pair.fixed_lungs.astype(np.uint8)))[0, 0] > 0.5
    magnitude = registration.forward_mm[0].norm(dim=0)[lungs].numpy()
    jacobian = fields.jacobian_determinant(registration.forward_mm, pair.grid.spacing_mm[0])[0][lungs].numpy()
    return {"displacement_median_mm": float(np.median(magnitude)), "displacement_p95_mm": float(np.quantile(magnitude, 0.95)),
            "jacobian_p5": float(np.quantile(jacobian, 0.05)), "jacobian_p95": float(np.quantile(jacobian, 0.95))}


def pair_rows(pairs, config, views: list) -> list[dict]:
    """Per pair: the mean of its two scans' morphometry, and its motion; the first pairs' views for the figure."""
    rows = []
    for name, fixed, moving in pairs:
        started = time.perf_counter()
        scans = [scan_morphometry(v.array > 0, v.grid.spacing_mm[0]) for v in (fixed, moving)]
        for scan, volume in zip(scans, (fixed, moving)):
            scan["lung_cover_pct"] = 100 * float(lung_mask_from_vessels(volume).mean())
        row = {"name": name, **{k: (scans[0][k] + scans[1][k]) / 2 for k in scans[0]}, **motion(fixed, moving, config)}
        rows.append(row)
        if len(views) < FIGURE_PAIRS:
            views.append((name, fixed.array > 0, pair_projections(fixed, moving)))
        print(f"  {name}: elongation {row['elongation_per_1000']:.1f}, radius p90 {row['radius_p90_mm']:.2f} mm, "
              f"vessel {row['vessel_fraction_pct']:.2f} %, |u| {row['displacement_median_mm']:.2f} mm "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return rows


def spread(rows: list[dict], key: str) -> list[float]:
    values = [r[key] for r in rows]
    return [float(np.min(values)), float(np.median(values)), float(np.max(values))]


def print_table(groups: dict[str, list[dict]], measures: dict | None = None) -> None:
    """min / median / max of each measure (default: the morphometry and the motion) per group."""
    names = list(groups)
    print(f"\n{'min / median / max':<46}" + "".join(f"{n + f' ({len(groups[n])})':>26}" for n in names))
    for key, (heading, fmt) in (measures or {**MEASURES, **MOTION}).items():
        cells = [" / ".join(fmt.format(v) for v in spread(groups[n], key)) for n in names]
        print(f"{heading:<46}" + "".join(f"{c:>26}" for c in cells))


def figure(path: Path, views: dict[str, list]) -> None:
    """Per group, FIGURE_PAIRS pairs: the fixed scan's axial slice through the hila (20 mm slab, as a
    radiologist scrolls), the fixed scan's coronal sum projection (vessel depth), and the pair's coronal projection
    (fixed magenta, moving green)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image  # matplotlib's own dependency

    rows = [(label, *view) for label, group in views.items() for view in group]
    figure = Figure(figsize=(7.5, 2.4 * len(rows)), dpi=64, layout="constrained")
    axes = figure.subplots(len(rows), 3, squeeze=False)
    for ax_row, (label, name, fixed, (fixed_p, moving_p)) in zip(axes, rows):
        middle = int(np.median(np.nonzero(fixed.any(axis=(1, 2)))[0]))
        slab = fixed[middle - 10:middle + 10].any(axis=0)  # [j, i]: anterior up is j = 0 at the top
        coronal = [fixed_p.astype(np.float32), moving_p.astype(np.float32)]
        depth = fixed.sum(axis=1).astype(np.float32)  # [k, i]: vessel voxels along anterior-posterior
        ax_row[0].imshow(slab, cmap="gray", interpolation="nearest")
        ax_row[1].imshow(depth, cmap="gray", origin="lower", interpolation="nearest", vmax=max(1.0, np.quantile(depth, 0.99)))
        ax_row[2].imshow(np.stack([coronal[0], coronal[1], coronal[0]], -1), origin="lower", interpolation="nearest")
        for ax, title in zip(ax_row, ("axial 20 mm slab, fixed", "coronal sum projection, fixed", "fixed / moving")):
            ax.set_axis_off()
            ax.set_title(f"{label} {name}: {title}", fontsize=8)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    Image.open(buffer).convert("RGB").quantize(32).save(path, format="png", optimize=True)  # a third of the bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sampled", action="append", default=[], metavar="LABEL=FOLDER",
                        help="a folder of `unleash sample` pairs and its name in the table (repeatable)")
    parser.add_argument("--limit", type=int, help="at most this many pairs of each --sampled folder")
    parser.add_argument("--real", type=int, default=10, help="real training pairs to compare with")
    parser.add_argument("--json", help="write the per-pair figures here")
    parser.add_argument("--figure", help="write the slice-and-projection figure (PNG) here")
    args = parser.parse_args()
    sampled = [entry.split("=", 1) for entry in args.sampled]
    if any(len(entry) != 2 or not (Path(entry[1]) / "samples.json").is_file() for entry in sampled):
        raise SystemExit("each --sampled is LABEL=FOLDER, a folder written by `unleash sample`")
    torch.manual_seed(0)
    _, config, _ = load_model(None, "registration")  # the shipped model's work grid
    groups, views = {}, {}
    for label, pairs in [("real", real_pairs(args.real)),
                         *((label, sampled_pairs(Path(folder), args.limit)) for label, folder in sampled)]:
        print(label, flush=True)
        views[label] = []
        groups[label] = pair_rows(pairs, config, views[label])
    print_table(groups)
    checks = {label: vessel_share_check(Path(folder)) for label, folder in sampled}
    for label, check in checks.items():
        print(f"{label}, all {check}")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(["python", "benchmarks/realism.py", *sys.argv[1:]]),
                                               "sampled": dict(map(tuple, sampled)), "vessel_share_check": checks,
                                               "pairs": groups}, indent=1) + "\n")
    if args.figure:
        figure(Path(args.figure), views)


if __name__ == "__main__":
    main()
