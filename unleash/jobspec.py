"""Every job's options, defined once: the CLI's parser and the command lines that the Slicer modules
launch are both derived from these lists, and the modules take their choices and defaults from here.

Standard library only (importing it never loads torch), so a Slicer module can import it at start-up.
An option's `dest` is its keyword everywhere: the argparse attribute, the keyword of the command
builders in jobs.py, and the field of the engine's options dataclass (RegisterOptions, SampleOptions,
TrainOptions).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, replace

# The kinds and schedules that the modules offer and the engine checks.
INPUT_KINDS = ("auto", "vessels", "ct")  # vessel label maps or lung CTs; auto: decided from the voxel values
REFINEMENTS = ("io", "tta", "none")
# Where the refinement starts: the network's prediction, or the identity (instance optimisation
# alone). Instance optimisation starts from the identity by default: with the shipped CPU-trained
# network it measured better on all 17 val pairs (2.88 vs 3.22 mm mean TRE, same time; README).
# Test-time adaptation, and no refinement at all, need the network.
STARTS = ("network", "identity")
SCHEDULES = {"paper": 256, "maskgit": 12}  # schedule -> its default number of steps (benchmarks/sampler.py)
DEFAULT_SCHEDULE = "maskgit"
DEFAULT_TEMPERATURE = 0.9
DEFAULT_SAMPLE_BATCH = 8
TRAIN_KINDS = ("registration", "vqae", "denoiser")
# Each kind's `training` defaults (the rest of TrainingSettings keeps its own defaults).
TRAINING_DEFAULTS = {
    "registration": {"iterations": 1500, "batch_size": 1, "learning_rate": 1e-3, "warmup": 30,
                     "validate_every": 250, "checkpoint_every": 100},
    "vqae": {"iterations": 10000, "batch_size": 2, "learning_rate": 3e-4, "warmup": 200,
             "validate_every": 500, "checkpoint_every": 250},
    "denoiser": {"iterations": 20000, "batch_size": 8, "learning_rate": 2e-4, "warmup": 500,
                 "validate_every": 500, "checkpoint_every": 250},
}
# What `unleash register` writes into OUTDIR, by role (the Slicer module loads them by these keys).
REGISTRATION_FILES = {"displacement": "displacement.nii.gz", "inverse_displacement": "inverse_displacement.nii.gz",
                      "warped_moving": "warped_moving.nii.gz", "jacobian_determinant": "jacobian_determinant.nii.gz",
                      "report": "report.json"}
DEFAULT_DEVICE = "auto"  # a GPU if there is one, else the CPU
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
PROGRESS_MODES = ("bar", "json", "none")
MAX_ADAPT_ITERS = 100_000  # refinement iterations: the default is a few hundred; beyond this a run takes days
MAX_SEED = 2 ** 63 - 1  # torch's and numpy's generators take any seed in 0..MAX_SEED


@dataclass(frozen=True)
class EngineDefault:
    """A default that the engine computes (e.g. from a torch-side config): `module:NAME`; a command line
    leaves the option out to get it. It is looked up when the command runs (cli.main, after the inputs
    are checked) or when the help shows it: building the parser and refusing bad input need no torch."""

    where: str

    def value(self):
        module, name = self.where.split(":")
        return getattr(importlib.import_module(module), name)

    def __str__(self) -> str:  # the help's %(default)s
        return str(self.value())


@dataclass(frozen=True)
class Option:
    """One option of a job. `flag` "--adapt-iters" (or a positional's name); `kind` str, int, float, flag
    (present or not) or list (the option repeated, one value each); `help` names the default as %(default)s
    (argparse fills it in, so the text always shows the default in force)."""

    flag: str
    dest: str
    kind: str = "str"
    default: object = None
    choices: tuple = ()
    help: str | None = None
    metavar: str | None = None
    short: str | None = None
    required: bool = False

    @property
    def positional(self) -> bool:
        return not self.flag.startswith("-")

    def parser_default(self):
        """The value the parser gives when the option is left out (an engine default as it is: cli.main
        looks it up once the inputs are checked)."""
        return self.default

    def arguments(self, value) -> list[str]:
        """This option's part of a command line for `value` (None or "": left to the engine's default)."""
        if self.choices and value is not None and value not in self.choices:
            raise ValueError(f"{self.dest} must be one of {', '.join(map(str, self.choices))}, not {value!r}")
        if self.positional:
            if value is None:
                raise ValueError(f"{self.dest} is needed")
            return [str(value)]
        if self.kind == "flag":
            return [self.flag] if value else []
        if self.kind == "list":
            return [part for item in value or () for part in (self.flag, str(item))]
        return [] if value is None or value == "" else [self.flag, str(value)]


@dataclass(frozen=True)
class Job:
    name: str
    help: str
    description: str
    options: tuple[Option, ...]

    def option(self, dest: str) -> Option:
        return next(o for o in self.options if o.dest == dest)


DEVICE = Option("--device", "device", default=DEFAULT_DEVICE, help=f"{DEVICE_HELP} (default: %(default)s)")
SEED = Option("--seed", "seed", "int", default=0, help="random seed (default: 0)")
PROGRESS = Option("--progress", "progress", default="bar", choices=PROGRESS_MODES,
                  help="bar: progress on stderr; json: one JSON event per line on stdout (default: bar)")
OUTPUT = Option("--output", "output", short="-o", required=True, metavar="OUTDIR")
OVERWRITE = Option("--overwrite", "overwrite", "flag", default=False,
                   help="replace OUTDIR if it exists and is not empty")

REGISTER_OPTIONS = (
    Option("--model", "model", help="registration model file (default: the shipped model)"),
    Option("--inputs", "inputs", default="auto", choices=INPUT_KINDS,
           help="vessel label maps or lung CTs (default: auto, decided from the voxel values)"),
    Option("--adapt-iters", "adapt_iters", "int", default=EngineDefault("unleash.pipeline:DEFAULT_ADAPT_ITERS"),
           help="refinement iterations on the pair (default: %(default)s; 0: network only)"),
    Option("--refinement", "refinement", default="io", choices=REFINEMENTS,
           help="io: instance optimisation of the field (default); tta: test-time adaptation of the network"),
    Option("--start", "start", choices=STARTS,
           help="identity: instance optimisation alone (default with --refinement io); "
                "network: refine the network's prediction (default with tta, or with --adapt-iters 0)"),
    DEVICE, SEED, PROGRESS,
)

JOBS = {job.name: job for job in (
    Job("register", "register a moving scan to a fixed scan",
        "Register MOVING to FIXED (vessel label maps or lung CTs) and write " +
        ", ".join(list(REGISTRATION_FILES.values())[:-1]) + f" and {list(REGISTRATION_FILES.values())[-1]} into OUTDIR.",
        (Option("fixed", "fixed"), Option("moving", "moving"), OUTPUT,
         Option("--landmarks", "landmarks", help="CSV of corresponding voxel indices (fixed_i,...,moving_k) for TRE"),
         OVERWRITE) + REGISTER_OPTIONS),
    Job("evaluate", "register every pair of a folder and tabulate TRE and deformation quality",
        "Register each case_NNN_1/_2 (or pair_NNNN_fixed/_moving) pair in FOLDER; landmarks are read from "
        "FOLDER_landmarks/case_NNN.csv. Writes evaluation.csv and evaluation.json into OUTDIR.",
        (Option("folder", "folder"), OUTPUT,
         Option("--landmarks-folder", "landmarks_folder",
                help="folder of <case>.csv landmark files (default: FOLDER_landmarks)"),
         Option("--limit", "limit", "int", help="only the first N pairs"),
         replace(OVERWRITE, help=None)) + REGISTER_OPTIONS),
    Job("demo", "register a built-in synthetic example pair with the shipped model",
        "Makes a synthetic vessel tree and a known smooth deformation, registers the pair with the shipped model, "
        "reports the error against the known truth and writes overview.png with the registration outputs.",
        (replace(OUTPUT, required=False, default="unleash-demo", help="(default: ./unleash-demo)"),
         replace(OVERWRITE, help=None)) + REGISTER_OPTIONS),
    Job("sample", "sample synthetic fixed/moving vessel pairs with a sampler model",
        "Sample N synthetic pairs of vessel label maps into OUTDIR: pair_NNNN_fixed.nii.gz and "
        "pair_NNNN_moving.nii.gz (uint8, 1 mm, centred at 0 mm), samples.json and preview.png. OUTDIR can be used "
        "directly as registration training data.",
        (Option("--count", "count", "int", short="-n", required=True, metavar="N", help="number of pairs"),
         OUTPUT,
         Option("--model", "model", help="sampler model file (default: the shipped sampler)"),
         Option("--schedule", "schedule", default=DEFAULT_SCHEDULE, choices=tuple(SCHEDULES),
                help="paper: random unmasking, the reference; maskgit: confidence-ordered, cosine, fewer steps "
                     "(default: %(default)s)"),
         Option("--steps", "steps", "int", help="denoiser passes (default: " +
                ", ".join(f"{steps} for {name}" for name, steps in SCHEDULES.items()) + ")"),
         Option("--temperature", "temperature", "float", default=DEFAULT_TEMPERATURE,
                help="sampling temperature of the token distribution (default: %(default)s)"),
         Option("--batch-size", "batch_size", "int", default=DEFAULT_SAMPLE_BATCH,
                help="pairs sampled together (default: %(default)s)"),
         Option("--probabilities", "probabilities", "flag", default=False,
                help="also write the soft maps pair_NNNN_fixed/moving_probability.nii.gz (float32)"),
         OVERWRITE, DEVICE, SEED, PROGRESS)),
    Job("encode", "turn a folder of vessel pairs into token grids with a trained VQ-autoencoder",
        "Encode each case_NNN_1/_2 or pair_NNNN_fixed/_moving pair of FOLDER into OUTDIR/tokens.npz (int16 token "
        "grids, the denoiser's training data, in the layout of the paper's token files) and OUTDIR/encode.json "
        "(reconstruction Dice).",
        (Option("folder", "folder"), OUTPUT,
         Option("--model", "model", required=True,
                help="a 'vqae' model file, or a 'sampler' model file (its VQ-autoencoder)"),
         OVERWRITE, DEVICE, PROGRESS)),
    Job("train", "train the registration network, the VQ-autoencoder or the denoiser",
        "Train a model into RUNDIR (config.json, metrics.csv, checkpoints/, previews/, best.safetensors, "
        "model.safetensors). SIGINT/SIGTERM saves a resumable checkpoint and exits 0; continue with --resume. "
        "Several GPUs or machines: torchrun --nproc_per_node N -m unleash train ...",
        (Option("kind", "kind", choices=TRAIN_KINDS),
         Option("--data", "data", "list", metavar="DIR[:WEIGHT]",
                help="folder of case_NNN_1/_2 or pair_NNNN_fixed/_moving pairs (denoiser: a tokens.npz file or a "
                     "folder holding one); repeat to mix sources, sampled in proportion to WEIGHT (default 1)"),
         Option("--val", "validation", "list", metavar="DIR",
                help="held-out pairs (registration: with DIR_landmarks/ for TRE) or token file; repeatable"),
         Option("--out", "out", metavar="RUNDIR", help="a new (or empty) run folder"),
         Option("--resume", "resume", metavar="RUNDIR", help="continue a stopped run from its last checkpoint"),
         Option("--config", "config", metavar="FILE", help="JSON with any of the sections model, training, task"),
         Option("--iterations", "iterations", "int", help="training steps (on --resume: a new, higher total)"),
         Option("--batch-size", "batch_size", "int", help="the global batch (split over torchrun processes)"),
         Option("--lr", "learning_rate", "float", metavar="LR", help="peak learning rate"),
         Option("--vqae", "vqae", metavar="FILE", help="denoiser only: the VQ-AE (or sampler) model file whose tokens "
                                                       "it learns; the result is then a sampler model for `unleash sample`"),
         Option("--tokens", "tokens", metavar="FILE", help="vqae only: train the codebook and decoder to turn these given "
                                                           "token grids (matched to the pairs by name) into their pairs"),
         Option("--init", "init", metavar="FILE", help="start from this model file's weights and model config "
                                                       "(fine-tuning, e.g. the shipped model on your own pairs) instead "
                                                       "of a random start"),
         replace(SEED, default=None),  # None: the config's seed
         DEVICE, PROGRESS)),
)}
