"""Training data: folders of pairs (Lung250M-4B's case_NNN_1/_2 or `unleash sample`'s
pair_NNNN_fixed/_moving), several mixed with weights (`--data real --data synthetic:0.5`), and
token files (`tokens.npz` as `unleash encode` writes it, or the paper's token files).

Every sample is drawn from a generator seeded by (seed, step, position in the global batch), so a
step's batch does not depend on how many processes share it or on whether the run was resumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import PairFiles, find_pairs
from ..errors import UserError
from ..geometry import Volume, check_image_file, read_volume
from ..image_files import file_key
from ..input_kind import detect_input_kind
from ..paths import require_file


@dataclass(frozen=True)
class Source:
    path: Path
    weight: float = 1.0

    def to_json(self) -> dict:
        return {"path": str(self.path), "weight": self.weight}


def parse_source(text: str) -> Source:
    """'DIR' or 'DIR:WEIGHT' (a relative sampling weight, default 1)."""
    path, _, weight = text.rpartition(":")
    if path and weight:
        try:
            value = float(weight)
        except ValueError:
            if Path(path).is_dir() and not Path(text).exists():
                raise UserError(f"{text}: the data weight {weight!r} after the folder is not a number") from None
            return Source(Path(text))  # a colon that is part of the path
        if not value > 0 or value == float("inf"):
            raise UserError(f"{text}: a data weight must be a positive number")
        return Source(Path(path), value)
    return Source(Path(text))


def sample_rng(seed: int, step: int, position: int) -> np.random.Generator:
    """The generator of one sample of the global batch."""
    return np.random.default_rng([seed, step, position])


class Mixture:
    """Items grouped by source; a draw picks a source by weight, then an item uniformly."""

    def __init__(self, groups: list[list], weights: list[float]):
        kept = [(group, weight) for group, weight in zip(groups, weights) if group]
        if not kept:
            raise UserError("no training data")
        self.groups = [group for group, _ in kept]
        self.probabilities = np.array([w for _, w in kept]) / sum(w for _, w in kept)

    def __len__(self) -> int:
        return sum(len(group) for group in self.groups)

    def draw(self, rng: np.random.Generator):
        group = self.groups[rng.choice(len(self.groups), p=self.probabilities)]
        return group[rng.integers(len(group))]


def pair_files(sources: list[Source]) -> list[list[PairFiles]]:
    """The pairs of every source folder (datasets.find_pairs; an empty folder is an error)."""
    for source in sources:
        if source.path.is_file():
            raise UserError(f"{source.path}: training data for this model is a folder of image pairs, not a file")
    return [find_pairs(source.path) for source in sources]


def read_pair(files: PairFiles) -> tuple[Volume, Volume]:
    """Both scans of a training pair: vessel label maps (finite, not empty) that share one voxel grid size."""
    fixed, moving = read_volume(files.fixed), read_volume(files.moving)
    if fixed.array.shape != moving.array.shape:
        raise UserError(f"{files.moving}: its size {moving.grid.size} differs from its fixed scan's {fixed.grid.size} "
                        f"({files.fixed.name}); training pairs must share one grid")
    for path, volume in ((files.fixed, fixed), (files.moving, moving)):
        if not volume.array.any():
            raise UserError(f"{path}: is empty (no vessel voxels)")
        try:
            kind = detect_input_kind(volume)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
        if kind != "vessels":
            raise UserError(f"{path}: is not a vessel label map (its values are a CT's)")
    return fixed, moving


_verified: set[tuple] = set()  # pairs read and found good by check_pairs, as (file_key(fixed), file_key(moving))


def check_pairs(groups: list[list[PairFiles]]) -> None:
    """Every training pair as read_pair takes it, before the run starts: first every file's bytes (a cut
    or damaged file is found without reading any voxels), then each pair's voxels, which are read
    again by the trainer (keeping them would double the memory of a large data set)."""
    pairs = [files for group in groups for files in group]
    for path in (path for files in pairs for path in (files.fixed, files.moving)):
        check_image_file(path)
    for files in pairs:
        key = (file_key(files.fixed), file_key(files.moving))
        if key not in _verified:
            read_pair(files)
            _verified.add(key)


def read_token_grids(path: Path, codebook_size: int, token_shape_ijk) -> tuple[np.ndarray, list[str]]:
    """(tokens int64 (N, I, J, K), names) from a token file or a folder holding tokens.npz."""
    if path.is_dir():
        path = path / "tokens.npz"
    require_file(path, "token file", " (the denoiser trains on tokens.npz files from `unleash encode`)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "tokens" not in archive:
                raise UserError(f"{path}: has no 'tokens' array")
            tokens = archive["tokens"]
            names = [str(n) for n in archive["names"]] if "names" in archive else \
                [f"case_{int(c):03d}" for c in archive["case_ids"]] if "case_ids" in archive else \
                [f"{path.stem}_{i}" for i in range(len(tokens))]
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable token file ({exc})") from None
    if tokens.ndim != 4 or not np.issubdtype(tokens.dtype, np.integer):
        raise UserError(f"{path}: tokens must be an integer array (N, I, J, K), found {tokens.dtype} {tokens.shape}")
    if list(tokens.shape[1:]) != list(token_shape_ijk):
        raise UserError(f"{path}: token grids of {list(tokens.shape[1:])}, but the denoiser is configured for "
                        f"{list(token_shape_ijk)} (set model.token_shape_ijk in --config)")
    if len(tokens) == 0:
        raise UserError(f"{path}: holds no token grids")
    if tokens.min() < 0 or tokens.max() >= codebook_size:
        raise UserError(f"{path}: token ids {tokens.min()}..{tokens.max()} lie outside the codebook 0..{codebook_size - 1}")
    return tokens.astype(np.int64), names
