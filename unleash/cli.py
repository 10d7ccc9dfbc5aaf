"""Argument parsing only: every command calls an engine function and reports through `Progress`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from .errors import UserError
from .jobs import Interrupted, Progress, signals_interrupt
from .jobspec import JOBS, EngineDefault, Job
from .paths import require_utf8
from .preflight import engine_options, preflight


class Parser(argparse.ArgumentParser):
    """Bad arguments get one line, like every other refusal (argparse's own is the usage and the error)."""

    def error(self, message: str):
        self.exit(2, f"unleash: error: {message} (see {self.prog} --help)\n")


def add_job_parser(commands, job: Job):
    """A subcommand whose arguments are `job`'s options, in their order."""
    parser = commands.add_parser(job.name, help=job.help, description=job.description)
    for option in job.options:
        flags = [option.flag] if option.positional else [f for f in (option.short, option.flag) if f]
        settings = {"help": option.help}
        if not option.positional:
            settings.update(dest=option.dest, default=option.parser_default())
            if option.required:
                settings["required"] = True
        if option.kind == "flag":
            settings["action"] = "store_true"
        else:
            settings.update(metavar=option.metavar, choices=option.choices or None)
            if option.kind == "list":
                settings["action"] = "append"
            elif option.kind in ("int", "float"):
                settings["type"] = {"int": int, "float": float}[option.kind]
        parser.add_argument(*flags, **settings)
    return parser


def _register_options(args):
    from .pipeline import RegisterOptions

    return engine_options(RegisterOptions, args)


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
    failed = summary["overall"]["failed"]
    if failed:
        return _fail(progress, f"{failed} of {len(summary['pairs'])} pairs failed; their errors are in "
                               f"{summary['files'][0]}", 1)
    return 0


def cmd_demo(args, progress: Progress) -> int:
    from .demo import run_demo

    summary = run_demo(args.output, _register_options(args), progress, overwrite=args.overwrite)
    progress.result(**summary)
    return 0


def cmd_models(args, progress: Progress) -> int:
    from .modelfile import DEFAULTS, read_metadata

    paths = args.paths or [str(p) for p in DEFAULTS.values() if p.is_file()]
    for path in paths:
        meta = read_metadata(path)
        print(json.dumps({"path": str(path), **meta}, indent=2 if args.verbose else None))
    return 0


def cmd_sample(args, progress: Progress) -> int:
    from .sample import SampleOptions, sample_files

    report = sample_files(args.count, args.output, engine_options(SampleOptions, args), progress, args.overwrite)
    progress.result(**report)
    if progress.mode != "json":
        print(f"wrote {report['count']} pairs to {report['output']}/ in {report['seconds']['total']:.1f} s "
              f"({report['seconds']['per_pair']:.1f} s a pair) on {report['device']}")
    return 0


def cmd_encode(args, progress: Progress) -> int:
    from .encode import encode_folder

    report = encode_folder(args.folder, args.output, args.model, args.device, progress, args.overwrite)
    progress.result(**report)
    if progress.mode != "json":
        print(f"wrote {report['files']['tokens']} ({len(report['pairs'])} token grids) in {report['seconds']:.1f} s")
    return 0


def cmd_train(args, progress: Progress) -> int:
    from .train.run import TrainOptions, train_command

    summary = train_command(engine_options(TrainOptions, args), progress)
    if summary.pop("rank"):
        return 0  # the other processes of a torchrun job: rank 0 reports
    if summary["stopped"]:
        if progress.mode != "json":
            print(f"stopped at step {summary['step']}/{summary['total']}; continue with: "
                  f"unleash train {args.kind} --resume {summary['run']}")
        return 0
    progress.result(**summary)
    if progress.mode != "json":
        print(f"trained {args.kind} for {summary['step']} steps in {summary['seconds']:.0f} s: {summary['model']}")
    return 0


# the engine function that runs each job
RUNS = {"register": cmd_register, "evaluate": cmd_evaluate, "demo": cmd_demo, "sample": cmd_sample,
        "encode": cmd_encode, "train": cmd_train}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="unleash",
                                     description="Inverse-consistent lung registration and synthetic vessel pairs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('unleash').__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("register", "evaluate", "demo"):
        add_job_parser(commands, JOBS[name]).set_defaults(run=RUNS[name])

    models = commands.add_parser("models", help="show the config and card of model files (default: the shipped ones)")
    models.add_argument("paths", nargs="*")
    models.add_argument("-v", "--verbose", action="store_true")
    models.set_defaults(run=cmd_models, progress="none")

    for name in ("sample", "encode", "train"):
        add_job_parser(commands, JOBS[name]).set_defaults(run=RUNS[name])
    return parser


def resolve_engine_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The options left to an engine default get its value (this imports the engine: after the checks)."""
    for name, value in vars(args).items():
        if isinstance(value, EngineDefault):
            setattr(args, name, value.value())
    return args


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = Progress(getattr(args, "progress", "bar"))
    try:
        with signals_interrupt():
            for value in vars(args).values():  # paths: checked before any library sees them
                for text in value if isinstance(value, list) else [value]:
                    if isinstance(text, str):
                        require_utf8(text)
            preflight(args)
            return args.run(resolve_engine_defaults(args), progress)
    except UserError as exc:
        return _fail(progress, str(exc), 2)
    except Interrupted as exc:
        return _fail(progress, f"interrupted by {exc}", 128 + exc.number)
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
