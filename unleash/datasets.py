"""Folders of image pairs: Lung250M-4B style (case_NNN_1 = fixed, case_NNN_2 = moving) or
`unleash sample` style (pair_NNNN_fixed / pair_NNNN_moving), with optional landmark CSVs."""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .paths import require_file

_PATTERNS = [
    (re.compile(r"^(case_\d+)_1(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd)$"), "_2"),
    (re.compile(r"^(pair_\d+)_fixed(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd)$"), "_moving"),
]


@dataclass(frozen=True)
class PairFiles:
    name: str
    fixed: Path
    moving: Path
    landmarks: Path | None = None


def find_pairs(folder: str | Path, landmarks_folder: str | Path | None = None, limit: int | None = None) -> list[PairFiles]:
    """All complete pairs in `folder` (the first `limit` of them), sorted by name. Landmarks are
    looked up as `<landmarks_folder>/<name>.csv`, by default in a sibling folder `<folder>_landmarks`."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be 1 or more (got {limit})")
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    if landmarks_folder is None:
        landmarks_folder = folder.parent / f"{folder.name}_landmarks"
    landmarks_folder = Path(landmarks_folder)
    pairs, seen = [], {}
    for path in sorted(folder.iterdir()):
        for pattern, moving_tag in _PATTERNS:
            match = pattern.match(path.name)
            if not match:
                continue
            name, suffix = match.groups()
            moving = folder / f"{name}{moving_tag}{suffix}"
            if not moving.is_file():
                raise UserError(f"{path}: its moving scan {moving.name} is missing")
            if name in seen:
                raise UserError(f"{folder}: holds two scans of {name} ({seen[name].name} and {path.name}); "
                                f"keep one of them")
            seen[name] = path
            landmarks = landmarks_folder / f"{name}.csv"
            pairs.append(PairFiles(name, path, moving, landmarks if landmarks.is_file() else None))
    if not pairs:
        raise UserError(f"{folder}: no image pairs found (expected case_NNN_1/_2 or pair_NNNN_fixed/_moving files)")
    return pairs[:limit]


LANDMARK_COLUMNS = ["fixed_i", "fixed_j", "fixed_k", "moving_i", "moving_j", "moving_k"]


def read_landmarks(path: str | Path, fixed_grid=None, moving_grid=None) -> tuple[np.ndarray, np.ndarray]:
    """(fixed_ijk, moving_ijk), each (N, 3) continuous 0-based voxel indices (i, j, k). The header
    is required (without it the first landmark would be taken for one), every value must be a
    finite number, and with the grids given every index must lie inside its scan."""
    path = require_file(path, "landmark file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's byte order mark
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: not a readable landmark CSV ({exc})") from None
    if not rows or [cell.strip() for cell in rows[0]] != LANDMARK_COLUMNS:
        raise UserError(f"{path}: a landmark CSV starts with the header {','.join(LANDMARK_COLUMNS)}")
    if len(rows) == 1:
        raise UserError(f"{path}: holds no landmarks")
    table = np.empty((len(rows) - 1, 6))
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 6:
            raise UserError(f"{path}: line {line} has {len(row)} values; a landmark row has 6")
        try:
            table[line - 2] = [float(cell) for cell in row]
        except ValueError:
            raise UserError(f"{path}: line {line} holds a value that is not a number") from None
        if not np.all(np.isfinite(table[line - 2])):
            raise UserError(f"{path}: line {line} holds a value that is not finite (NaN or infinite)")
    for columns, grid, scan in ((slice(0, 3), fixed_grid, "fixed"), (slice(3, 6), moving_grid, "moving")):
        if grid is None:
            continue
        size = np.asarray(grid.size, np.float64)
        outside = np.nonzero(np.any((table[:, columns] < -0.5) | (table[:, columns] > size - 0.5), axis=1))[0]
        if outside.size:
            raise UserError(f"{path}: line {outside[0] + 2} lies outside the {scan} scan (voxel indices "
                            f"{table[outside[0], columns].tolist()}, size {list(grid.size)})"
                            + (f", and {outside.size - 1} more" if outside.size > 1 else ""))
    return table[:, :3], table[:, 3:]
