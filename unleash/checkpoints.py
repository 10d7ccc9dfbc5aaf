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
from .modelfile import FORMAT, FORMAT_VERSION, model_metadata, require_kind
from .models.denoiser import Denoiser, DenoiserConfig
from .models.registration import RegistrationConfig, TwoStepRegistration
from .models.sampler import Sampler, SamplerConfig
from .models.vqae import VQAEConfig, VQAutoEncoder
from .paths import require_utf8

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULTS = {"registration": WEIGHTS_DIR / "registration_default.safetensors",
            "sampler": WEIGHTS_DIR / "sampler_default.safetensors"}

# kind -> (config class, network class); the only place that knows which network a kind is.
KINDS = {"registration": (RegistrationConfig, TwoStepRegistration),
         "vqae": (VQAEConfig, VQAutoEncoder),
         "denoiser": (DenoiserConfig, Denoiser),
         "sampler": (SamplerConfig, Sampler)}


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
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The config and card of a model file, without building the network."""
    path = Path(require_utf8(path))
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable unleash model file ({exc})") from None
    return model_metadata(metadata, path)


def load_model(path: str | os.PathLike | None, kind: str, device: torch.device | str = "cpu"):
    """(network in eval mode, config, card) of a model file of `kind`; None means the shipped default."""
    path = Path(path) if path is not None else DEFAULTS[kind]
    meta = read_metadata(path)
    require_kind(meta, path, kind)
    config_class, network_class = KINDS[kind]
    try:
        config = config_class.from_dict(meta["config"])
        network = network_class(config)
        with safe_open(str(path), framework="pt") as handle:
            state = {name: handle.get_tensor(name) for name in handle.keys()}
        network.load_state_dict(state, strict=True)
    except (ValueError, TypeError, RuntimeError, SafetensorError) as exc:
        raise UserError(f"{path}: damaged or incompatible {kind} model ({str(exc).splitlines()[0][:160]})") from None
    broken = nonfinite(state)
    if broken:
        raise UserError(f"{path}: the weights hold NaN or infinite values ({broken[0]}): a damaged or diverged model")
    return network.to(device).eval(), config, meta["card"]


def model_id(path: str | os.PathLike | None, kind: str) -> str:
    """A short id for reports: the file name and the first bytes of its content hash."""
    import hashlib

    path = Path(path) if path is not None else DEFAULTS[kind]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{path.stem}@{digest}"
