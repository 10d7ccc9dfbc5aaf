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
                           start=args.start, adapt_iters=args.adapt_iters,
                           landmarks=getattr(args, "landmarks", None), seed=args.seed)


def _add_register_options(parser: argparse.ArgumentParser) -> None:
    from .pipeline import DEFAULT_ADAPT_ITERS, REFINEMENTS, STARTS

    parser.add_argument("--model", help="registration model file (default: the shipped model)")
    parser.add_argument("--inputs", choices=["auto", "vessels", "ct"], default="auto",
                        help="vessel label maps or lung CTs (default: auto, decided from the voxel values)")
    parser.add_argument("--adapt-iters", type=int, default=DEFAULT_ADAPT_ITERS,
                        help=f"refinement iterations on the pair (default: {DEFAULT_ADAPT_ITERS}; 0: network only)")
    parser.add_argument("--refinement", choices=REFINEMENTS, default="io",
                        help="io: instance optimisation of the field (default); tta: test-time adaptation of the network")
    parser.add_argument("--start", choices=STARTS,
                        help="identity: instance optimisation alone (default with --refinement io); "
                             "network: refine the network's prediction (default with tta, or with --adapt-iters 0)")
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


def cmd_sample(args, progress: Progress) -> int:
    from .sample import SampleOptions, sample_files

    options = SampleOptions(model=args.model, schedule=args.schedule, steps=args.steps, temperature=args.temperature,
                            batch_size=args.batch_size, seed=args.seed, device=args.device, probabilities=args.probabilities)
    report = sample_files(args.count, args.output, options, progress, args.overwrite)
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

    options = TrainOptions(kind=args.kind, data=args.data or [], validation=args.val or [], out=args.out, resume=args.resume,
                           config=args.config, iterations=args.iterations, batch_size=args.batch_size,
                           learning_rate=args.lr, seed=args.seed, device=args.device, vqae=args.vqae,
                           tokens=args.tokens, init=args.init)
    summary = train_command(options, progress)
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


def _add_train_parser(commands) -> None:
    train = commands.add_parser(
        "train", help="train the registration network, the VQ-autoencoder or the denoiser",
        description="Train a model into RUNDIR (config.json, metrics.csv, checkpoints/, previews/, best.safetensors, "
                    "model.safetensors). SIGINT/SIGTERM saves a resumable checkpoint and exits 0; continue with --resume. "
                    "Several GPUs or machines: torchrun --nproc_per_node N -m unleash train ...")
    train.add_argument("kind", choices=["registration", "vqae", "denoiser"])
    train.add_argument("--data", action="append", metavar="DIR[:WEIGHT]",
                       help="folder of case_NNN_1/_2 or pair_NNNN_fixed/_moving pairs (denoiser: a tokens.npz file or a "
                            "folder holding one); repeat to mix sources, sampled in proportion to WEIGHT (default 1)")
    train.add_argument("--val", action="append", metavar="DIR",
                       help="held-out pairs (registration: with DIR_landmarks/ for TRE) or token file; repeatable")
    train.add_argument("--out", metavar="RUNDIR", help="a new (or empty) run folder")
    train.add_argument("--resume", metavar="RUNDIR", help="continue a stopped run from its last checkpoint")
    train.add_argument("--config", metavar="FILE", help="JSON with any of the sections model, training, task")
    train.add_argument("--iterations", type=int, help="training steps (on --resume: a new, higher total)")
    train.add_argument("--batch-size", type=int, help="the global batch (split over torchrun processes)")
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--vqae", metavar="FILE", help="denoiser only: the VQ-AE (or sampler) model file whose tokens it "
                                                      "learns; the result is then a sampler model for `unleash sample`")
    train.add_argument("--tokens", metavar="FILE", help="vqae only: train the codebook and decoder to turn these given token "
                                                        "grids (matched to the pairs by name) into their pairs")
    train.add_argument("--init", metavar="FILE", help="start from this model file's weights and model config (fine-tuning, "
                                                      "e.g. the shipped model on your own pairs) instead of a random start")
    train.add_argument("--seed", type=int, help="random seed (default: 0)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    train.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                       help="bar: progress on stderr; json: one JSON event per line on stdout (default: bar)")
    train.set_defaults(run=cmd_train)


def _add_sample_parser(commands) -> None:
    from .sample import DEFAULT_SCHEDULE, DEFAULT_TEMPERATURE, SCHEDULES

    sample = commands.add_parser("sample", help="sample synthetic fixed/moving vessel pairs with a sampler model",
                                 description="Sample N synthetic pairs of vessel label maps into OUTDIR: "
                                             "pair_NNNN_fixed.nii.gz and pair_NNNN_moving.nii.gz (uint8, 1 mm, centred "
                                             "at 0 mm), samples.json and preview.png. OUTDIR can be used directly as "
                                             "registration training data.")
    sample.add_argument("-n", "--count", type=int, required=True, metavar="N", help="number of pairs")
    sample.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    sample.add_argument("--model", help="sampler model file (default: the shipped sampler)")
    sample.add_argument("--schedule", choices=list(SCHEDULES), default=DEFAULT_SCHEDULE,
                        help=f"paper: random unmasking, the reference; maskgit: confidence-ordered, cosine, fewer steps "
                             f"(default: {DEFAULT_SCHEDULE})")
    sample.add_argument("--steps", type=int, help="denoiser passes (default: " +
                        ", ".join(f"{steps} for {name}" for name, steps in SCHEDULES.items()) + ")")
    sample.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                        help=f"sampling temperature of the token distribution (default: {DEFAULT_TEMPERATURE})")
    sample.add_argument("--batch-size", type=int, default=8, help="pairs sampled together (default: 8)")
    sample.add_argument("--probabilities", action="store_true",
                        help="also write the soft maps pair_NNNN_fixed/moving_probability.nii.gz (float32)")
    sample.add_argument("--overwrite", action="store_true", help="replace OUTDIR if it exists and is not empty")
    _add_common(sample)
    sample.set_defaults(run=cmd_sample)


def _add_encode_parser(commands) -> None:
    encode = commands.add_parser("encode", help="turn a folder of vessel pairs into token grids with a trained VQ-autoencoder",
                                 description="Encode each case_NNN_1/_2 or pair_NNNN_fixed/_moving pair of FOLDER into "
                                             "OUTDIR/tokens.npz (int16 token grids, the denoiser's training data, in the "
                                             "layout of the paper's token files) and OUTDIR/encode.json (reconstruction Dice).")
    encode.add_argument("folder")
    encode.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    encode.add_argument("--model", required=True, help="a 'vqae' model file, or a 'sampler' model file (its VQ-autoencoder)")
    encode.add_argument("--overwrite", action="store_true", help="replace OUTDIR if it exists and is not empty")
    encode.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    encode.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                        help="bar: progress on stderr; json: one JSON event per line on stdout (default: bar)")
    encode.set_defaults(run=cmd_encode)


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

    _add_sample_parser(commands)
    _add_encode_parser(commands)
    _add_train_parser(commands)
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
