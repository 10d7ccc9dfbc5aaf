"""What the CLI checks of a command's inputs and outputs before it imports the engine (torch and
the models take seconds to import): bad input is refused at once, in well under 2 s. Nothing here
imports torch. The engine functions run the same checks again for callers from Python; a file
that was verified once is not read again for it (image_files)."""
from __future__ import annotations

from .datasets import find_pairs, read_landmarks
from .geometry import check_image_file, check_overlap
from .modelfile import check_model_file
from .output_folder import check_output_dir

# the model file kinds that a command's --model takes
MODEL_KINDS = {"register": ("registration",), "evaluate": ("registration",), "demo": ("registration",),
               "sample": ("sampler",), "encode": ("vqae", "sampler")}


def preflight(args) -> None:
    """Check the parsed arguments of a command (argparse's namespace) before its work starts."""
    given = vars(args)
    command = given.get("command")
    if given.get("model") and command in MODEL_KINDS:
        check_model_file(args.model, *MODEL_KINDS[command])
    if command == "register":
        check_output_dir(args.output, args.overwrite, [args.fixed, args.moving, args.landmarks, args.model])
        fixed, moving = check_image_file(args.fixed), check_image_file(args.moving)
        check_overlap(fixed, moving, args.fixed, args.moving)
        if args.landmarks:
            read_landmarks(args.landmarks, fixed, moving)
    elif command == "evaluate":
        find_pairs(args.folder, args.landmarks_folder, args.limit)
        check_output_dir(args.output, args.overwrite, [args.folder, args.landmarks_folder, args.model])
    elif command in ("sample", "demo"):
        check_output_dir(args.output, args.overwrite, [args.model])
    elif command == "encode":
        find_pairs(args.folder)
        check_output_dir(args.output, args.overwrite, [args.folder, args.model])
    elif command == "train":
        from .train.rundir import check_new_run_dir, read_run_config
        from .train.settings import read_config_file

        if args.resume:
            read_run_config(args.resume)
        elif args.out:
            check_new_run_dir(args.out)
        if args.config:
            read_config_file(args.config)
