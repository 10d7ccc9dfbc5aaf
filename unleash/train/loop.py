"""The training loop that the three models share: AdamW with warm-up + cosine learning rate,
autocast (bf16 on CUDA), gradient clipping, periodic checkpoints, validation and previews, and a
clean stop on SIGINT/SIGTERM. What differs between models lives in a Task:

    task.network()            -> the nn.Module to train (built from task.model_config)
    task.sample(rng)          -> one training sample: dict of tensors with a leading batch axis of 1,
                                 already on the device (the data stays there; nothing is copied per step)
    task.loss(network, batch) -> (loss, {part: value}) for a batch (the samples concatenated on axis 0)
    task.metric               -> the validation metric's name (None: no validation data)
    task.higher_is_better     -> whether a larger metric is better
    task.validate(network)    -> {metric: value, ...} on the held-out data
    task.preview(network, path) writes a PNG
"""
from __future__ import annotations

import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..errors import UserError
from ..jobs import Progress
from .data import sample_rng
from .distributed import Processes, total
from .rundir import RunFolder
from .settings import TrainingSettings
from .state import TrainingState, save_state


def learning_rate_at(step: int, settings: TrainingSettings) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `final_lr_fraction` of the peak."""
    if step < settings.warmup:
        return settings.learning_rate * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.iterations - settings.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return settings.learning_rate * (settings.final_lr_fraction + (1 - settings.final_lr_fraction) * cosine)


def autocast_dtype(settings: TrainingSettings, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if settings.precision == "fp32" or (settings.precision == "auto" and device.type != "cuda"):
        return None
    if settings.precision == "fp16":
        return torch.float16
    if settings.precision == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seeds the step's dropout and other torch randomness: repeatable across resumes."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves a checkpoint and returns."""

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame):
        self.requested = True
        self.signal_name = signal.Signals(number).name

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def agreed(self, processes: Processes, device: torch.device) -> bool:
        """True on every process once any process was asked to stop, so all stop at the same step."""
        if not processes.distributed:
            return self.requested
        return bool(total(torch.tensor([float(self.requested)], device=device), processes).item() > 0)


@dataclass
class Outcome:
    network: torch.nn.Module
    step: int
    stopped: bool
    loss: float | None
    validation: dict | None
    best: dict | None


def collate(samples: list[dict]) -> dict:
    return {key: torch.cat([s[key] for s in samples]) for key in samples[0]}


def train(task, settings: TrainingSettings, folder: RunFolder | None, processes: Processes, device: torch.device,
          progress: Progress, resume: TrainingState | None, write_model, stop: StopRequest,
          initial_weights: dict | None = None) -> Outcome:
    """Run steps resume.step .. settings.iterations - 1. `write_model(network, path, step, validation)`
    writes a model file with its card; `folder` is None on the ranks that do not write.
    `initial_weights`: a state dict to start from instead of a random initialisation (fine-tuning)."""
    if settings.batch_size % processes.world:
        raise ValueError(f"batch size {settings.batch_size} is not divisible by {processes.world} processes")
    torch.manual_seed(settings.seed)  # the initial weights
    network = task.network().to(device)
    if settings.channels_last and device.type == "cuda":
        network = network.to(memory_format=torch.channels_last_3d)
    if resume is not None:
        network.load_state_dict(resume.model)
    elif initial_weights is not None:
        network.load_state_dict(initial_weights)
    if processes.distributed:  # one device per process: on CUDA, DDP is told which
        model = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        model = network
    optimiser = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    dtype = autocast_dtype(settings, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    best = None
    if resume is not None:
        optimiser.load_state_dict(resume.optimiser)
        if resume.scaler:
            scaler.load_state_dict(resume.scaler)
        best = resume.best
    first = resume.step if resume is not None else 0
    local_share = processes.share(settings.batch_size)

    saved_step = first if resume is not None else None

    def checkpoint(step: int) -> None:
        nonlocal saved_step
        if folder is not None and step != saved_step:
            saved_step = step
            save_state(folder.last_state, task.kind, TrainingState(step, network.state_dict(), optimiser.state_dict(),
                                                                   scaler.state_dict() if scaler.is_enabled() else None, best))
            progress.emit("checkpoint", step=step, path=str(folder.last_state))

    loss_value, validation, step = None, None, first
    for step in range(first, settings.iterations):
        if stop.agreed(processes, device):
            checkpoint(step)
            progress.emit("stopped", step=step, total=settings.iterations, reason=stop.signal_name or "signal",
                          resume=f"unleash train {task.kind} --resume {folder.path if folder else ''}".strip())
            return Outcome(network, step, True, loss_value, validation, best)
        started = time.perf_counter()
        torch.manual_seed(step_seed(settings.seed, step, processes.rank))
        batch = collate([task.sample(sample_rng(settings.seed, step, position)) for position in local_share])
        learning_rate = learning_rate_at(step, settings)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate
        model.train()
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            loss, parts = task.loss(model, batch)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimiser)
        gradient_norm = torch.nn.utils.clip_grad_norm_(network.parameters(), settings.gradient_clip or math.inf)
        # a gradient scaler skips non-finite steps itself; without one a NaN would reach the weights
        if not scaler.is_enabled() and not bool(torch.isfinite(gradient_norm)):
            raise UserError(f"step {step + 1}: the loss or its gradient is not finite (loss {float(loss.detach()):.4g}); "
                            f"training stopped, the last checkpoint is kept; try a lower --lr or check the settings")
        scaler.step(optimiser)
        scaler.update()
        # the global batch's mean loss (each process holds the mean of its equal share)
        reported = total(torch.stack([loss.detach().float(), *[p.detach().float() for p in parts.values()]]), processes)
        reported = (reported / processes.world).tolist()
        loss_value, part_values = reported[0], dict(zip(parts, reported[1:]))
        seconds = time.perf_counter() - started
        done = step + 1
        row = {"step": done, "loss": loss_value, **part_values, "learning_rate": learning_rate,
               "gradient_norm": float(gradient_norm), "seconds": seconds, "samples_per_s": settings.batch_size / seconds}
        last = done == settings.iterations
        if processes.writes and task.metric and (last or (settings.validate_every and done % settings.validate_every == 0)):
            validation = task.validate(network)
            value = validation[task.metric]
            improved = best is None or (value > best["value"] if task.higher_is_better else value < best["value"])
            if improved:
                best = {"metric": task.metric, "value": value, "step": done}
                write_model(network, folder.best_model, done, validation)
            row.update(validation)
            progress.emit("validation", step=done, best=best, **validation)
        preview_every = settings.preview_every or settings.validate_every
        if folder is not None and (last or (preview_every and done % preview_every == 0)):
            task.preview(network, folder.preview_path(done))
        if folder is not None:
            folder.metrics.write(row)
        progress.progress("training", done, settings.iterations, loss=round(loss_value, 6),
                          metric=None if validation is None else {task.metric: validation[task.metric]},
                          samples_per_s=round(row["samples_per_s"], 3))
        if last or done % settings.checkpoint_every == 0:
            checkpoint(done)
    return Outcome(network, settings.iterations, False, loss_value, validation, best)
