"""A model file's config and card, and the model files of run folders, read without torch.

A model file is safetensors: 8 bytes of header length (little endian), a JSON header whose
`__metadata__` holds string entries (format, format_version, config, card as JSON), then the raw
tensors. checkpoints.py writes and loads the weights; this file is all that the Slicer modules need to
list and tell apart model files, so it imports only the standard library.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import UserError

FORMAT = "unleash-model"
FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 1 << 24


def model_metadata(metadata: dict[str, str], path: str | os.PathLike) -> dict:
    """{"config": ..., "card": ...} of a model file's safetensors metadata; UserError when it is not ours."""
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path}: not an unleash model file (no '{FORMAT}' header)")
    try:
        meta = {"config": json.loads(metadata["config"]), "card": json.loads(metadata.get("card", "{}"))}
    except (KeyError, json.JSONDecodeError):
        raise UserError(f"{path}: the model file's config is damaged") from None
    if not isinstance(meta["config"], dict):
        raise UserError(f"{path}: the model file's config is damaged (a JSON object is expected)")
    return meta


def header_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors `__metadata__` of `path`, from its header alone (the tensors are not read)."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 0 < length < MAX_HEADER_BYTES:
            raise ValueError("no safetensors header")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"
            and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list) and entry["data_offsets"]]
    if 8 + length + max(ends, default=0) > os.path.getsize(path):
        raise ValueError("the file is shorter than its header says (truncated)")
    return header.get("__metadata__") or {}


def check_model_file(path: str | os.PathLike, *kinds: str) -> dict:
    """{"config", "card"} of a model file of one of `kinds`, from its header alone; UserError otherwise."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such model file")
    try:
        meta = model_metadata(header_metadata(path), path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable unleash model file ({exc})") from None
    require_kind(meta, path, *kinds)
    return meta


def require_kind(meta: dict, path, *kinds: str) -> None:
    found = meta["config"].get("kind")
    if found not in kinds:
        raise UserError(f"{path}: is a {found!r} model, but a {' or '.join(map(repr, kinds))} model is needed")


def model_kind(path: str | os.PathLike) -> str | None:
    """'registration', 'sampler', ... of a model file; None for anything that is not a readable model file."""
    try:
        return model_metadata(header_metadata(path), path)["config"].get("kind")
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
