"""Slicer side of the jobs: start a JobRunner with Slicer's environment and poll it from a QTimer (or wait),
ask the engine what it offers, and fill the device combo boxes. Shared by the three modules; the
answers of the engine are kept for the session, so it is asked once. Needs Slicer (imported lazily,
so that this file can still be compiled and linted anywhere)."""
from __future__ import annotations

from collections.abc import Callable

from unleash.jobspec import DEFAULT_DEVICE

from . import pythonExecutable, slicerJobEnvironment
from .engine import deviceChoices, probeCommand
from .runner import JobRunner

_engineInfo: dict | None = None  # the probe's `result` event: devices, default_adapt_iters, version
_probeJob: JobRunner | None = None


def engineInfo() -> dict | None:
    return _engineInfo


def makeJob(command: list[str], *, cwd: str | None = None, **callbacks) -> JobRunner:
    """A job with Slicer's job environment (not started yet)."""
    return JobRunner(command, env=slicerJobEnvironment(), cwd=cwd, **callbacks)


def runJob(job: JobRunner, *, wait: bool = False, timeoutS: float | None = None) -> JobRunner:
    """Start `job`; wait=True blocks (keeping the GUI painting) until it ends, else a QTimer polls it. Without
    Slicer's application (slicer-core, scripts) there is no event loop: the caller polls (job.poll, job.wait)."""
    import slicer

    app = getattr(slicer, "app", None)
    job.start()
    if wait:
        job.wait(timeout=timeoutS, processEvents=app.processEvents if app is not None else None)
    elif app is not None:
        job.startPolling()
    return job


def startJob(command: list[str], *, wait: bool = False, timeoutS: float | None = None, cwd: str | None = None,
             **callbacks) -> JobRunner:
    """makeJob + runJob."""
    return runJob(makeJob(command, cwd=cwd, **callbacks), wait=wait, timeoutS=timeoutS)


def probeEngine(completedCallback: Callable[[dict | None, str | None], None] | None = None,
                wait: bool = False) -> JobRunner:
    """Ask the engine for its devices and defaults (in a job: it imports torch). completedCallback(info, error)."""
    global _probeJob

    def finished(job: JobRunner) -> None:
        global _engineInfo
        info = job.result if job.returncode == 0 else None
        if info:
            _engineInfo = info
        if completedCallback:
            completedCallback(info, None if info else (job.error or "no answer from the engine"))

    if _probeJob is not None and _probeJob.running:
        previous = _probeJob.onFinished

        def both(job: JobRunner) -> None:  # a second caller while the first probe runs: tell both
            if previous:
                previous(job)
            finished(job)

        _probeJob.onFinished = both
        if wait:
            _probeJob.wait(timeout=300)
        return _probeJob
    _probeJob = startJob(probeCommand(pythonExecutable()), onFinished=finished, wait=wait, timeoutS=300, terminateGraceS=0)
    return _probeJob


def fillDeviceCombo(combo, selected: str = DEFAULT_DEVICE) -> None:
    """auto, CPU and each GPU (name, memory, free memory) as known from the last probe; selects `selected`."""
    wasBlocked = combo.blockSignals(True)
    try:
        combo.clear()
        devices = (_engineInfo or {}).get("devices")
        for label, deviceId in deviceChoices(devices):
            combo.addItem(label, deviceId)
        combo.toolTip = ("Where the job computes." if devices is not None
                         else "GPUs are listed once the engine was asked (Refresh), which needs PyTorch.")
        for index in range(combo.count):
            if combo.itemData(index) == selected:
                combo.currentIndex = index
                break
    finally:
        combo.blockSignals(wasBlocked)
