"""Jobs: JSON-lines progress events, the command lines that the Slicer modules launch, and
cancellation (outputs that appear whole or not at all: output_folder.py).

Event protocol (one JSON object per line on stdout with `--progress json`):
  {"event": "log", "message": str}
  {"event": "progress", "stage": str, "step": int, "total": int, "fraction": float, "eta_s": float|null, ...}
                                                "fraction": the share of the stage's work done, which is step / total
                                                unless steps differ in cost (the refinement's levels)
  {"event": "result", ...}                      the job's outcome (paths, metrics)
  {"event": "error", "message": str}            the job failed; the exit code is non-zero
Training jobs add:
  {"event": "validation", "step": int, "best": {...}, <metric>: float, ...}
  {"event": "checkpoint", "step": int, "path": str}
  {"event": "stopped", "step": int, "total": int, "reason": str, "resume": str}   SIGINT/SIGTERM; exit code 0
Without `--progress json` a progress bar and the log go to stderr and stdout stays free.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from contextlib import contextmanager

from .jobspec import JOBS


class Progress:
    """Reports a job's events as JSON lines (mode "json"), as a bar on stderr ("bar"), or not at all ("none")."""

    def __init__(self, mode: str = "bar", stdout=None, stderr=None):
        self.mode = mode
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._stage_started: dict[str, tuple[float, float]] = {}  # stage -> (time, fraction) of its first event
        self._last_draw = 0.0
        self._bar_open = False  # a bar line is drawn without its newline: a message must start a line of its own

    def emit(self, event: str, **fields) -> None:
        if self.mode == "json":
            self.stdout.write(json.dumps({"event": event, **fields}) + "\n")
            self.stdout.flush()

    def log(self, message: str) -> None:
        if self.mode == "json":
            self.emit("log", message=message)
        elif self.mode == "bar":
            self._end_bar()
            self.stderr.write(message + "\n")
            self.stderr.flush()

    def _end_bar(self) -> None:
        if self._bar_open:
            self.stderr.write("\n")
            self._bar_open = False

    def progress(self, stage: str, step: int, total: int, work: float | None = None, **extra) -> None:
        """`work`: the share of the stage's work done, where its steps differ in cost (the refinement's
        1 mm iterations cost ~7x its coarse ones); by default step / total."""
        now = time.monotonic()
        fraction = work if work is not None else step / total if total else 1.0
        # the pace of the work done here: a resumed run starts at its checkpoint's step, not at 0
        started, first_fraction = self._stage_started.setdefault(stage, (now, fraction))
        eta = None
        if fraction >= 1:
            eta = 0.0
        elif fraction > first_fraction:
            eta = (now - started) / (fraction - first_fraction) * (1 - fraction)
        if self.mode == "json":
            self.emit("progress", stage=stage, step=step, total=total, fraction=round(fraction, 4),
                      eta_s=None if eta is None else round(eta, 1), **extra)
        elif self.mode == "bar":
            if step < total and now - self._last_draw < 0.25:  # a log file should not get a line per step
                return
            self._last_draw = now
            filled = int(30 * fraction)
            tail = f" {eta:5.0f} s left" if eta else ""
            if extra.get("loss") is not None:  # training: the loss and the latest validation metric
                metrics = "".join(f" {k} {v:.4g}" for k, v in (extra.get("metric") or {}).items())
                tail = f" loss {extra['loss']:.4g}{metrics}{tail}"
            end = "\n" if step >= total else ""
            self._bar_open = not end
            self.stderr.write(f"\r{stage:<12} [{'#' * filled}{'.' * (30 - filled)}] {step}/{total}{tail}{end}")
            self.stderr.flush()

    def result(self, **fields) -> None:
        self.emit("result", **fields)

    def error(self, message: str) -> None:
        """The event; with the bar, the caller's error line then starts a line of its own."""
        self.emit("error", message=message)
        if self.mode == "bar":
            self._end_bar()
            self.stderr.flush()


class Interrupted(BaseException):
    """SIGTERM (what Slicer's Cancel sends first) or SIGINT outside training's own handler: raised
    in the main thread, so that every `finally` and temporary-folder clean-up runs on the way out."""

    def __init__(self, number: int):
        super().__init__(signal.Signals(number).name)
        self.number = number


@contextmanager
def signals_interrupt():
    """While a command runs, SIGINT and SIGTERM raise Interrupted (training swaps in its own
    checkpoint-and-stop handler); the previous handlers come back afterwards."""
    def interrupt(number, frame):
        raise Interrupted(number)

    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield
        return
    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def parse_event(line: str) -> dict | None:
    """One stdout line of a job -> its event dict, or None for a line that is not an event."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def unleash_command(python: str | None = None) -> list[str]:
    """How to start the engine: `<python> -m unleash` (Slicer passes its PythonSlicer)."""
    return [python or sys.executable, "-m", "unleash"]


def job_command(job: str, *, python: str | None = None, progress: str = "json", **values) -> list[str]:
    """The command line of `unleash JOB` with these option values, by their jobspec `dest` (None: the
    engine's default). Every job's command line comes from here, so it is what the CLI parses."""
    spec = JOBS[job]
    known = {option.dest for option in spec.options}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"{job} has no option {', '.join(unknown)}")
    values["progress"] = progress
    return unleash_command(python) + [job] + [part for option in spec.options
                                              for part in option.arguments(values.get(option.dest))]


def register_command(fixed: str, moving: str, output_dir: str, *, overwrite: bool = True, python: str | None = None,
                     **options) -> list[str]:
    """The exact command line of a registration job, as the UnleashRegistration module runs it; `options` by
    their jobspec names (model, device, adapt_iters, landmarks, inputs, start, seed, ...)."""
    return job_command("register", fixed=fixed, moving=moving, output=output_dir, overwrite=overwrite, python=python,
                       **options)


def sample_command(output_dir: str, count: int, *, overwrite: bool = True, python: str | None = None,
                   **options) -> list[str]:
    """The exact command line of a sampling job, as the UnleashSampler module runs it (options: model, schedule,
    steps, temperature, batch_size, probabilities, device, seed)."""
    return job_command("sample", count=count, output=output_dir, overwrite=overwrite, python=python, **options)


def train_command(kind: str, *, data: list[tuple[str, float]] | None = None, resume: str | None = None,
                  python: str | None = None, **options) -> list[str]:
    """The exact command line of a training job (new: data + out; or resume), as UnleashTraining runs it.
    data: (folder, sampling weight) pairs; options: out, validation, config, vqae, init, iterations, ..."""
    if resume:
        options = {key: value for key, value in options.items() if key not in ("out", "validation")}
        return job_command("train", kind=kind, resume=resume, python=python, **options)
    sources = [str(folder) if float(weight) == 1 else f"{folder}:{float(weight):g}" for folder, weight in data or []]
    return job_command("train", kind=kind, data=sources, python=python, **options)
