"""Output folders that appear whole or not at all, and never take a user's files with them.

A job writes into a staging folder `.NAME.partial-PID-XXXX` beside the destination NAME and
renames it into place at the end. Every output folder holds MARKER, the list of the files the
job wrote: `--overwrite` replaces a folder only when it holds nothing else, so a user's own
files (or the inputs) are never deleted. The PID in the staging folder's name (and in the
`.NAME.old-PID-XXXX` folder that briefly holds the replaced outputs) tells the next run whether
the job that made it is still alive; the folders of killed jobs are removed by the next run
into the same destination. Commits into one parent folder are serialised by a lock on it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .paths import require_utf8

MARKER = ".unleash-output.json"


def check_output_dir(path: str | os.PathLike, overwrite: bool, inputs=()) -> Path:
    """Refuse, before any work, a destination that cannot be replaced safely: the current folder
    or one above it, the home or root folder, a folder holding an input, a non-empty folder without
    `overwrite`, one that holds files this tool did not write, and an unwritable location."""
    if not os.fspath(path).strip():
        raise UserError("the output folder is an empty name: give a folder for the outputs")
    require_utf8(path)
    path = Path(path)
    try:
        resolved = path.resolve(strict=path.is_symlink())
    except (OSError, RuntimeError):  # a link to nowhere, or a loop of links
        raise UserError(f"{path}: is a symbolic link that leads to no folder (it dangles or loops)") from None
    if path.is_symlink():  # the outputs go where the link points; the link itself is left as it is
        path = resolved
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UserError(f"{path}: is the current folder or a folder above it; give a new folder for the outputs")
    if resolved == Path.home().resolve() or resolved == Path(resolved.anchor):
        raise UserError(f"{path}: is the home or the root folder; give a new folder for the outputs")
    for given in inputs:
        if given is not None and Path(given).exists():
            source = Path(given).resolve()
            if source == resolved or resolved in source.parents:
                raise UserError(f"{path}: holds the input {given}; the outputs need a folder of their own")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise UserError(f"{path}: exists and is not empty (use --overwrite to replace it)")
        _check_replaceable(path)
    parent = resolved.parent
    if not parent.is_dir():
        raise UserError(f"{parent}: the output's parent folder does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{parent}: is not writable")
    try:  # what only trying tells (a read-only mount, a full disk, /proc): the staging folder can be made
        _temporary_dir(parent, path.name, "partial").rmdir()
    except OSError as exc:
        raise UserError(f"{path}: cannot create the output folder ({exc.strerror})") from None
    return path


def _files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()}


def _check_replaceable(path: Path) -> None:
    """`path` holds exactly what an earlier job wrote there (its MARKER's list), or is refused."""
    try:
        written = set(json.loads((path / MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: was not written by unleash (no readable {MARKER}), so --overwrite will not "
                        f"delete it; remove it yourself or choose another folder") from None
    foreign = sorted(_files_in(path) - written - {MARKER})
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{path}: holds files that unleash did not write ({shown}); --overwrite would delete "
                        f"them: move them out or choose another folder")


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(partial|old)-(?P<pid>\d+)-[^/]+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale(parent: Path, name: str) -> list[Path]:
    """Remove the staging and old-output folders that killed jobs left for destination `name`
    in `parent`; folders of a live job (on this machine) or of another machine are left alone."""
    removed = []
    host = socket.gethostname()
    for entry in parent.glob(f".{glob_escape(name)}.*-*"):
        match = _TEMPORARY.match(entry.name)
        if not match or match["name"] != name or not entry.is_dir() or _alive(int(match["pid"])):
            continue
        owner = _read_owner(entry)
        if owner.get("host", host) != host:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if entry.exists():
            raise UserError(f"{entry}: a temporary folder left by a killed job cannot be removed; remove it yourself")
        removed.append(entry)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _read_owner(folder: Path) -> dict:
    for candidate in (folder / MARKER, *folder.glob(f"*/{MARKER}")):
        try:
            return json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
    return {}


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _temporary_dir(parent: Path, name: str, kind: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.{kind}-{os.getpid()}-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)  # mkdtemp makes 0700; a results folder should read like any other
    return folder


@contextmanager
def _locked(parent: Path):
    """An exclusive lock on the parent folder (released by the kernel if the process dies)."""
    handle = os.open(parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: the renames alone still never mix two jobs' files
            pass
        yield
    finally:
        os.close(handle)


@contextmanager
def _signals_held():
    """SIGINT/SIGTERM wait while a rename or a clean-up is under way, so neither is left half done."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool, inputs=()):
    """Yield a staging folder beside `path`; on success it replaces `path` whole, on any failure or
    interruption it is removed and whatever was at `path` is left as it was."""
    path = check_output_dir(path, overwrite, inputs)
    parent = path.resolve().parent
    try:
        with _signals_held(), _locked(parent):
            remove_stale(parent, path.name)
            staging = _temporary_dir(parent, path.name, "partial")
            (staging / MARKER).write_text(json.dumps({**_owner(), "files": []}) + "\n")
    except OSError as exc:
        raise UserError(f"{path}: cannot create the output folder ({exc.strerror})") from None
    try:
        yield staging
        with _signals_held(), _locked(parent):
            _commit(staging, path, overwrite)
    except BaseException as exc:
        with _signals_held():
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{exc.filename or path}: no space left on the disk; nothing was written") from None
        raise


def _commit(staging: Path, path: Path, overwrite: bool) -> None:
    """Rename the finished staging folder to `path`, after listing its files in its MARKER."""
    (staging / MARKER).write_text(json.dumps({**_owner(), "written_by": "unleash",
                                              "files": sorted(_files_in(staging) - {MARKER})}, indent=1) + "\n")
    if path.exists():
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:  # another job finished first: its outputs stay
                raise UserError(f"{path}: was written by another job while this one ran; it is left as it is")
            _check_replaceable(path)
            old = _temporary_dir(staging.parent, path.name, "old")
            os.replace(path, old / path.name)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
            return
    os.replace(staging, path)
