"""What the three Unleash modules share: starting engine jobs, dependencies, devices, landmarks, reports.

Everything here except the few functions that say so runs without Slicer (plain Python), so that
Testing/test_slicer_extension.py checks it with pytest. The engine itself (the `unleash` package)
is only ever run in a separate process; from it the modules import `unleash.jobs` (command lines
and event parsing), which needs nothing beyond the standard library.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ensureEngineImportable() -> Path | None:
    """Make `import unleash` work and return the folder that contains the `unleash` package.

    Installed extension: `unleash/` sits next to the modules in qt-scripted-modules, which is on sys.path.
    Source checkout (modules added through "Additional module paths"): `unleash/` is at the repository
    root, two levels above this file, so that folder is put on sys.path.
    """
    spec = importlib.util.find_spec("unleash")
    if spec is None or spec.origin is None:
        for candidate in (HERE.parent, HERE.parent.parent):
            if (candidate / "unleash" / "__init__.py").is_file():
                sys.path.insert(0, str(candidate))
                importlib.invalidate_caches()
                return candidate
        return None
    return Path(spec.origin).resolve().parent.parent


def pythonExecutable() -> str:
    """The Python that runs engine jobs: Slicer's PythonSlicer launcher (it sets up Slicer's Python
    environment), else the running interpreter (plain Python, tests)."""
    return shutil.which("PythonSlicer") or sys.executable


def jobEnvironment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an engine job: `base` (in Slicer: the environment Slicer was started with, so
    that Slicer's own launcher settings do not leak into PythonSlicer, which sets its own), plus the folder
    of the engine on PYTHONPATH, unbuffered UTF-8 output so that events arrive line by line."""
    env = dict(os.environ if base is None else base)
    engineParent = ensureEngineImportable()
    if engineParent is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(engineParent), env.get("PYTHONPATH", "")) if p)
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


# The submodules import `unleash.jobs`: make it importable before any of them is.
ensureEngineImportable()
