"""A model file's config and card, its weights' check, and the model files of run folders, all
without torch.

A model file is safetensors (tensorfile.py) whose `__metadata__` holds string entries (format,
format_version, config, card as JSON). checkpoints.py writes the weights and builds the network;
everything that can be checked without building it is checked here, before torch is imported, and
this is all that the Slicer modules need to list and tell apart model files.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import UserError
from .models.config import CONFIGS
from .paths import require_file
from .tensorfile import Header, nonfinite, read_header

FORMAT = "unleash-model"
FORMAT_VERSION = "1"
TRAINING_STATE_FORMAT = "unleash-training-state"  # train/statefile.py: a run's resumable checkpoints
SUFFIX = ".safetensors"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULTS = {"registration": WEIGHTS_DIR / "registration_default.safetensors",
            "sampler": WEIGHTS_DIR / "sampler_default.safetensors"}


def model_metadata(metadata: dict[str, str], path: str | os.PathLike) -> dict:
    """{"config": ..., "card": ...} of a model file's safetensors metadata; UserError when it is not ours."""
    if metadata.get("format") == TRAINING_STATE_FORMAT:
        raise UserError(f"{path}: is a training checkpoint, not a model file (a run's model file is "
                        f"model.safetensors or best.safetensors in its folder)")
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path}: not an unleash model file (no '{FORMAT}' header)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: an unleash model file of format version {metadata.get('format_version')!r}; this "
                        f"version of unleash reads version {FORMAT_VERSION!r}")
    try:
        meta = {"config": json.loads(metadata["config"]), "card": json.loads(metadata.get("card", "{}"))}
    except (KeyError, json.JSONDecodeError):
        raise UserError(f"{path}: the model file's config is damaged") from None
    if not isinstance(meta["config"], dict):
        raise UserError(f"{path}: the model file's config is damaged (a JSON object is expected)")
    return meta


def _header(path: str | os.PathLike) -> Header:
    path = require_file(path, "model file")
    try:
        return read_header(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable unleash model file ({exc})") from None


def read_metadata(path: str | os.PathLike) -> dict:
    """{"config", "card"} of a model file, from its header alone; UserError when it is not one."""
    return model_metadata(_header(path).metadata, path)


def check_model_file(path: str | os.PathLike, *kinds: str):
    """(meta {"config", "card"}, config dataclass) of a model file of one of `kinds`, with its config
    checked strictly and its weights finite; UserError otherwise. Whether the weights fit the network
    is known only once it is built (checkpoints.load_model)."""
    header = _header(path)
    meta = model_metadata(header.metadata, path)
    require_kind(meta, path, *kinds)
    kind = meta["config"]["kind"]
    try:
        config = CONFIGS[kind].from_dict(meta["config"])
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: damaged or incompatible {kind} model ({str(exc).splitlines()[0][:160]})") from None
    try:
        broken = nonfinite(path, header)
    except OSError as exc:
        raise UserError(f"{path}: not a readable unleash model file ({exc})") from None
    if broken:
        raise UserError(f"{path}: the weights hold NaN or infinite values ({broken[0]}): a damaged or diverged model")
    return meta, config


def check_encoder_file(path: str | os.PathLike | None):
    """check_model_file of a 'vqae' or 'sampler' model file whose VQ-autoencoder can encode pairs (None:
    none ships); UserError otherwise."""
    if path is None:
        raise UserError("no VQ-autoencoder ships with this version of unleash: give a 'vqae' or 'sampler' model file")
    meta, config = check_model_file(path, "vqae", "sampler")
    require_encoder(path, config)
    return meta, config


def require_encoder(path, config) -> None:
    """The VQ-autoencoder of a 'vqae' or 'sampler' config can encode pairs; UserError otherwise."""
    if not getattr(config, "vqae", config).encoder:
        raise UserError(f"{path}: its VQ-autoencoder was trained to decode given tokens only; it cannot encode pairs")


def require_kind(meta: dict, path, *kinds: str) -> None:
    found = meta["config"].get("kind")
    if found not in kinds:
        raise UserError(f"{path}: is a {found!r} model, but a {' or '.join(map(repr, kinds))} model is needed")


def model_kind(path: str | os.PathLike) -> str | None:
    """'registration', 'sampler', ... of a model file; None for anything that is not a readable model file."""
    try:
        return model_metadata(read_header(path).metadata, path)["config"].get("kind")
    except (OSError, ValueError, UserError, AttributeError):
        return None


def find_model_files(folders: Iterable[str | os.PathLike], max_depth: int = 2, kind: str | None = None) -> list[Path]:
    """Model files in run folders, at most `max_depth` levels down (cheap enough for a panel's setup);
    with `kind`, only those of that kind. A run's checkpoints/ hold training states, not model files."""
    found: dict[str, Path] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for depth in range(max_depth + 1):
            for path in sorted(folder.glob("/".join(["*"] * depth + [f"*{SUFFIX}"]))):
                if path.is_file() and path.parent.name != "checkpoints" and (kind is None or model_kind(path) == kind):
                    found.setdefault(str(path.resolve()), path)
    return list(found.values())
