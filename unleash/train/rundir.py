"""The run folder: everything a training run writes, in one place that `--resume` reads back.

    RUNDIR/config.json                 the whole configuration (kind, model, training, task, data)
    RUNDIR/metrics.csv                 one row per step: losses, learning rate, speed, validation
    RUNDIR/checkpoints/last.safetensors  the resumable state (state.py)
    RUNDIR/best.safetensors            model file of the best validation so far
    RUNDIR/model.safetensors           the final model file (what --model takes)
    RUNDIR/previews/step_NNNNNN.png

Standard library only: the Slicer modules list and plot runs with the readers at the end.
"""
from __future__ import annotations

import csv
import fcntl
import json
import os
from pathlib import Path

from ..errors import UserError
from ..paths import require_utf8

CONFIG = "config.json"
METRICS = "metrics.csv"
FINAL_MODEL = "model.safetensors"


def check_new_run_dir(path: str | os.PathLike) -> Path:
    """A run starts in a new or empty folder under a writable parent; checked before any work."""
    path = Path(require_utf8(path))
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        hint = " (continue it with --resume)" if (path / CONFIG).is_file() else ""
        raise UserError(f"{path}: exists and is not empty{hint}; a new run needs a new folder")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise UserError(f"{parent}: the run folder's parent does not exist")
    target = path if path.is_dir() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise UserError(f"{target}: is not writable")
    return path


SECTIONS = {"kind": str, "model": dict, "training": dict, "task": dict, "data": list, "validation": list}


def read_run_config(path: str | os.PathLike) -> dict:
    """A run's config.json, with every section present and of its kind (the values are checked
    where they are parsed, train.run.parse_config)."""
    config_path = Path(path) / CONFIG
    if not config_path.is_file():
        raise UserError(f"{path}: not a training run folder (no {CONFIG})")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path}: damaged ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path}: damaged (a JSON object with the sections {', '.join(SECTIONS)} is expected)")
    for section, kind in SECTIONS.items():
        if not isinstance(config.get(section), kind):
            raise UserError(f"{config_path}: damaged (its '{section}' is missing or not a {kind.__name__})")
    for entry in config["data"] + config["validation"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("weight"), (int, float))):
            raise UserError(f"{config_path}: damaged (a data entry is not {{'path': ..., 'weight': ...}})")
    return config


def kept_metrics(path: Path, until_step: int) -> list[dict]:
    """The rows of metrics.csv up to a resumed checkpoint's step; the later ones are about to be run again."""
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as handle:
            return [row for row in csv.DictReader(handle) if int(row["step"]) <= until_step]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError):
        raise UserError(f"{path}: damaged (not a table with a whole-number 'step' column); move it "
                        f"away to resume without the earlier rows") from None


class Metrics:
    """RUNDIR/metrics.csv, a row per step, flushed as it goes (a plot can follow a live run)."""

    def __init__(self, path: Path, columns: list[str], kept: list[dict]):
        self.path = path
        self.columns = columns
        temporary = path.with_name(f".{path.name}.tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        os.replace(temporary, path)
        self._handle = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._handle, columns, restval="", extrasaction="ignore")

    def write(self, row: dict) -> None:
        self._writer.writerow({key: f"{value:.6g}" if isinstance(value, float) else value for key, value in row.items()})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class RunFolder:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.last_state = self.path / "checkpoints" / "last.safetensors"
        self.best_model = self.path / "best.safetensors"
        self.final_model = self.path / FINAL_MODEL
        self.metrics: Metrics | None = None
        self._lock: int | None = None

    @staticmethod
    def create(path: Path, config: dict, resumed: bool) -> RunFolder:
        """The run folder with its config.json, held for this process: a second job into the same
        folder (started at the same moment, when both found it new) is refused before it writes."""
        folder = RunFolder(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            folder._lock = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(folder._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{path}: another training job is writing to this run folder") from None
            if not resumed and any(path.iterdir()):
                raise UserError(f"{path}: another training job started in this folder; a new run needs a new folder")
            (path / "checkpoints").mkdir(exist_ok=True)
            (path / "previews").mkdir(exist_ok=True)
            temporary = path / f".{CONFIG}.tmp"
            temporary.write_text(json.dumps(config, indent=2) + "\n")
            os.replace(temporary, path / CONFIG)
        except OSError as exc:
            raise UserError(f"{path}: cannot create the run folder ({exc.strerror})") from None
        return folder

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def open_metrics(self, columns: list[str], kept: list[dict]) -> None:
        self.metrics = Metrics(self.metrics_path, columns, kept)

    def preview_path(self, step: int) -> Path:
        return self.path / "previews" / f"step_{step:06d}.png"


def read_metrics(run: str | os.PathLike) -> dict[str, list[float]]:
    """The columns of RUN/metrics.csv as floats (NaN where a row has no value, e.g. validation); {} if none."""
    path = Path(run) / METRICS
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):  # damaged: a resume says so; a list of runs shows no steps
        return {}
    columns: dict[str, list[float]] = {name: [] for name in rows[0]} if rows else {}
    for row in rows:
        for name, values in columns.items():
            try:
                values.append(float(row.get(name) or "nan"))
            except ValueError:
                values.append(float("nan"))
    return columns


def run_summary(run: str | os.PathLike) -> dict:
    """What a runs list shows: kind, steps done of the total (None: not a run folder), a final model file."""
    run = Path(run)
    summary = {"name": run.name, "kind": None, "step": 0, "total": None, "finished": (run / FINAL_MODEL).is_file()}
    try:
        config = read_run_config(run)
    except UserError:
        return summary
    if not isinstance(config, dict):
        return summary
    summary["kind"] = config.get("kind")
    summary["total"] = config.get("training", {}).get("iterations")
    steps = read_metrics(run).get("step")
    if steps:
        summary["step"] = int(steps[-1])
    return summary


def list_runs(folder: str | os.PathLike | None) -> list[tuple[Path, bool]]:
    """The runs in a folder of runs: (run folder, whether it holds a model file), newest first."""
    if not folder or not Path(folder).is_dir():
        return []
    runs = [p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith(".")]
    runs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [(run, any(run.glob("*.safetensors"))) for run in runs]
