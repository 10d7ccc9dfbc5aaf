"""Asking the engine what it offers, always in a job process (it imports torch, which must not load in
Slicer's GUI thread): the devices and the default refinement iterations. Plus the choices the modules
show for devices and runs. Plain Python, no Slicer; run folders and model files are read by the engine's
torch-free readers (unleash.train.rundir, unleash.modelfile)."""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from unleash.jobspec import DEFAULT_DEVICE
from unleash.modelfile import model_kind

# Run by the engine's Python: one `result` event in the job protocol (see unleash/jobs.py) with what a
# device selector and the iterations spin box need.
PROBE_SNIPPET = """\
import json
import unleash
from unleash.devices import list_devices
from unleash.pipeline import DEFAULT_ADAPT_ITERS
print(json.dumps({"event": "result", "version": unleash.__version__, "devices": list_devices(),
                  "default_adapt_iters": DEFAULT_ADAPT_ITERS}), flush=True)
"""

# A GPU with less free memory than this is offered with a warning (CPU is suggested instead).
MIN_FREE_GB = 3.0


def probeCommand(python: str | None = None) -> list[str]:
    return [python or sys.executable, "-c", PROBE_SNIPPET]


def deviceLabel(device: dict) -> str:
    """A list_devices() entry -> 'GPU 0: NVIDIA H200, 139.8 GB (120.1 GB free)'."""
    if device.get("id") == "cpu":
        return "CPU"
    index = str(device.get("id", "")).partition(":")[2] or "0"
    label = f"GPU {index}: {device.get('name', 'CUDA device')}"
    if device.get("memory_gb") is not None:
        label += f", {device['memory_gb']:g} GB"
        if device.get("free_gb") is not None:
            label += f" ({device['free_gb']:g} GB free)"
    return label


def deviceChoices(devices: Iterable[dict] | None) -> list[tuple[str, str]]:
    """(label, --device value) for a combo box: auto first, then CPU, then each GPU."""
    choices = [("Auto (a GPU if there is one, else CPU)", DEFAULT_DEVICE)]
    devices = list(devices or [{"id": "cpu"}])
    if not any(d.get("id") == "cpu" for d in devices):
        devices.insert(0, {"id": "cpu"})
    choices += [(deviceLabel(d), str(d["id"])) for d in devices]
    return choices


def lowMemoryWarning(deviceId: str, devices: Iterable[dict] | None, minFreeGb: float = MIN_FREE_GB) -> str | None:
    """A hint when the chosen GPU (or, for auto, the first GPU) has little free memory."""
    gpus = [d for d in (devices or []) if str(d.get("id", "")).startswith("cuda")]
    chosen = gpus[:1] if deviceId == DEFAULT_DEVICE else [d for d in gpus if d.get("id") == deviceId]
    for device in chosen:
        free = device.get("free_gb")
        if free is not None and free < minFreeGb:
            return (f"{deviceLabel(device)} has only {free:g} GB free; the job may run out of GPU memory. "
                    "Choose CPU (slower) or free GPU memory.")
    return None


def defaultRunFolders() -> list[Path]:
    """Where trained runs are looked for: ~/unleash-runs (UnleashTraining's default) and $UNLEASH_RUNS."""
    folders = [Path.home() / "unleash-runs"]
    extra = os.environ.get("UNLEASH_RUNS")
    if extra:
        folders += [Path(p) for p in extra.split(os.pathsep) if p]
    return folders


def checkModelFile(path: str | Path, kind: str) -> None:
    """One clear line when `path` is not a model file of `kind` (chosen in a module that needs that kind)."""
    if not Path(path).is_file():
        raise ValueError(f"The model file {path} does not exist")
    found = model_kind(path)
    if found != kind:
        what = f"a {found} model" if found else "not an unleash model file"
        raise ValueError(f"{Path(path).name} is {what}, not a {kind} model: choose a {kind} model file")


def describeRun(summary: dict) -> str:
    """'registration-0612  registration, 1500/1500, model file' for the runs list."""
    if summary["kind"] is None:
        return summary["name"] + ("  (model file)" if summary["finished"] else "")
    state = "model file" if summary["finished"] else "stopped, can be resumed"
    return f"{summary['name']}  ({summary['kind']}, step {summary['step']}/{summary['total']}, {state})"


def copyTrainingPairs(samples: str | Path, target: str | Path) -> list[Path]:
    """Copy the pair_NNNN_fixed/_moving files of a samples folder into `target` (made if missing), the layout
    `unleash train --data` reads. Refuses, copying nothing, when a file of that name is already there."""
    samples, target = Path(samples), Path(target)
    files = sorted(samples.glob("pair_*_fixed.nii.gz")) + sorted(samples.glob("pair_*_moving.nii.gz"))
    if not files:
        raise ValueError(f"{samples} holds no sampled pairs")
    clashes = [f.name for f in files if (target / f.name).exists()]
    if clashes:
        raise ValueError(f"{target} already has {clashes[0]} (choose an empty folder)")
    target.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(f, target / f.name)) for f in files]
