"""Model files: weights + a JSON config + a card (provenance and metrics), as safetensors.

safetensors holds raw tensors and string metadata only, so loading a model file can never run
code, unlike a pickled torch checkpoint. The shipped defaults live in `unleash/weights/`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import UserError
from .modelfile import DEFAULTS, FORMAT, FORMAT_VERSION, check_model_file
from .models.denoiser import Denoiser
from .models.registration import TwoStepRegistration
from .models.sampler import Sampler
from .models.vqae import VQAutoEncoder
from .tensorfile import read_header

# kind -> network class (its config class: models.config.CONFIGS); the only place that knows which network a kind is.
NETWORKS = {"registration": TwoStepRegistration, "vqae": VQAutoEncoder, "denoiser": Denoiser, "sampler": Sampler}


def save_model(path: str | os.PathLike, model: torch.nn.Module, config, card: dict) -> Path:
    """Write a model file atomically: a half-written model file never replaces a good one."""
    state = model.state_dict()
    broken = nonfinite(state)
    if broken:
        raise UserError(f"{path}: not written: the weights hold NaN or infinite values ({broken[0]})")
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "config": json.dumps(config.to_dict(), allow_nan=False), "card": json.dumps(card)}
    return write_safetensors(path, state, metadata)


def nonfinite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold NaN or infinite values."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Tensors + string metadata to `path` through a temporary file in the same folder, so that a
    crash or a full disk during the write leaves whatever was at `path` as it was."""
    path = Path(path)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; a model file is meant to be shared
        os.replace(temporary, path)
    except SafetensorError as exc:  # its I/O errors (a full disk) come as this, with the OS's text
        Path(temporary).unlink(missing_ok=True)
        raise UserError(f"{path}: not written ({str(exc).splitlines()[0][:160]}); what was there is kept") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_model(path: str | os.PathLike | None, kind: str, device: torch.device | str = "cpu"):
    """(network in eval mode, config, card) of a model file of `kind`; None means the shipped default.
    Everything is checked before the network is built (check_model_file, check_fit)."""
    path = Path(path) if path is not None else DEFAULTS[kind]
    meta, config = check_model_file(path, kind)
    check_fit(path, config)
    try:
        network = NETWORKS[kind](config)
        with safe_open(str(path), framework="pt") as handle:
            network.load_state_dict({name: handle.get_tensor(name) for name in handle.keys()}, strict=True)
    except (ValueError, TypeError, RuntimeError, SafetensorError) as exc:
        raise UserError(f"{path}: damaged or incompatible {kind} model ({str(exc).splitlines()[0][:160]})") from None
    return network.to(device).eval(), config, meta["card"]


def check_fit(path: str | os.PathLike, config) -> None:
    """UserError when the weights in a model file (checked by check_model_file, `config` its config) do
    not fit the network that config describes. The network is built on the meta device (shapes only: no
    memory, no initialisation) and compared with the file's header: this costs torch's import, little more."""
    with torch.device("meta"):
        network = NETWORKS[config.kind](config)
    misfit = weights_misfit(network.state_dict(), read_header(path).tensors)
    if misfit:
        raise UserError(f"{path}: damaged or incompatible {config.kind} model (its weights do not fit the network "
                        f"its config describes: {misfit})")


def weights_misfit(expected: dict, found: dict) -> str | None:
    """What first keeps the weights `found` in a file (tensors, or a header's entries) from loading into
    a network with `expected` (its state_dict), in words; None when every name and shape matches."""
    for name, tensor in expected.items():
        if name not in found:
            return f"{name} is missing"
        if tuple(found[name].shape) != tuple(tensor.shape):
            return f"{name} has the shape {list(found[name].shape)}, the network needs {list(tensor.shape)}"
    extra = sorted(set(found) - set(expected))
    return f"{extra[0]} belongs to no part of the network" if extra else None


def model_id(path: str | os.PathLike | None, kind: str) -> str:
    """A short id for reports: the file name and the first bytes of its content hash."""
    import hashlib

    path = Path(path) if path is not None else DEFAULTS[kind]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{path.stem}@{digest}"
