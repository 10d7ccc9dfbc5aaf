"""What the three Unleash modules share: starting engine jobs, dependencies, devices, landmarks, reports.

Everything here except the few functions that say so runs without Slicer (plain Python), so that
Testing/test_slicer_extension.py checks it with pytest. The engine itself (the `unleash` package)
is only ever run in a separate process; from it the modules import only its modules that need nothing
beyond the standard library: `unleash.jobspec` (every job's options, kinds and defaults), `unleash.jobs`
(command lines and event parsing), `unleash.modelfile` and `unleash.train.rundir` (model files and runs).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# The engine package `unleash` sits next to this package: in the installed extension both are in
# qt-scripted-modules (on Slicer's sys.path), in a source checkout both are at the repository root.
PACKAGES_FOLDER = Path(__file__).resolve().parent.parent


def pythonExecutable() -> str:
    """The Python that runs engine jobs: Slicer's PythonSlicer launcher (it sets up Slicer's Python
    environment), else the running interpreter (plain Python, tests)."""
    return shutil.which("PythonSlicer") or sys.executable


def jobEnvironment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an engine job: `base` (in Slicer: the environment Slicer was started with, so
    that Slicer's own launcher settings do not leak into PythonSlicer, which sets its own), plus the folder
    of the engine on PYTHONPATH, unbuffered UTF-8 output so that events arrive line by line."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGES_FOLDER), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def slicerJobEnvironment() -> dict[str, str]:
    """jobEnvironment() inside Slicer (needs slicer)."""
    import slicer

    try:
        base = slicer.util.startupEnvironment()
    except Exception:  # very old Slicer or no launcher: the current environment
        base = None
    return jobEnvironment(base)
