"""`unleash evaluate`: register every pair of a folder and tabulate accuracy, deformation quality and time."""
from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .datasets import find_pairs
from .errors import UserError
from .jobs import Progress
from .output_folder import atomic_output_dir
from .pipeline import RegisterOptions, register_files

COLUMNS = ["case", "landmarks", "tre_before_mean", "tre_mean", "tre_p25", "tre_p50", "tre_p75",
           "folding_fraction", "log_jacobian_std_lungs", "inverse_consistency_mean_mm", "seconds", "error"]


def _row(name: str, report: dict) -> dict:
    tre = report.get("tre_after_mm", {})
    return {"case": name, "landmarks": tre.get("count", 0),
            "tre_before_mean": report.get("tre_before_mm", {}).get("mean"),
            "tre_mean": tre.get("mean"), "tre_p25": tre.get("p25"), "tre_p50": tre.get("p50"), "tre_p75": tre.get("p75"),
            "folding_fraction": report["folding_fraction"], "log_jacobian_std_lungs": report["log_jacobian_std_lungs"],
            "inverse_consistency_mean_mm": report["inverse_consistency_error_mm"]["mean"],
            "seconds": report["seconds"]["total"]}


def overall(rows: list[dict], errors_before: list[np.ndarray], errors_after: list[np.ndarray]) -> dict:
    """Landmark-weighted TRE over the registered pairs (as the paper reports it) and per-pair extremes;
    failed pairs are counted, not averaged."""
    done = [r for r in rows if not r.get("error")]
    summary = {"pairs": len(done), "failed": len(rows) - len(done)}
    if done:
        summary.update({"seconds_median": float(np.median([r["seconds"] for r in done])),
                        "folding_fraction_max": max(r["folding_fraction"] for r in done),
                        "inverse_consistency_mean_mm": float(np.mean([r["inverse_consistency_mean_mm"] for r in done]))})
    if errors_after:
        after, before = np.concatenate(errors_after), np.concatenate(errors_before)
        p25, p50, p75 = np.percentile(after, [25, 50, 75])
        summary.update({"landmarks": int(after.size), "tre_before_mean": float(before.mean()), "tre_mean": float(after.mean()),
                        "tre_p25": float(p25), "tre_p50": float(p50), "tre_p75": float(p75)})
    return summary


def evaluate_folder(folder, output_dir, options: RegisterOptions, progress: Progress, landmarks_folder=None,
                    overwrite: bool = False, limit: int | None = None) -> dict:
    """Register every pair; a pair that fails is recorded with its error and the others go on
    (the summary's "failed" counts them, and the CLI exits non-zero)."""
    pairs = find_pairs(folder, landmarks_folder, limit)
    inputs = [folder, landmarks_folder, options.model]
    rows, before, after = [], [], []
    with atomic_output_dir(output_dir, overwrite, inputs) as staging, tempfile.TemporaryDirectory() as scratch:
        for index, files in enumerate(pairs):
            progress.progress("pairs", index, len(pairs), case=files.name)
            case_options = RegisterOptions(**{**options.__dict__, "landmarks": str(files.landmarks) if files.landmarks else None})
            try:
                report = register_files(files.fixed, files.moving, Path(scratch) / files.name, case_options, Progress("none"))
            except (UserError, OSError, RuntimeError, ValueError, MemoryError) as exc:
                message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
                rows.append({"case": files.name, "landmarks": 0, "error": message})
                progress.log(f"{files.name}: failed: {message}")
                continue
            shutil.rmtree(Path(scratch) / files.name, ignore_errors=True)  # the table keeps what is needed
            row = _row(files.name, report)
            rows.append(row)
            progress.log(json.dumps(row))
            if files.landmarks:
                errors = _landmark_errors(report)
                before.append(errors[0])
                after.append(errors[1])
        progress.progress("pairs", len(pairs), len(pairs))
        summary = overall(rows, before, after)
        with open(staging / "evaluation.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, restval="")
            writer.writeheader()
            writer.writerows(rows)
            writer.writerow({"case": "overall", "landmarks": summary.get("landmarks", 0),
                             "tre_before_mean": summary.get("tre_before_mean"), "tre_mean": summary.get("tre_mean"),
                             "tre_p25": summary.get("tre_p25"), "tre_p50": summary.get("tre_p50"),
                             "tre_p75": summary.get("tre_p75"), "folding_fraction": summary.get("folding_fraction_max"),
                             "inverse_consistency_mean_mm": summary.get("inverse_consistency_mean_mm"),
                             "seconds": summary.get("seconds_median"),
                             "error": f"{summary['failed']} of {len(rows)} pairs failed" if summary["failed"] else ""})
        (staging / "evaluation.json").write_text(json.dumps({"options": options.__dict__, "pairs": rows, "overall": summary},
                                                            indent=2, allow_nan=False) + "\n")
    if progress.mode != "json":
        print(format_table(rows, summary))
    return {"overall": summary, "pairs": rows, "files": [str(Path(output_dir) / "evaluation.csv"),
                                                          str(Path(output_dir) / "evaluation.json")]}


def _landmark_errors(report: dict) -> tuple[np.ndarray, np.ndarray]:
    errors = report["landmark_errors_mm"]
    return np.asarray(errors["before"]), np.asarray(errors["after"])


def format_table(rows: list[dict], summary: dict) -> str:
    header = (f"{'case':<10} {'TRE before':>10} {'TRE mean':>9} {'p25':>6} {'p50':>6} {'p75':>6} "
              f"{'folding %':>10} {'ICE mm':>7} {'s':>6}")
    lines = [header, "-" * len(header)]

    def fmt(value, spec):
        return format(value, spec) if value is not None else "-"

    for r in rows:
        if r.get("error"):
            lines.append(f"{r['case']:<10} failed: {r['error']}")
            continue
        lines.append(f"{r['case']:<10} {fmt(r['tre_before_mean'], '10.2f')} {fmt(r['tre_mean'], '9.2f')} "
                     f"{fmt(r['tre_p25'], '6.2f')} {fmt(r['tre_p50'], '6.2f')} {fmt(r['tre_p75'], '6.2f')} "
                     f"{100 * r['folding_fraction']:10.4f} {r['inverse_consistency_mean_mm']:7.3f} {r['seconds']:6.1f}")
    lines.append("-" * len(header))
    if not summary["pairs"]:
        lines.append(f"{'overall':<10} no pair was registered")
        return "\n".join(lines)
    lines.append(f"{'overall':<10} {fmt(summary.get('tre_before_mean'), '10.2f')} {fmt(summary.get('tre_mean'), '9.2f')} "
                 f"{fmt(summary.get('tre_p25'), '6.2f')} {fmt(summary.get('tre_p50'), '6.2f')} "
                 f"{fmt(summary.get('tre_p75'), '6.2f')} {100 * summary['folding_fraction_max']:10.4f} "
                 f"{summary['inverse_consistency_mean_mm']:7.3f} {summary['seconds_median']:6.1f}"
                 + (f"   ({summary['failed']} failed)" if summary["failed"] else ""))
    return "\n".join(lines)
