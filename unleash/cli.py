"""Argument parsing only: every command calls an engine function and reports through `Progress`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from .errors import UserError
from .jobs import Progress


def _add_common(parser: argparse.ArgumentParser, device: bool = True) -> None:
    if device:
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                        help="bar: progress on stderr; json: one JSON event per line on stdout (default: bar)")


def _register_options(args):
    from .pipeline import RegisterOptions

    return RegisterOptions(model=args.model, device=args.device, inputs=args.inputs, refinement=args.refinement,
                           adapt_iters=args.adapt_iters, landmarks=getattr(args, "landmarks", None), seed=args.seed)


def _add_register_options(parser: argparse.ArgumentParser) -> None:
    from .pipeline import DEFAULT_ADAPT_ITERS, REFINEMENTS

    parser.add_argument("--model", help="registration model file (default: the shipped model)")
    parser.add_argument("--inputs", choices=["auto", "vessels", "ct"], default="auto",
                        help="vessel label maps or lung CTs (default: auto, decided from the voxel values)")
    parser.add_argument("--adapt-iters", type=int, default=DEFAULT_ADAPT_ITERS,
                        help=f"refinement iterations on the pair (default: {DEFAULT_ADAPT_ITERS}; 0: network only)")
    parser.add_argument("--refinement", choices=REFINEMENTS, default="io",
                        help="io: instance optimisation of the field (default); tta: test-time adaptation of the network")
    _add_common(parser)


def cmd_register(args, progress: Progress) -> int:
    from .pipeline import register_files

    report = register_files(args.fixed, args.moving, args.output, _register_options(args), progress, args.overwrite)
    progress.result(**report)
    if progress.mode != "json":
        print(_summary(report))
    return 0


def _summary(report: dict) -> str:
    lines = [f"wrote {os.path.dirname(report['files']['report'])}/ in {report['seconds']['total']:.1f} s on {report['device']}",
             f"folding {100 * report['folding_fraction']:.4f} % of voxels, "
             f"std log J (lungs) {report['log_jacobian_std_lungs']:.3f}, "
             f"inverse consistency {report['inverse_consistency_error_mm']['mean']:.3f} mm"]
    if "tre_after_mm" in report:
        lines.append(f"TRE {report['tre_before_mm']['mean']:.2f} mm -> {report['tre_after_mm']['mean']:.2f} mm "
                     f"(median {report['tre_after_mm']['p50']:.2f} mm, {report['tre_after_mm']['count']} landmarks)")
    return "\n".join(lines)


def cmd_evaluate(args, progress: Progress) -> int:
    from .evaluate import evaluate_folder

    summary = evaluate_folder(args.folder, args.output, _register_options(args), progress,
                              landmarks_folder=args.landmarks_folder, overwrite=args.overwrite, limit=args.limit)
    progress.result(**summary)
    return 0


def cmd_demo(args, progress: Progress) -> int:
    from .demo import run_demo

    summary = run_demo(args.output, _register_options(args), progress, overwrite=args.overwrite)
    progress.result(**summary)
    return 0


def cmd_models(args, progress: Progress) -> int:
    from .checkpoints import DEFAULTS, read_metadata

    paths = args.paths or [str(p) for p in DEFAULTS.values() if p.is_file()]
    for path in paths:
        meta = read_metadata(path)
        print(json.dumps({"path": str(path), **meta}, indent=2 if args.verbose else None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unleash",
                                     description="Inverse-consistent lung registration and synthetic vessel pairs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('unleash').__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    register = commands.add_parser("register", help="register a moving scan to a fixed scan",
                                   description="Register MOVING to FIXED (vessel label maps or lung CTs) and write "
                                               "displacement.nii.gz, inverse_displacement.nii.gz, warped_moving.nii.gz, "
                                               "jacobian_determinant.nii.gz and report.json into OUTDIR.")
    register.add_argument("fixed")
    register.add_argument("moving")
    register.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    register.add_argument("--landmarks", help="CSV of corresponding voxel indices (fixed_i,...,moving_k) for TRE")
    register.add_argument("--overwrite", action="store_true", help="replace OUTDIR if it exists and is not empty")
    _add_register_options(register)
    register.set_defaults(run=cmd_register)

    evaluate = commands.add_parser("evaluate", help="register every pair of a folder and tabulate TRE and deformation quality",
                                   description="Register each case_NNN_1/_2 (or pair_NNNN_fixed/_moving) pair in FOLDER; "
                                               "landmarks are read from FOLDER_landmarks/case_NNN.csv. Writes "
                                               "evaluation.csv and evaluation.json into OUTDIR.")
    evaluate.add_argument("folder")
    evaluate.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    evaluate.add_argument("--landmarks-folder", help="folder of <case>.csv landmark files (default: FOLDER_landmarks)")
    evaluate.add_argument("--limit", type=int, help="only the first N pairs")
    evaluate.add_argument("--overwrite", action="store_true")
    _add_register_options(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    demo = commands.add_parser("demo", help="register a built-in synthetic example pair with the shipped model",
                               description="Makes a synthetic vessel tree and a known smooth deformation, registers the "
                                           "pair with the shipped model, reports the error against the known truth and "
                                           "writes overview.png with the registration outputs.")
    demo.add_argument("-o", "--output", default="unleash-demo", metavar="OUTDIR", help="(default: ./unleash-demo)")
    demo.add_argument("--overwrite", action="store_true")
    _add_register_options(demo)
    demo.set_defaults(run=cmd_demo)

    models = commands.add_parser("models", help="show the config and card of model files (default: the shipped ones)")
    models.add_argument("paths", nargs="*")
    models.add_argument("-v", "--verbose", action="store_true")
    models.set_defaults(run=cmd_models, progress="none")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = Progress(getattr(args, "progress", "bar"))
    try:
        return args.run(args, progress)
    except UserError as exc:
        return _fail(progress, str(exc), 2)
    except KeyboardInterrupt:
        return _fail(progress, "interrupted", 130)
    except MemoryError:
        return _fail(progress, "out of memory (try --device cpu, or a machine with more memory)", 3)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(progress, f"{where}{exc.strerror or exc}", 2)
    except Exception as exc:  # an engine bug: one line for users, the traceback with UNLEASH_DEBUG=1
        if os.environ.get("UNLEASH_DEBUG"):
            traceback.print_exc()
        return _fail(progress, f"internal error: {type(exc).__name__}: {exc} (set UNLEASH_DEBUG=1 for details)", 1)


def _fail(progress: Progress, message: str, code: int) -> int:
    progress.error(message)
    sys.stderr.write(f"unleash: error: {message}\n")
    return code
