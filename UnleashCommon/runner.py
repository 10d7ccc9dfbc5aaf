"""A background job: an engine command in its own process, its JSON-lines events handed to the GUI.

The process is started in a new session (POSIX) or process group (Windows), so that Cancel stops the
whole tree: PythonSlicer is a launcher whose child is the real Python, and the engine may start worker
processes of its own; killing only the launcher would leave them running. Two reader threads put the
lines of stdout and stderr on a queue; `poll()` takes them off on the caller's thread (in Slicer: a
QTimer, see `startPolling`), so callbacks may touch the scene and widgets. Plain Python, no Slicer:
Testing/test_slicer_extension.py runs it.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from unleash.jobs import parse_event

EventCallback = Callable[[dict], None]
LineCallback = Callable[[str, str], None]  # (stream "stdout"|"stderr", line without newline)
FinishedCallback = Callable[["JobRunner"], None]


class JobRunner:
    """One engine job. start() -> poll() (or startPolling() in Slicer, or wait()) -> onFinished(job).

    After it finished: `returncode`, `cancelled`, `result` (the `result` event or None), `error` (the
    message of the `error` event, else the last lines of stderr when the exit code is not 0).
    """

    def __init__(self, command: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
                 onEvent: EventCallback | None = None, onLine: LineCallback | None = None,
                 onFinished: FinishedCallback | None = None, terminateGraceS: float = 5.0):
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.onEvent = onEvent
        self.onLine = onLine
        self.onFinished = onFinished
        self.terminateGraceS = terminateGraceS
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.cancelled = False
        self.result: dict | None = None
        self.errorEvent: str | None = None
        self.lastProgress: dict | None = None
        self.stderrTail: list[str] = []
        self.startedAt: float | None = None
        self.finishedAt: float | None = None
        self._queue: queue.Queue = queue.Queue()
        self._openStreams = 0
        self._killDeadline: float | None = None
        self._finished = False
        self._timer = None
        self._exitedAt: float | None = None
        self._leftoverKilled = False
        self.leftoverGraceS = 5.0

    # -- life cycle -------------------------------------------------------------------------------------

    def start(self) -> JobRunner:
        if self.process is not None:
            raise RuntimeError("this job was already started")
        kwargs: dict = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "stdin": subprocess.DEVNULL,
                        "env": self.env, "cwd": self.cwd, "text": True, "encoding": "utf-8", "errors": "replace",
                        "bufsize": 1}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own session and process group: killpg reaches every descendant
        self.startedAt = time.monotonic()
        self.process = subprocess.Popen(self.command, **kwargs)
        self._openStreams = 2
        for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr)):
            threading.Thread(target=self._read, args=(name, stream), daemon=True, name=f"unleash-job-{name}").start()
        return self

    def _read(self, name: str, stream) -> None:
        try:
            for line in stream:
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put((name, None))

    @property
    def running(self) -> bool:
        return self.process is not None and not self._finished

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def error(self) -> str | None:
        if self.cancelled:
            return "cancelled"
        if self.errorEvent:
            return self.errorEvent
        if self.returncode not in (None, 0):
            tail = " | ".join(line for line in self.stderrTail[-3:] if line.strip())
            return f"the job stopped with exit code {self.returncode}" + (f": {tail}" if tail else "")
        return None

    @property
    def elapsedS(self) -> float:
        if self.startedAt is None:
            return 0.0
        return (self.finishedAt or time.monotonic()) - self.startedAt

    def poll(self) -> bool:
        """Hand queued lines and events to the callbacks; True while the job has not finished."""
        if self.process is None or self._finished:
            return not self._finished and self.process is not None
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._openStreams -= 1
            else:
                self._dispatch(name, line)
        if self._killDeadline is not None and time.monotonic() >= self._killDeadline:
            self._killDeadline = None
            self._killTree(force=True)
        if self.process.poll() is not None:
            if self._openStreams <= 0:
                self._finish()
                return False
            # The job exited but something it started still holds its stdout/stderr open: stop that
            # leftover after a while, and in the end stop waiting for it.
            now = time.monotonic()
            self._exitedAt = self._exitedAt or now
            if now - self._exitedAt > self.leftoverGraceS and not self._leftoverKilled:
                self._leftoverKilled = True
                self._killTree(force=True)
            if now - self._exitedAt > 2 * self.leftoverGraceS:
                self._finish(closeStreams=False)
                return False
        return True

    def _dispatch(self, stream: str, line: str) -> None:
        event = parse_event(line) if stream == "stdout" else None
        if event is None:
            if stream == "stderr":
                self.stderrTail = (self.stderrTail + [line])[-20:]
            if self.onLine:
                self.onLine(stream, line)
            return
        kind = event.get("event")
        if kind == "result":
            self.result = event
        elif kind == "error":
            self.errorEvent = str(event.get("message", "unknown error"))
        elif kind == "progress":
            self.lastProgress = event
        if self.onEvent:
            self.onEvent(event)

    def _finish(self, closeStreams: bool = True) -> None:
        self._finished = True
        self.returncode = self.process.returncode
        self.finishedAt = time.monotonic()
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        # (not when a reader thread may still be blocked on a stream: closing would wait for it)
        for stream in (self.process.stdout, self.process.stderr) if closeStreams else ():
            try:
                stream.close()
            except OSError:
                pass
        if self.onFinished:
            self.onFinished(self)

    # -- cancel -----------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop the whole process tree: a polite terminate first (a training job saves its checkpoint on
        SIGTERM), then a kill after `terminateGraceS` (done by poll()/wait())."""
        if not self.running:
            return
        self.cancelled = True
        self._killTree(force=self.terminateGraceS <= 0)
        if self.terminateGraceS > 0:
            self._killDeadline = time.monotonic() + self.terminateGraceS

    def _killTree(self, force: bool) -> None:
        pid = self.process.pid
        if os.name == "nt":
            # /T: the process and every process it started; /F: forcibly.
            args = ["taskkill", "/T", "/PID", str(pid)] + (["/F"] if force else [])
            subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0), check=False)
            return
        try:
            # start_new_session made the job the leader of its own process group (pgid == pid); the group
            # outlives the leader, so this also reaches children that are still running after it exited.
            os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass

    # -- waiting ----------------------------------------------------------------------------------------

    def wait(self, timeout: float | None = None, interval: float = 0.05,
             processEvents: Callable[[], None] | None = None) -> JobRunner:
        """Block until the job finished (scripted use); `processEvents` keeps a GUI painting meanwhile.
        On timeout the job is cancelled and TimeoutError raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if processEvents is not None:
                processEvents()
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                while self.poll():
                    time.sleep(interval)
                raise TimeoutError(f"the job did not finish within {timeout:g} s and was cancelled")
            time.sleep(interval)
        return self

    def startPolling(self, intervalMs: int = 200) -> None:
        """Inside Slicer: poll from a QTimer on the GUI thread, so the GUI stays responsive (needs qt)."""
        import qt

        self._timer = qt.QTimer()
        self._timer.setInterval(intervalMs)
        self._timer.timeout.connect(self.poll)
        self._timer.start()


def formatSeconds(seconds: float | None) -> str:
    """12 s, 3 min 05 s, 1 h 02 min: for 'time left'."""
    if seconds is None:
        return "estimating"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


def describeProgress(event: dict) -> tuple[int, str]:
    """A `progress` event -> (percent 0-100, 'refinement 120/220, 8 s left')."""
    fraction = event.get("fraction")
    if fraction is None:
        total = event.get("total") or 0
        fraction = (event.get("step", 0) / total) if total else 0.0
    percent = int(round(100 * min(max(float(fraction), 0.0), 1.0)))
    text = f"{event.get('stage', 'working')} {event.get('step', '?')}/{event.get('total', '?')}"
    eta = event.get("eta_s")
    if eta is not None:
        text += f", {formatSeconds(eta)} left"
    return percent, text
