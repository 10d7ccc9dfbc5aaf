"""`unleash train KIND`: a new run or a resumed one, from the command line's options to the final
model file. All checks (data, config, run folder, checkpoint) come before anything is written, so
bad input leaves the run folder as it was."""
from __future__ import annotations

import datetime
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from .. import __version__
from ..checkpoints import load_model, save_model
from ..devices import describe
from ..errors import UserError
from ..jobs import Progress
from ..modelfile import read_metadata
from ..models.sampler import Sampler
from . import denoiser, distributed, registration, vqae
from .data import Source
from .loop import StopRequest, train
from .runconfig import TrainOptions, check_run
from .rundir import RunFolder
from .state import check_fits, load_state

# kind -> its trainer (its configs: runconfig.default_config)
TRAINERS = {"registration": registration.RegistrationTrainer, "vqae": vqae.VQAETrainer, "denoiser": denoiser.DenoiserTrainer}


def _initial(path: str, kind: str):
    """The network of the model file a run starts from (checked by runconfig.init_model_config); a
    sampler file gives its denoiser or its VQ-autoencoder."""
    if kind in ("denoiser", "vqae") and read_metadata(path)["config"].get("kind") == "sampler":
        return getattr(load_model(path, "sampler")[0], kind)
    return load_model(path, kind)[0]


def _sampler_parts(path: str):
    """(VQ-AE, refiner or None) of the model file a denoiser run names: a sampler file's refiner is kept
    in the sampler files the run writes."""
    if read_metadata(path)["config"].get("kind") == "sampler":
        sampler = load_model(path, "sampler")[0]
        return sampler.vqae, sampler.refiner
    return load_model(path, "vqae")[0], None


def _sources(config: dict, key: str) -> list[Source]:
    return [Source(Path(entry["path"]), entry["weight"]) for entry in config.get(key, [])]


def train_command(options: TrainOptions, progress: Progress, argv: list[str] | None = None) -> dict:
    """Run (or resume) a training job; returns the `result` (or `stopped`) summary."""
    started = time.time()
    checked = check_run(options)
    config, folder_path, model_config, settings = checked.config, checked.folder, checked.model_config, checked.settings
    if options.resume and checked.resume is None:  # stopped before its first checkpoint (e.g. killed)
        progress.log(f"{folder_path}: no checkpoint yet; the run starts again from step 0")
    check_fits(checked)
    initial = _initial(checked.init, options.kind) if checked.init else None
    resume = load_state(checked.resume.path, options.kind) if checked.resume is not None else None
    # a denoiser run names the VQ-AE whose tokens it learns (checked to fit by check_run): the result is a sampler
    sampler_parts = _sampler_parts(config["vqae"]) if config.get("vqae") else None
    processes, device = distributed.start(options.device)
    if settings.batch_size % processes.world:
        raise UserError(f"batch size {settings.batch_size} is not divisible by {processes.world} processes")
    if not processes.writes:
        progress = Progress("none")
    try:
        progress.log(f"{options.kind} training on {describe(device)}"
                     + (f" x {processes.world} processes" if processes.distributed else ""))
        trainer_class = TRAINERS[options.kind]
        try:
            trainer = trainer_class(model_config, checked.task, _sources(config, "data"), _sources(config, "validation"),
                                    device, progress)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        folder = None
        if processes.writes:
            folder = RunFolder.create(folder_path, config, resumed=bool(options.resume))
            columns = ["step", "loss", *trainer.loss_parts, "learning_rate", "gradient_norm", "seconds", "samples_per_s",
                       *(trainer.validation_columns if trainer.metric else [])]
            folder.open_metrics(columns, checked.kept)
        card_base = {"kind": config["kind"], "data": config["data"], "validation": config["validation"],
                     **({"init": config["init"]} if config.get("init") else {}),
                     **trainer.card(), "training": asdict(settings), "task": asdict(checked.task),
                     "hardware": f"{describe(device)}" + (f" x {processes.world}" if processes.distributed else ""),
                     "command": " ".join(["unleash", *(argv if argv is not None else sys.argv[1:])]),
                     "version": __version__, "platform": platform.platform(terse=True)}

        def write_model(network, path, step, validation):
            card = {**card_base, "steps": step, "validation_metrics": validation,
                    "training_seconds": round(time.time() - started), "date": datetime.date.today().isoformat()}
            if sampler_parts is None:
                return save_model(path, network, model_config, card)
            sampler = Sampler.of(sampler_parts[0], network, sampler_parts[1])
            return save_model(path, sampler, sampler.config, {**card, "kind": "sampler", "vqae": config["vqae"]})

        with StopRequest() as stop:
            outcome = train(trainer, settings, folder, processes, device, progress, resume, write_model, stop,
                            initial.state_dict() if initial else None)
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
