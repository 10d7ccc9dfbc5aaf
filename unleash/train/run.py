"""`unleash train KIND`: a new run or a resumed one, from the command line's options to the final
model file. All checks (data, config, run folder, checkpoint) come before anything is written, so
bad input leaves the run folder as it was."""
from __future__ import annotations

import datetime
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..checkpoints import KINDS as MODEL_KINDS
from ..checkpoints import load_model, read_metadata, save_model
from ..devices import describe
from ..errors import UserError
from ..jobs import Progress
from ..jobspec import DEFAULT_DEVICE, TRAINING_DEFAULTS
from ..models.denoiser import DenoiserConfig
from ..models.registration import RegistrationConfig
from ..models.sampler import Sampler, SamplerConfig
from ..models.vqae import VQAEConfig
from . import denoiser, distributed, registration, vqae
from .data import Source, parse_source
from .loop import StopRequest, train
from .rundir import RunFolder, check_new_run_dir, kept_metrics, read_run_config
from .settings import TrainingSettings, dataclass_from, merged, read_config_file
from .state import check_fits, load_state

# kind -> (model config, task settings, trainer); the kind's `training` defaults are jobspec.TRAINING_DEFAULTS
KINDS = {"registration": (RegistrationConfig, registration.RegistrationTask, registration.RegistrationTrainer),
         "vqae": (VQAEConfig, vqae.VQAETask, vqae.VQAETrainer),
         "denoiser": (DenoiserConfig, denoiser.DenoiserTask, denoiser.DenoiserTrainer)}


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


def default_config(kind: str) -> dict:
    config_class, task_class, _ = KINDS[kind]
    return {"kind": kind, "model": config_class().to_dict(), "training": asdict(TrainingSettings(**TRAINING_DEFAULTS[kind])),
            "task": asdict(task_class())}


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
    config_class, task_class, _ = KINDS[config["kind"]]
    try:
        model_config = config_class.from_dict(config["model"])
    except (ValueError, TypeError) as exc:
        raise UserError(f"model config: {exc}") from None
    return (model_config, dataclass_from(TrainingSettings, config["training"], "training"),
            dataclass_from(task_class, config["task"], "task"))


def _initial(path: str, kind: str):
    """(network, model config) of the model file a run starts from; a file of another kind is refused,
    but a sampler file gives its denoiser or its VQ-autoencoder."""
    if kind in ("denoiser", "vqae") and read_metadata(path)["config"].get("kind") == "sampler":
        part = getattr(load_model(path, "sampler")[0], kind)
        return part, part.config
    network, model_config, _ = load_model(path, kind)
    return network, model_config


def _sources(config: dict, key: str) -> list[Source]:
    return [Source(Path(entry["path"]), entry["weight"]) for entry in config.get(key, [])]


def _resume_config(options: TrainOptions) -> dict:
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


def _sampler_vqae(config: dict):
    """The VQ-AE named by a denoiser run (a 'vqae' or 'sampler' model file), checked against the denoiser."""
    path = config.get("vqae")
    if not path:
        return None
    kind = read_metadata(path)["config"].get("kind")
    network = load_model(path, "sampler")[0].vqae if kind == "sampler" else load_model(path, "vqae")[0]
    try:
        SamplerConfig(vqae=network.config, denoiser=DenoiserConfig.from_dict(config["model"]))
    except ValueError as exc:
        raise UserError(f"{path}: does not fit this denoiser: {exc}") from None
    return network


