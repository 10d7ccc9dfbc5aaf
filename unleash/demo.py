"""`unleash demo`: the whole pipeline on a pair that ships with nothing but code.

A synthetic vessel tree is deformed by a known smooth, breathing-like field; registering the two
with the shipped model must recover that field, which the demo measures and reports."""
from __future__ import annotations

import json

import numpy as np

from .geometry import read_volume, write_image
from .jobs import Progress
from .output_folder import atomic_output_dir
from .outputs import FILES
from .pipeline import RegisterOptions, register_files
from .preview import overview_png
from .synthetic import example_pair, true_tre_mm
from .transforms import displacement_image, read_displacement_on

MAX_DISPLACEMENT_MM = 12.0


def run_demo(output_dir, options: RegisterOptions, progress: Progress, overwrite: bool = False) -> dict:
    with atomic_output_dir(output_dir, overwrite, inputs=[options.model]) as staging:
        progress.log(f"making a synthetic vessel pair with a known deformation "
                     f"(up to {MAX_DISPLACEMENT_MM:.0f} mm, seed {options.seed})")
        fixed, moving, true_u = example_pair(seed=options.seed, max_displacement_mm=MAX_DISPLACEMENT_MM)
        write_image(fixed.to_sitk(), staging / "fixed.nii.gz")
        write_image(moving.to_sitk(), staging / "moving.nii.gz")
        write_image(displacement_image(true_u, fixed.grid), staging / "true_displacement.nii.gz")
        report = register_files(staging / "fixed.nii.gz", staging / "moving.nii.gz", staging / "registration",
                                RegisterOptions(**{**options.__dict__, "landmarks": None}), progress)
        estimated_u = read_displacement_on(staging / "registration" / FILES["displacement"], fixed.grid)
        vessels = fixed.array > 0
        summary = {
            "true_error_mm_before": true_tre_mm(np.zeros_like(true_u), true_u, vessels),
            "true_error_mm_after": true_tre_mm(estimated_u, true_u, vessels),
            "folding_fraction": report["folding_fraction"],
            "inverse_consistency_error_mm": report["inverse_consistency_error_mm"],
            "seconds": report["seconds"],
            "device": report["device"],
            "model": report["model"],
        }
        warped = read_volume(staging / "registration" / FILES["warped_moving"])
        jacobian = read_volume(staging / "registration" / FILES["jacobian_determinant"]).array
        overview_png(staging / "overview.png", fixed, moving, warped, estimated_u, jacobian,
                     title=f"unleash demo: error on the vessels {summary['true_error_mm_before']['mean']:.2f} mm -> "
                           f"{summary['true_error_mm_after']['mean']:.2f} mm")
        (staging / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    if progress.mode != "json":
        before, after = summary["true_error_mm_before"], summary["true_error_mm_after"]
        print(f"error against the known deformation, over the fixed vessels: {before['mean']:.2f} mm before, "
              f"{after['mean']:.2f} mm after (median {after['p50']:.2f} mm)")
        print(f"folding {100 * summary['folding_fraction']:.4f} % of voxels; inverse consistency "
              f"{summary['inverse_consistency_error_mm']['mean']:.3f} mm; "
              f"{summary['seconds']['total']:.1f} s on {summary['device']}")
        print(f"wrote {output_dir}/overview.png, {output_dir}/registration/ and {output_dir}/demo.json")
    return {**summary, "output": str(output_dir)}
