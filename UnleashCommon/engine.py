"""Asking the engine what it offers, always in a job process (it imports torch, which must not load in
Slicer's GUI thread): the devices, the default refinement iterations, the training defaults.
Plus the choices the modules show for devices and models. Plain Python, no Slicer."""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

# Run by the engine's Python: one `result` event in the job protocol (see unleash/jobs.py) with what a
# device selector and the iterations spin box need.
PROBE_SNIPPET = """\
import json
import unleash
from unleash.devices import list_devices
from unleash.pipeline import DEFAULT_ADAPT_ITERS
from unleash.train.run import KINDS, default_config
print(json.dumps({"event": "result", "version": unleash.__version__, "devices": list_devices(),
                  "default_adapt_iters": DEFAULT_ADAPT_ITERS,
                  "training_defaults": {kind: default_config(kind)["training"] for kind in KINDS}}), flush=True)
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
    choices = [("Auto (a GPU if there is one, else CPU)", "auto")]
    devices = list(devices or [{"id": "cpu"}])
    if not any(d.get("id") == "cpu" for d in devices):
        devices.insert(0, {"id": "cpu"})
    choices += [(deviceLabel(d), str(d["id"])) for d in devices]
    return choices


def lowMemoryWarning(deviceId: str, devices: Iterable[dict] | None, minFreeGb: float = MIN_FREE_GB) -> str | None:
    """A hint when the chosen GPU (or, for auto, the first GPU) has little free memory."""
    gpus = [d for d in (devices or []) if str(d.get("id", "")).startswith("cuda")]
    chosen = gpus[:1] if deviceId == "auto" else [d for d in gpus if d.get("id") == deviceId]
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


def modelKind(path: str | Path) -> str | None:
    """The kind of an unleash model file ('registration', 'sampler', ...), read from its safetensors header
    (8 bytes of length, then JSON whose __metadata__ holds the config) without torch; None if unreadable."""
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 0 < length < 1 << 24:
                return None
            metadata = json.loads(handle.read(length)).get("__metadata__") or {}
        return json.loads(metadata.get("config", "{}")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def checkModelFile(path: str | Path, kind: str) -> None:
    """One clear line when `path` is not a model file of `kind` (chosen in a module that needs that kind)."""
    if not Path(path).is_file():
        raise ValueError(f"The model file {path} does not exist")
    found = modelKind(path)
    if found != kind:
        what = f"a {found} model" if found else "not an unleash model file"
        raise ValueError(f"{Path(path).name} is {what}, not a {kind} model: choose a {kind} model file")


def findModels(folders: Iterable[str | Path], maxDepth: int = 2, kind: str | None = None) -> list[Path]:
    """Model files (*.safetensors) in run folders, at most `maxDepth` levels down: cheap enough for setup().
    With `kind`, only model files of that kind (a registration module lists no samplers)."""
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for depth in range(maxDepth + 1):
            pattern = "/".join(["*"] * depth + ["*.safetensors"])
            # a run's checkpoints/ hold resumable training states, not model files
            found += sorted(p for p in folder.glob(pattern) if p.is_file() and p.parent.name != "checkpoints")
    unique: dict[str, Path] = {}
    for path in found:
        if kind is None or modelKind(path) == kind:
            unique.setdefault(str(path.resolve()), path)
    return list(unique.values())


def listRuns(runFolder: str | Path | None) -> list[tuple[Path, bool]]:
    """The runs in a run folder: (subfolder, whether it holds a model file), newest first."""
    if not runFolder or not Path(runFolder).is_dir():
        return []
    runs = [p for p in Path(runFolder).iterdir() if p.is_dir() and not p.name.startswith(".")]
    runs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [(run, any(run.glob("*.safetensors"))) for run in runs]


def readMetrics(run: str | Path) -> dict[str, list[float]]:
    """The columns of RUN/metrics.csv as floats (NaN where a row has no value, e.g. validation)."""
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    columns: dict[str, list[float]] = {name: [] for name in rows[0]}
    for row in rows:
        for name in columns:
            try:
                columns[name].append(float(row.get(name) or "nan"))
            except ValueError:
                columns[name].append(float("nan"))
    return columns


def runSummary(run: str | Path) -> dict:
    """What the runs list shows: kind, steps done of the total, and whether a final model exists."""
    run = Path(run)
    summary = {"name": run.name, "kind": None, "step": 0, "total": None, "finished": (run / "model.safetensors").is_file()}
    try:
        config = json.loads((run / "config.json").read_text())
        summary["kind"] = config.get("kind")
        summary["total"] = config.get("training", {}).get("iterations")
    except (OSError, ValueError):
        return summary
    steps = readMetrics(run).get("step")
    if steps:
        summary["step"] = int(steps[-1])
    return summary


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
