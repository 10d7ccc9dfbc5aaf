"""The Python packages an engine job needs inside Slicer, checked and installed on the first Apply.

- PyTorch comes from Slicer's PyTorch extension (PyTorchUtils), which picks the CUDA build that matches
  the driver; it is never pip-installed directly. If that extension is missing, the user is told how to
  get it.
- The other packages are pip-installed with version ranges that the engine is tested with, and with a
  constraints file that pins Slicer's own numpy and SimpleITK to the versions Slicer ships, so that
  no dependency drags them along.
- One confirmation lists everything before anything is installed; a restart is offered afterwards.
The pure parts (what is missing, the plan, the numpy/torch clash) run without Slicer and are tested.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from pathlib import Path

# The engine's needs (pyproject.toml), as ranges for Slicer's Python.
TORCH_REQUIREMENT = ">=2.2"
PIP_REQUIREMENTS = {  # import name -> pip requirement
    "safetensors": "safetensors>=0.4,<1",
    "isal": "isal>=1.6,<2",  # gzip of the output fields, 5x faster than zlib (the engine falls back to zlib)
    "scipy": "scipy>=1.10,<2",
    "matplotlib": "matplotlib>=3.7,<4",  # the previews of samples and training runs
    "skimage": "scikit-image>=0.22,<1",  # the 3D skeleton of the sampler's mask rule
}
# Slicer ships these; an extension must never replace them.
PROTECTED = {"numpy": "numpy", "SimpleITK": "SimpleITK"}  # import name -> distribution name

PYTORCH_EXTENSION_HELP = (
    "PyTorch is needed to run Unleash. It comes from Slicer's PyTorch extension, which is not installed.\n\n"
    "Open View > Extensions Manager, install the extension 'PyTorch', restart Slicer, then press Apply again.\n"
    "(Installing UnleashRegistration from the Extensions Manager installs it too.)")


def missingPackages(findSpec: Callable = importlib.util.find_spec) -> list[str]:
    """Import names the engine needs that are not importable ('torch' first)."""
    return [name for name in ("torch", *PIP_REQUIREMENTS) if findSpec(name) is None]


def pipRequirement(name: str) -> str | None:
    return PIP_REQUIREMENTS.get(name)


def installedVersion(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major_minor(version: str) -> tuple[int, int]:
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def numpyTorchClash(numpyVersion: str | None, torchVersion: str | None) -> str | None:
    """The known binary clash: PyTorch wheels before 2.3 were built against numpy 1 and fail to load
    ("A module that was compiled using NumPy 1.x cannot be run in NumPy 2") next to numpy 2."""
    if not numpyVersion or not torchVersion:
        return None
    if _major_minor(numpyVersion)[0] >= 2 and _major_minor(torchVersion) < (2, 3):
        return (f"PyTorch {torchVersion} was built for numpy 1, but this Slicer has numpy {numpyVersion}: "
                "PyTorch 2.3 or newer is needed.")
    return None


def installPlan(missing: list[str], clash: str | None) -> list[str]:
    """Human lines for the one confirmation: everything that will be installed, and how."""
    lines = []
    if "torch" in missing:
        lines.append(f"PyTorch {TORCH_REQUIREMENT} through the PyTorch extension (the build that matches your GPU driver, "
                     "or the CPU build); this is a large download")
    elif clash:
        lines.append(f"PyTorch >=2.3 through the PyTorch extension, replacing the installed one ({clash})")
    lines += [f"{pipRequirement(name)} (pip)" for name in missing if pipRequirement(name)]
    return lines


def constraintsText(versions: dict[str, str | None]) -> str:
    """A pip constraints file that keeps the given distributions at their installed versions."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(versions.items()) if version)


def ensureDependencies(workDir: str | Path, parent=None) -> bool:
    """Inside Slicer: check, ask once, install. True when jobs can run; False when the user declined.
    Raises RuntimeError with guidance when PyTorch cannot be installed (no PyTorch extension)."""
    import slicer

    missing = missingPackages()
    clash = None if "torch" in missing else numpyTorchClash(installedVersion("numpy"), installedVersion("torch"))
    if not missing and not clash:
        return True
    needsTorch = "torch" in missing or clash is not None
    if needsTorch and not hasattr(slicer.modules, "pytorchutils"):
        raise RuntimeError(PYTORCH_EXTENSION_HELP)

    plan = installPlan(missing, clash)
    if not slicer.app.testingEnabled():
        text = ("Unleash needs Python packages that are not installed yet:\n\n- " + "\n- ".join(plan)
                + "\n\nSlicer's own numpy and SimpleITK are kept as they are. This can take several minutes. Install now?")
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle="Unleash: install dependencies", parent=parent):
            return False

    try:
        if needsTorch:
            import PyTorchUtils

            requirement = ">=2.3" if clash else TORCH_REQUIREMENT
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=requirement)
            if torch is None:
                raise RuntimeError("PyTorch was not installed (see the Python console for the reason)")
        pipMissing = [pipRequirement(name) for name in missing if pipRequirement(name)]
        if pipMissing:
            constraints = Path(workDir) / "unleash-constraints.txt"
            constraints.write_text(constraintsText({dist: installedVersion(dist) for dist in PROTECTED.values()}))
            _pipInstall(pipMissing, constraints)
    except Exception as exc:
        raise RuntimeError(f"Installing the Python packages for Unleash failed: {exc}") from exc

    still = missingPackages()
    if still:
        raise RuntimeError(f"still missing after the installation: {', '.join(still)}")
    if needsTorch and not slicer.app.testingEnabled():
        # Jobs run in a new process and see the new packages now; this Slicer process may hold an old torch.
        if slicer.util.confirmYesNoDisplay("The packages were installed. Restart Slicer now so that Slicer itself uses "
                                           "the new PyTorch? (Not needed for Unleash jobs: they run in their own process.)",
                                           windowTitle="Unleash: restart", parent=parent):
            slicer.util.restart()
    return True


def _pipInstall(requirements: list[str], constraints: Path) -> None:
    import slicer

    try:
        import slicer.packaging as packaging  # newer Slicer: constraints as an argument
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_install"):
        packaging.pip_install(requirements, constraints=str(constraints))
    else:  # older Slicer: the arguments go to pip as they are
        slicer.util.pip_install(requirements + ["-c", str(constraints)])
    importlib.invalidate_caches()
