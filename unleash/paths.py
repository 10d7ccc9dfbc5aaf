"""Paths that the C++ libraries (ITK, safetensors) can take: they need text that is valid UTF-8.

A file name with other bytes reaches Python as lone surrogates (PEP 383); ITK aborts the whole
process on such a name, so every path is checked here before any library or work sees it."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError


def require_utf8(path: str | os.PathLike) -> str:
    """`path` as text; a name that is not valid UTF-8 is refused with a line that shows its bytes."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise UserError(f"{shown}: the path holds bytes that are not UTF-8 text, which the image and model "
                        f"libraries cannot open; rename it") from None
    return text


def require_file(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """`path` of an existing regular file that is a `what` ("model file", ...); UserError for a missing
    path, a folder, and a device, pipe or socket (which a reader would block on or read forever)."""
    path = Path(require_utf8(path))
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a {what}")
    if not path.exists():
        raise UserError(f"{path}: no such {what}{hint}")
    if not path.is_file():
        raise UserError(f"{path}: is not a regular file (a device, a pipe or a socket), not a {what}")
    return path