def train_command(options: TrainOptions, progress: Progress, argv: list[str] | None = None) -> dict:
    """Run (or resume) a training job; returns the `result` (or `stopped`) summary."""
    started = time.time()
    initial = None  # (network, model config) of the --init file; a resumed run's checkpoint holds its weights
    if options.resume:
        config = _resume_config(options)
        folder_path = Path(options.resume)
        last_state = RunFolder(folder_path).last_state
        if last_state.is_file():
            resume = load_state(last_state, options.kind)
        else:  # stopped before its first checkpoint (e.g. killed): the run starts again from step 0
            resume = None
            progress.log(f"{folder_path}: no checkpoint yet; the run starts again from step 0")
            initial = _initial(config["init"], options.kind) if config.get("init") else None
        if resume is not None and options.iterations is not None and options.iterations <= resume.step:
            raise UserError(f"{folder_path}: the run is at step {resume.step} already; give --iterations above it")
    else:
        if not options.out:
            raise UserError("give --out RUNDIR for a new run, or --resume RUNDIR to continue one")
        initial = _initial(options.init, options.kind) if options.init else None
        config = new_run_config(options, initial[1] if initial else None)
        folder_path = check_new_run_dir(options.out)
        resume = None
    model_config, settings, task_settings = parse_config(config)
    kept = []
    if resume is not None:  # everything a resume reads is checked before any work and before config.json is rewritten
        with torch.device("meta"):  # shapes only
            check_fits(resume, MODEL_KINDS[options.kind][1](model_config), RunFolder(folder_path).last_state)
        kept = kept_metrics(RunFolder(folder_path).metrics_path, resume.step)
    sampler_vqae = _sampler_vqae(config)
    processes, device = distributed.start(options.device)
    if settings.batch_size % processes.world:
        raise UserError(f"batch size {settings.batch_size} is not divisible by {processes.world} processes")
    if not processes.writes:
        progress = Progress("none")
    try:
        progress.log(f"{options.kind} training on {describe(device)}"
                     + (f" x {processes.world} processes" if processes.distributed else ""))
        trainer_class = KINDS[options.kind][2]
        try:
            trainer = trainer_class(model_config, task_settings, _sources(config, "data"), _sources(config, "validation"),
                                    device, progress)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        folder = None
        if processes.writes:
            folder = RunFolder.create(folder_path, config)
            columns = ["step", "loss", *trainer.loss_parts, "learning_rate", "gradient_norm", "seconds", "samples_per_s",
                       *(trainer.validation_columns if trainer.metric else [])]
            folder.open_metrics(columns, kept)
        card_base = {"kind": config["kind"], "data": config["data"], "validation": config["validation"],
                     **({"init": config["init"]} if config.get("init") else {}),
                     **trainer.card(), "training": asdict(settings), "task": asdict(task_settings),
                     "hardware": f"{describe(device)}" + (f" x {processes.world}" if processes.distributed else ""),
                     "command": " ".join(["unleash", *(argv if argv is not None else sys.argv[1:])]),
                     "version": __version__, "platform": platform.platform(terse=True)}

        def write_model(network, path, step, validation):
            card = {**card_base, "steps": step, "validation_metrics": validation,
                    "training_seconds": round(time.time() - started), "date": datetime.date.today().isoformat()}
            if sampler_vqae is None:
                return save_model(path, network, model_config, card)
            sampler = Sampler.of(sampler_vqae, network)
            return save_model(path, sampler, sampler.config, {**card, "kind": "sampler", "vqae": config["vqae"]})

        with StopRequest() as stop:
            outcome = train(trainer, settings, folder, processes, device, progress, resume, write_model, stop,
                            initial[0].state_dict() if initial else None)
        summary = {"run": str(folder_path), "kind": options.kind, "step": outcome.step, "total": settings.iterations,
                   "loss": outcome.loss, "validation": outcome.validation, "best": outcome.best,
                   "seconds": round(time.time() - started, 1), "stopped": outcome.stopped, "rank": processes.rank}
        if not outcome.stopped:
            final = RunFolder(folder_path)
            if folder is not None:
                write_model(outcome.network, final.final_model, outcome.step, outcome.validation)
            summary["model"] = str(final.final_model)
            summary["best_model"] = str(final.best_model) if trainer.metric else None
        if folder is not None:
            folder.metrics.close()
        distributed.wait_for_all(processes)
        return summary
    finally:
        distributed.stop()
