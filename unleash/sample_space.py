"""The written volumes of `unleash sample`: their grid and the disk space they need, from the sampler's
config alone (torch-free), so that a count the disk cannot hold is refused before the model loads."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

from .errors import UserError
from .geometry import Grid, network_grid
from .models.config import VQAEConfig

OUTPUT_SPACING_MM = 1.0  # pairs are written at 1 mm, whatever the decoder's resolution
# Compressed bytes per voxel of one written map, measured on a Lung250M-4B vessel map at zlib level 1
# (labels 0.009, a soft map 0.14) with a margin of four.
BYTES_PER_VOXEL = {"labels": 0.04, "probabilities": 0.6}


def upsampling(config: VQAEConfig) -> int:
    """How many output voxels per decoder voxel along each axis (a 2 mm decoder: 2)."""
    return max(1, round(config.spacing_mm / OUTPUT_SPACING_MM))


def sample_grid(config: VQAEConfig) -> Grid:
    """The written volumes' grid: 1 mm, identity direction, centred at 0 mm, covering the decoder's box."""
    factor = upsampling(config)
    return network_grid(np.zeros(3), tuple(n * factor for n in config.volume_shape_ijk), config.spacing_mm / factor)


def check_free_space(folder: Path, count: int, grid: Grid, probabilities: bool) -> None:
    per_pair = 2 * math.prod(grid.size) * (BYTES_PER_VOXEL["labels"] + probabilities * BYTES_PER_VOXEL["probabilities"])
    free = shutil.disk_usage(folder).free
    if free < count * per_pair:
        raise UserError(f"{folder}: only {free / 2**20:.0f} MiB free, {count} pairs need about "
                        f"{count * per_pair / 2**20:.0f} MiB")
