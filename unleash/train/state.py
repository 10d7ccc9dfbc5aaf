"""Resumable training checkpoints: weights, optimiser, gradient scaler and step in one safetensors
file, written atomically (checkpoints.write_safetensors), so a crash during a write leaves the
last good checkpoint intact.

The optimiser's and scaler's state dicts are nested dicts and lists of tensors and plain values.
They are split into the tensors (stored as tensors) and a JSON skeleton that names them, so that
loading never unpickles anything; statefile.py checks all of it but the tensors' values before
torch is imported. Random states need no saving: every step draws its samples and
its dropout from generators seeded by (seed, step, rank), so step s is the same whether the run
reached it in one go or through a resume.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..checkpoints import NETWORKS, check_fit, weights_misfit, write_safetensors
from ..errors import UserError
from ..modelfile import check_model_file, model_kind
from .runconfig import CheckedRun
from .statefile import FORMAT, FORMAT_VERSION, MODEL_PREFIX, StateHeader, read_state_header, unpack


def _pack(value, tensors: dict, name: str):
    """A JSON-able skeleton of `value`; its tensors go into `tensors` under dotted names."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value
        return {"tensor": name}
    if isinstance(value, dict):
        # keys are ints (optimiser parameter ids) or strings; JSON keeps only strings, so keep the type
        return {"dict": [[key, _pack(item, tensors, f"{name}.{key}")] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_pack(item, tensors, f"{name}.{i}") for i, item in enumerate(value)]
        return {"list" if isinstance(value, list) else "tuple": items}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"cannot store a {type(value).__name__} in a training checkpoint ({name})")


@dataclass
class TrainingState:
    """What a resumed run needs: the step reached, the weights and the optimiser and scaler states."""

    step: int
    model: dict
    optimiser: dict
    scaler: dict | None
    best: dict | None  # {"metric": name, "value": float, "step": int} of the best validation so far


def save_state(path: str | os.PathLike, kind: str, state: TrainingState) -> Path:
    tensors: dict[str, torch.Tensor] = {f"{MODEL_PREFIX}{name}": t for name, t in state.model.items()}
    skeleton = {"optimiser": _pack(state.optimiser, tensors, "optimiser"),
                "scaler": _pack(state.scaler, tensors, "scaler")}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "step": str(state.step),
                "skeleton": json.dumps(skeleton), "best": json.dumps(state.best)}
    return write_safetensors(path, tensors, metadata)


def load_state(path: str | os.PathLike, kind: str) -> TrainingState:
    checked = read_state_header(path, kind)
    try:
        with safe_open(str(checked.path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable training checkpoint ({exc})") from None
    model = {name[len(MODEL_PREFIX):]: t for name, t in tensors.items() if name.startswith(MODEL_PREFIX)}
    return TrainingState(checked.step, model, unpack(checked.skeleton["optimiser"], tensors),
                         unpack(checked.skeleton["scaler"], tensors), checked.best)


def check_fits(run: CheckedRun) -> None:
    """The model files a run starts from fit their networks, and the checkpoint it resumes fits the run's:
    from the files' headers and networks built on the meta device (shapes only), before any weights are
    read or anything is written. `unleash train` runs it right after the torch-free checks (preflight)."""
    for path in filter(None, (run.init, run.config.get("vqae"))):
        check_fit(path, check_model_file(path, model_kind(path))[1])
    if run.resume is not None:
        with torch.device("meta"):
            network = NETWORKS[run.config["kind"]](run.model_config)
        checkpoint_fits(run.resume, network)


def checkpoint_fits(checked: StateHeader, network: torch.nn.Module) -> None:
    """The checkpoint's weights and optimiser moments (from its header) have the shapes of `network`'s."""
    path, tensors = checked.path, checked.header.tensors
    weights = {name[len(MODEL_PREFIX):]: entry for name, entry in tensors.items() if name.startswith(MODEL_PREFIX)}
    misfit = weights_misfit(network.state_dict(), weights)
    if misfit:
        raise UserError(f"{path}: the checkpoint's weights do not fit the run's model ({misfit})")
    shapes = [tuple(p.shape) for p in network.parameters()]
    try:
        moments = unpack(checked.skeleton["optimiser"], tensors)["state"]
        for index, entry in moments.items():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in entry and tuple(entry[key].shape) != shapes[int(index)]:
                    raise UserError(f"{path}: the checkpoint's optimiser state does not fit the run's model")
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise UserError(f"{path}: the checkpoint's optimiser state is damaged") from None
