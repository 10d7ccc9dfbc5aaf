"""A training run's configuration from the command line's options, and every check of a run that
can be made without torch: the config (defaults < --config FILE < options), the run folder, the
model files it starts from, the checkpoint it resumes and its metrics. `unleash train` runs these
before torch is imported (preflight), so a bad setting is refused at once; train.run runs them
again and then builds the networks."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..jobspec import DEFAULT_DEVICE, TRAINING_DEFAULTS
from ..modelfile import check_model_file
from ..models.config import CONFIGS, SamplerConfig
from .data import Source, check_pairs, pair_files, parse_source, read_token_grids
from .rundir import RunFolder, check_new_run_dir, kept_metrics, read_run_config
from .settings import TASKS, TrainingSettings, dataclass_from, merged, read_config_file
from .statefile import StateHeader, read_state_header


@dataclass
class TrainOptions:
    kind: str
    data: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    out: str | None = None
    resume: str | None = None
    config: str | None = None
    iterations: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    seed: int | None = None
    device: str = DEFAULT_DEVICE
    vqae: str | None = None  # denoiser only: the VQ-AE whose tokens it learns; the result is then a sampler
    tokens: str | None = None  # vqae only: train a decoder for these given tokens (task.token_file)
    init: str | None = None  # a model file of this kind to start from (fine-tuning): its weights and model config

    def __post_init__(self):  # argparse leaves an option given no times None
        self.data, self.validation = list(self.data or []), list(self.validation or [])


def default_config(kind: str) -> dict:
    return {"kind": kind, "model": CONFIGS[kind]().to_dict(), "training": asdict(TrainingSettings(**TRAINING_DEFAULTS[kind])),
            "task": asdict(TASKS[kind]())}


def new_run_config(options: TrainOptions, init_config=None) -> dict:
    """Defaults < --config FILE < command-line options (checked by parse_config before anything is written).
    `init_config`: the model config of the --init file, which fixes the model."""
    config = default_config(options.kind)
    if options.config:
        values = read_config_file(options.config)
        if values.get("kind", options.kind) != options.kind:
            raise UserError(f"{options.config}: is a config for {values['kind']!r}, not for {options.kind!r}")
        if options.init and "model" in values:
            raise UserError(f"{options.config}: has a model section, but --init fixes the model (its file's config)")
        config = merged(config, values)
    if init_config is not None:
        config["model"] = init_config.to_dict()
        config["init"] = str(Path(options.init).resolve())
    overrides = {"iterations": options.iterations, "batch_size": options.batch_size,
                 "learning_rate": options.learning_rate, "seed": options.seed}
    config["training"].update({key: value for key, value in overrides.items() if value is not None})
    if not options.data:
        raise UserError("no training data: give --data DIR (or DIR:WEIGHT, several times to mix sources)")
    config["data"] = [parse_source(text).to_json() for text in options.data]
    config["validation"] = [parse_source(text).to_json() for text in options.validation]
    if options.tokens:
        if options.kind != "vqae":
            raise UserError("--tokens belongs to VQ-AE training (a decoder for given tokens)")
        config["task"]["token_file"] = str(Path(options.tokens).resolve())
        config["model"]["encoder"] = False
    if options.vqae:
        if options.kind != "denoiser":
            raise UserError("--vqae belongs to denoiser training (the VQ-AE whose tokens the denoiser learns)")
        config["vqae"] = str(Path(options.vqae).resolve())
    return config


def parse_config(config: dict):
    """(model config, training settings, task settings) of a run config, checked strictly."""
    kind = config["kind"]
    try:
        model_config = CONFIGS[kind].from_dict(config["model"])
    except (ValueError, TypeError) as exc:
        raise UserError(f"model config: {exc}") from None
    return (model_config, dataclass_from(TrainingSettings, config["training"], "training"),
            dataclass_from(TASKS[kind], config["task"], "task"))


def resume_config(options: TrainOptions) -> dict:
    given = [flag for flag, value in (("--data", options.data), ("--val", options.validation), ("--config", options.config),
                                      ("--batch-size", options.batch_size), ("--lr", options.learning_rate),
                                      ("--seed", options.seed), ("--vqae", options.vqae), ("--tokens", options.tokens),
                                      ("--init", options.init), ("--out", options.out)) if value]
    if given:
        raise UserError(f"a resumed run keeps the settings in its config.json; drop {', '.join(given)} "
                        f"(only --iterations, --device and --progress may change)")
    config = read_run_config(options.resume)
    if config.get("kind") != options.kind:
        raise UserError(f"{options.resume}: is a {config.get('kind')!r} run, not a {options.kind!r} run")
    if options.iterations is not None:
        config["training"]["iterations"] = options.iterations
    return config


def init_model_config(path: str, kind: str):
    """The model config of the model file a run starts from; a file of another kind is refused, but a
    sampler file gives its denoiser's or its VQ-autoencoder's."""
    meta, config = check_model_file(path, *((kind, "sampler") if kind in ("denoiser", "vqae") else (kind,)))
    return getattr(config, kind) if meta["config"]["kind"] == "sampler" else config


def check_vqae_file(path: str, denoiser_config) -> None:
    """The VQ-AE named by a denoiser run (a 'vqae' or 'sampler' model file) fits the denoiser."""
    vqae_config = init_model_config(path, "vqae")
    try:
        SamplerConfig(vqae=vqae_config, denoiser=denoiser_config)
    except ValueError as exc:
        raise UserError(f"{path}: does not fit this denoiser: {exc}") from None


def check_data(config: dict, model_config, task) -> None:
    """The data folders hold what the kind trains on: token files (found here; the trainer reads them), or
    pairs (each read and checked)."""
    folders = [Path(entry["path"]) for entry in config["data"] + config["validation"]]
    if config["kind"] == "denoiser":
        for folder in folders:
            read_token_grids(folder, model_config.codebook_size, model_config.token_shape_ijk)
        return
    check_pairs(pair_files([Source(folder) for folder in folders]))
    if getattr(task, "token_file", None):
        read_token_grids(Path(task.token_file), model_config.codebook_size, model_config.token_shape_ijk)


@dataclass
class CheckedRun:
    """A run's config and settings, checked; what it resumes from or starts from."""

    config: dict
    folder: Path
    model_config: object
    settings: TrainingSettings
    task: object
    resume: StateHeader | None  # the checkpoint a resumed run continues from
    kept: list[dict]  # the rows of metrics.csv up to it
    init: str | None  # the model file whose weights a run starts from (not when a checkpoint is resumed)


def check_run(options: TrainOptions) -> CheckedRun:
    """Everything of a new or resumed run that can be checked before a network is built; UserError otherwise."""
    if options.resume:
        config = resume_config(options)
        folder = Path(options.resume)
        last_state = RunFolder(folder).last_state
        resume = read_state_header(last_state, options.kind) if last_state.is_file() else None
        if resume is not None and options.iterations is not None and options.iterations <= resume.step:
            raise UserError(f"{folder}: the run is at step {resume.step} already; give --iterations above it")
        init = config.get("init") if resume is None else None
        if init:
            init_model_config(init, options.kind)
    else:
        if not options.out:
            raise UserError("give --out RUNDIR for a new run, or --resume RUNDIR to continue one")
        init = options.init
        config = new_run_config(options, init_model_config(init, options.kind) if init else None)
        folder = check_new_run_dir(options.out)
        resume = None
    model_config, settings, task = parse_config(config)
    check_data(config, model_config, task)
    kept = kept_metrics(RunFolder(folder).metrics_path, resume.step) if resume is not None else []
    if config.get("vqae"):
        check_vqae_file(config["vqae"], model_config)
    return CheckedRun(config, folder, model_config, settings, task, resume, kept, init)
