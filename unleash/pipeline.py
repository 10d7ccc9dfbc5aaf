"""`unleash register` end to end: files in, files and report out, nothing half-written."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .checkpoints import DEFAULTS, load_model, model_id
from .datasets import read_landmarks
from .devices import describe, resolve_device
from .errors import UserError
from .geometry import check_overlap, read_volume
from .jobs import Progress
from .jobspec import DEFAULT_DEVICE
from .optimise import RefineConfig
from .output_folder import atomic_output_dir, check_output_dir
from .outputs import (
    FILES,
    deformation_quality,
    landmark_errors_mm,
    percentiles,
    to_scan_grids,
    write_fields,
    write_report,
)
from .preflight import check_seed, register_start
from .register import prepare_pair, register_prepared

# Total refinement iterations of the default; the benchmark in benchmarks/registration.py measured
# the trade-off between TRE and seconds that chose it (see the model card).
DEFAULT_ADAPT_ITERS = RefineConfig().total_iterations
MIN_OVERLAP = 0.5  # below this share of shared physical space a registration is unlikely to be right


@dataclass
class RegisterOptions:
    model: str | None = None
    device: str = DEFAULT_DEVICE
    inputs: str = "auto"
    refinement: str = "io"
    start: str | None = None  # None: preflight.register_start's default
    adapt_iters: int = DEFAULT_ADAPT_ITERS
    landmarks: str | None = None
    seed: int = 0


def register_files(fixed_path, moving_path, output_dir, options: RegisterOptions, progress: Progress,
                   overwrite: bool = False) -> dict:
    """Register `moving_path` to `fixed_path`, write FILES into `output_dir`; returns the report."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    start = register_start(options.refinement, options.start, options.adapt_iters)
    check_seed(options.seed)
    inputs = [fixed_path, moving_path, options.landmarks, options.model]
    check_output_dir(output_dir, overwrite, inputs)
    device = resolve_device(options.device)
    torch.manual_seed(options.seed)

    tick = time.perf_counter()
    fixed, moving = read_volume(fixed_path), read_volume(moving_path)
    shared = check_overlap(fixed.grid, moving.grid, fixed_path, moving_path)
    if shared < MIN_OVERLAP:
        progress.log(f"warning: the scans share only {100 * shared:.0f} % of the smaller one's box in physical space")
    if options.landmarks:
        read_landmarks(options.landmarks, fixed.grid, moving.grid)
    network, config, _ = load_model(options.model, "registration", device)
    seconds["read"] = time.perf_counter() - tick

    tick = time.perf_counter()
    pair = prepare_pair(fixed, moving, config, options.inputs)
    seconds["prepare"] = time.perf_counter() - tick
    decided = "given" if options.inputs != "auto" else "decided from the voxel values"
    progress.log(f"inputs: {pair.inputs} ({decided}); device: {describe(device)}")

    def on_step(step, total, loss, work=None):
        progress.progress("refinement", step, total, work=work, loss=round(loss, 5))

    if options.refinement == "tta" and options.adapt_iters > 0:
        from .adapt import adapt  # imports the training code (and matplotlib): 0.9 s that io does not need

        tick = time.perf_counter()
        network = adapt(network, pair.fixed_occupancy.to(device), pair.moving_occupancy.to(device),
                        options.adapt_iters, on_iteration=on_step)
        seconds["adaptation"] = time.perf_counter() - tick
    refine_config = RefineConfig().scaled(options.adapt_iters) if options.refinement == "io" else None
    start_network = network if start == "network" else None
    registration = register_prepared(pair, start_network, refine_config, device, on_step)
    seconds.update(registration.seconds)

    tick = time.perf_counter()
    scan = to_scan_grids(pair, registration)
    for name, displacement in (("displacement", scan.forward_lps_mm), ("inverse displacement", scan.inverse_lps_mm)):
        if not np.isfinite(displacement).all():
            raise UserError(f"the registration gave a {name} with NaN or infinite values; nothing was written")
    report = {
        "version": __version__,
        "fixed": str(fixed_path), "moving": str(moving_path), "inputs": pair.inputs,
        "device": describe(device),
        "model": {"id": model_id(options.model, "registration"), "path": str(options.model or DEFAULTS["registration"])},
        "refinement": {"method": options.refinement, "iterations": options.adapt_iters, "start": start},
        "work_grid": pair.grid.to_json(),
        **deformation_quality(pair, registration, scan),
    }
    if options.landmarks:
        before = landmark_errors_mm(pair, None, options.landmarks)
        after = landmark_errors_mm(pair, scan.forward_lps_mm, options.landmarks, field_grid=scan.forward_grid)
        report["tre_before_mm"], report["tre_after_mm"] = percentiles(before), percentiles(after)
        report["landmark_errors_mm"] = {"before": [round(float(e), 3) for e in before],
                                        "after": [round(float(e), 3) for e in after]}
    seconds["fields"] = time.perf_counter() - tick

    tick = time.perf_counter()
    with atomic_output_dir(output_dir, overwrite, inputs) as staging:
        write_fields(staging, pair, scan)
        seconds["write"] = time.perf_counter() - tick
        seconds["total"] = time.perf_counter() - started
        report["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
        write_report(staging, report)
    report["files"] = {key: str(Path(output_dir) / name) for key, name in FILES.items()}
    return report
