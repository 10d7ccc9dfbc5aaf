"""What the CLI checks of a command's inputs and outputs before it imports the engine (torch and
the models take seconds to import): bad input is refused at once, in well under 2 s. Every check
but the last runs before torch is imported; the last, whether a model file's or a checkpoint's
weights fit the network of their config, imports torch and builds the network on the meta device
(shapes only). The engine functions run the same checks again for callers from Python; a file
that was verified once is not read again for it (image_files, geometry.read_volume)."""
from __future__ import annotations

import math
import re
import sys
from dataclasses import fields
from pathlib import Path

from .datasets import find_pairs, read_landmarks
from .errors import UserError
from .geometry import check_image_file, check_overlap, read_volume
from .input_kind import check_voxel_values, detect_input_kind
from .jobspec import DEVICE_HELP, MAX_ADAPT_ITERS, MAX_SEED, REFINEMENTS, SCHEDULES, STARTS, EngineDefault
from .modelfile import DEFAULTS, check_model_file, require_encoder
from .output_folder import check_output_dir
from .sample_space import check_free_space, sample_grid
from .train.data import check_pairs

# the model file kinds that a command's --model takes
MODEL_KINDS = {"register": ("registration",), "evaluate": ("registration",), "demo": ("registration",),
               "sample": ("sampler",), "encode": ("vqae", "sampler")}
DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
NO_CUDA = "device '{}' was asked for, but CUDA is not available on this machine (use --device cpu)"
NO_MPS = "device 'mps' was asked for, but Apple's Metal backend is not available here"
# Linux: one of these exists wherever a CUDA (or ROCm) driver is loaded, also in containers and WSL2
GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def engine_options(options_class, args):
    """An engine options dataclass from the parsed arguments of the same names."""
    return options_class(**{f.name: getattr(args, f.name) for f in fields(options_class) if hasattr(args, f.name)})


def check_device(name: str | None) -> str:
    """The --device name, normalised; UserError for a name that is no device and for a GPU that this
    machine cannot have. Whether the driver sees the GPU is left to torch (devices.resolve_device)."""
    name = (name or "auto").strip().lower()
    if not DEVICE_NAME.fullmatch(name):
        raise UserError(f"'{name}' is not a device name (use {DEVICE_HELP})")
    if name == "mps" and sys.platform != "darwin":
        raise UserError(NO_MPS)
    if name.startswith("cuda") and sys.platform.startswith("linux") and not any(map(Path.exists, map(Path, GPU_DRIVER_FILES))):
        raise UserError(NO_CUDA.format(name))
    return name


def register_start(refinement: str, start: str | None, adapt_iters: int | None) -> str:
    """Where the refinement starts (`start`, or the default for the refinement); UserError for options
    that cannot work together. `adapt_iters` None: the engine's default, which is above 0."""
    if refinement not in REFINEMENTS:
        raise UserError(f"unknown refinement {refinement!r} (use {', '.join(REFINEMENTS)})")
    if adapt_iters is not None and not 0 <= adapt_iters <= MAX_ADAPT_ITERS:
        raise UserError(f"--adapt-iters must lie in 0..{MAX_ADAPT_ITERS} (got {adapt_iters})")
    refined = refinement == "io" and (adapt_iters is None or adapt_iters > 0)
    start = start or ("identity" if refined else "network")
    if start not in STARTS:
        raise UserError(f"unknown start {start!r} (use {', '.join(STARTS)})")
    if start == "identity" and not refined:
        raise UserError("--start identity needs --refinement io and --adapt-iters above 0: "
                        "without instance optimisation the result would be the identity")
    return start


def check_sample_options(count: int, schedule: str, steps: int | None, temperature: float, batch_size: int) -> None:
    if count < 1:
        raise UserError(f"-n must be 1 or more (got {count})")
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r} (use {', '.join(SCHEDULES)})")
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be 1 or more (got {steps})")
    if not 0 < temperature < math.inf:
        raise UserError(f"--temperature must be above 0 and finite (got {temperature})")
    if batch_size < 1:
        raise UserError(f"--batch-size must be 1 or more (got {batch_size})")


def check_steps(steps: int | None, tokens: int) -> None:
    """More denoiser passes than the grid has tokens would unmask nothing in the passes beyond them."""
    if steps is not None and steps > tokens:
        raise UserError(f"--steps must lie in 1..{tokens}, the sampler's number of tokens (got {steps})")


def check_seed(seed: int | None) -> None:
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must lie in 0..{MAX_SEED} (got {seed})")


def check_voxels(path: str, inputs: str) -> None:
    """The scan's voxel values are finite, not constant and (with --inputs auto) a vessel mask's or a CT's;
    the volume is kept for the registration's read."""
    volume = read_volume(path, keep=True)
    try:
        detect_input_kind(volume) if inputs == "auto" else check_voxel_values(volume)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def preflight(args) -> None:
    """Check the parsed arguments of a command (argparse's namespace) before its work starts."""
    given = vars(args)
    command = given.get("command")
    if "device" in given:
        check_device(args.device)
    check_seed(given.get("seed"))
    if "refinement" in given:  # register, evaluate, demo
        register_start(args.refinement, args.start, None if isinstance(args.adapt_iters, EngineDefault) else args.adapt_iters)
    given_config = None
    if given.get("model") and command in MODEL_KINDS:
        _, given_config = check_model_file(args.model, *MODEL_KINDS[command])
    if command == "register":
        check_output_dir(args.output, args.overwrite, [args.fixed, args.moving, args.landmarks, args.model])
        fixed, moving = check_image_file(args.fixed), check_image_file(args.moving)
        check_overlap(fixed, moving, args.fixed, args.moving)
        if args.landmarks:
            read_landmarks(args.landmarks, fixed, moving)
        check_voxels(args.fixed, args.inputs)
        check_voxels(args.moving, args.inputs)
    elif command == "evaluate":
        find_pairs(args.folder, args.landmarks_folder, args.limit)
        check_output_dir(args.output, args.overwrite, [args.folder, args.landmarks_folder, args.model])
    elif command == "sample":
        check_sample_options(args.count, args.schedule, args.steps, args.temperature, args.batch_size)
        output = check_output_dir(args.output, args.overwrite, [args.model])
        sampler = given_config
        if sampler is None and DEFAULTS["sampler"].is_file():  # a missing shipped sampler is the engine's to explain
            _, sampler = check_model_file(DEFAULTS["sampler"], "sampler")
        if sampler is not None:
            check_steps(args.steps, sampler.denoiser.tokens)
            check_free_space(output.resolve().parent, args.count, sample_grid(sampler.vqae), args.probabilities)
    elif command == "demo":
        check_output_dir(args.output, args.overwrite, [args.model])
    elif command == "encode":
        check_pairs([find_pairs(args.folder)])
        require_encoder(args.model, given_config)
        check_output_dir(args.output, args.overwrite, [args.folder, args.model])
    elif command == "train":
        from .train.runconfig import TrainOptions, check_run

        run = check_run(engine_options(TrainOptions, args))
        from .train.state import check_fits  # torch: after every other check

        check_fits(run)
    if given_config is not None:
        from .checkpoints import check_fit  # torch: after every other check

        check_fit(args.model, given_config)
