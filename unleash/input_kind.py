"""Telling a vessel label map from a chest CT by its voxel values (numpy only: the CLI checks an
input's values before the engine, and its scipy and torch, are imported)."""
from __future__ import annotations

import numpy as np

from .errors import UserError
from .geometry import Volume

# Telling a label map from a CT.
MAX_LABELS = 16                 # a vessel label map has at most this many distinct values
MIN_CT_DISTINCT_VALUES = 50     # a CT has far more
MIN_CT_RANGE_HU = 500.0         # at least air (-1000) to soft tissue (0)
MAX_SAMPLE_VOXELS = 1_000_000   # distinct values are counted on a strided sample, for speed


def check_voxel_values(volume: Volume) -> tuple[np.ndarray, float, float]:
    """(the voxel values as numbers, their minimum, their maximum) of an image that is finite and not
    constant; UserError otherwise: such an image is neither a vessel mask nor a CT."""
    values = volume.array.view(np.uint8) if volume.array.dtype == np.bool_ else volume.array
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UserError("the image contains NaN or infinite values: it is neither a vessel mask nor a CT")
    if low == high == 0:
        raise UserError("the image is all zeros: the vessel mask is empty")
    if low == high:
        raise UserError(f"the image is constant ({low:g} everywhere): it is neither a vessel mask nor a CT")
    return values, low, high


def detect_input_kind(volume: Volume) -> str:
    """'vessels' for a label map (few integer values >= 0), 'ct' for a CT in HU; else UserError."""
    values, low, high = check_voxel_values(volume)
    distinct = np.unique(_sample(values)).size
    if low >= 0 and distinct <= MAX_LABELS and _integer_valued(values):
        return "vessels"
    if low < 0 and high - low >= MIN_CT_RANGE_HU and distinct >= MIN_CT_DISTINCT_VALUES:
        return "ct"
    raise UserError(
        f"the image is neither a vessel mask (a few integer labels >= 0) nor a CT in Hounsfield units "
        f"(air near -1000): its values run from {low:g} to {high:g} with {distinct} distinct values in a sample")


def _sample(array: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil((array.size / MAX_SAMPLE_VOXELS) ** (1 / 3))))
    return array[::step, ::step, ::step]


def _integer_valued(array: np.ndarray) -> bool:
    if np.issubdtype(array.dtype, np.integer):
        return True
    # The sample rejects a CT cheaply; only a likely label map pays for the full check.
    return bool(np.all(np.mod(_sample(array), 1) == 0)) and bool(np.all(np.mod(array, 1) == 0))
