"""The job life cycle that the three module logics share: one engine job at a time, started from its
command line (unleash.jobs.*_command), followed through its events, cancelled as a whole process tree,
and finished with a result or an error. Needs Slicer only to run the job (slicerjobs).

Every Unleash logic has the same shape: `running`, `cancel()`, and one start method per job
(registerVolumes, samplePairs, startTraining/resumeTraining) with keyword arguments, `wait`,
`onEvent(event)` for the job's events and `onFinished(result, error)` at the end; wait=True returns the
result or raises RuntimeError with the error.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from . import slicerjobs
from .runner import JobRunner

NO_RESULT = "the engine finished without a result"


class JobLogic:
    """Mixin for a ScriptedLoadableModuleLogic (call JobLogic.__init__ in the logic's __init__)."""

    busyMessage = "A job is already running: cancel it first"
    terminateGraceS = 2.0  # a training job needs longer: it finishes its step and saves a checkpoint

    def __init__(self) -> None:
        self.job: JobRunner | None = None

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def cancel(self) -> None:
        """Stop the job and everything it started (politely first: a training job saves its checkpoint)."""
        if self.running:
            self.job.cancel()

    def checkIdle(self) -> None:
        if self.running:
            raise RuntimeError(self.busyMessage)

    def runJob(self, command: list[str], *, load: Callable[[JobRunner], object] | None = None, wait: bool = False,
               timeoutS: float | None = None, cwd: str | None = None, onEvent=None, onLine=None,
               onFinished: Callable[[object, str | None], None] | None = None):
        """Run `command`. At the end `load(job)` makes the logic's result from the job's `result` event (e.g.
        nodes in the scene; a load that fails is reported like a failed job), then onFinished(result, error) is
        called; error is None, "cancelled" or one line. wait=False returns the running job; wait=True the
        result, or raises RuntimeError(error)."""
        self.checkIdle()
        outcome = {"result": None, "error": None}

        def finished(job: JobRunner) -> None:
            error = job.error or (None if job.result else NO_RESULT)
            result = None
            if error is None:
                try:
                    result = load(job) if load else job.result
                except Exception as exc:  # noqa: BLE001 - shown to the user like a failed job
                    logging.exception("Unleash: loading the job's results failed")
                    error = f"loading the results failed: {exc}"
            outcome.update(result=result, error=error)
            if onFinished:
                onFinished(result, error)

        # self.job is set before the job runs, so that `running` and cancel() work while wait=True blocks
        self.job = slicerjobs.makeJob(command, cwd=cwd, onEvent=onEvent, onLine=onLine, onFinished=finished,
                                      terminateGraceS=self.terminateGraceS)
        slicerjobs.runJob(self.job, wait=wait, timeoutS=timeoutS)
        if not wait:
            return self.job
        if outcome["error"]:
            raise RuntimeError(outcome["error"])
        return outcome["result"]
