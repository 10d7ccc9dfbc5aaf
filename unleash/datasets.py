"""Folders of image pairs: Lung250M-4B style (case_NNN_1 = fixed, case_NNN_2 = moving) or
`unleash sample` style (pair_NNNN_fixed / pair_NNNN_moving), with optional landmark CSVs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

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


def find_pairs(folder: str | Path, landmarks_folder: str | Path | None = None) -> list[PairFiles]:
    """All complete pairs in `folder`, sorted by name. Landmarks are looked up as
    `<landmarks_folder>/<name>.csv`, by default in a sibling folder `<folder>_landmarks`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    if landmarks_folder is None:
        landmarks_folder = folder.parent / f"{folder.name}_landmarks"
    landmarks_folder = Path(landmarks_folder)
    pairs = []
    for path in sorted(folder.iterdir()):
        for pattern, moving_tag in _PATTERNS:
            match = pattern.match(path.name)
            if not match:
                continue
            name, suffix = match.groups()
            moving = folder / f"{name}{moving_tag}{suffix}"
            if not moving.is_file():
                raise UserError(f"{path}: its moving scan {moving.name} is missing")
            csv = landmarks_folder / f"{name}.csv"
            pairs.append(PairFiles(name, path, moving, csv if csv.is_file() else None))
    if not pairs:
        raise UserError(f"{folder}: no image pairs found (expected case_NNN_1/_2 or pair_NNNN_fixed/_moving files)")
    return pairs


def read_landmarks(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(fixed_ijk, moving_ijk), each (N, 3) continuous 0-based voxel indices (i, j, k)."""
    path = Path(path)
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a landmark CSV with 6 numeric columns ({exc})") from None
    if table.shape[1] != 6 or len(table) == 0:
        raise UserError(f"{path}: expected a header and rows fixed_i,fixed_j,fixed_k,moving_i,moving_j,moving_k")
    return table[:, :3], table[:, 3:]
