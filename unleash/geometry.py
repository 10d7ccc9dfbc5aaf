"""Volumes with their geometry, file I/O, and the model's network grid.

Conventions (stated once, used everywhere):
- Physical space is LPS millimetres, as in ITK, SimpleITK and DICOM.
- `Volume.array` is indexed [k, j, i] (z, y, x), the order SimpleITK's GetArrayFromImage returns;
  (i, j, k) are the file's voxel indices, so `index_to_physical` takes (i, j, k).
- The network grid is axis-aligned in LPS (identity direction), isotropic, with a fixed shape
  stored in the model file and centred on the lungs, so a network never sees the scanner's
  orientation and every result can be mapped back to the fixed image's own grid.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import UserError
from .image_files import check_nifti, file_key, igzip, is_nifti, is_rotation
from .paths import require_file, require_utf8

# ITK's warnings are raw multi-line text on stderr; what they warn of is checked and said here
sitk.ProcessObject_SetGlobalWarningDisplay(False)

READABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# The widest and the narrowest box of a chest scan, along each axis: beyond them the voxel sizes
# are a header's mistake (e.g. metres or micrometres for millimetres), and the work grid would not fit.
SCAN_EXTENT_MM = (10.0, 2000.0)


@dataclass(frozen=True)
class Grid:
    """A voxel grid in physical space: size (i, j, k), spacing_mm (i, j, k), origin_lps, direction (3x3, columns = axes)."""

    size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(reversed(self.size))

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) continuous voxel indices (i, j, k) -> (N, 3) LPS mm."""
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        return np.asarray(self.origin_lps) + (np.asarray(ijk, np.float64) * np.asarray(self.spacing_mm)) @ d.T

    def physical_to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """(N, 3) LPS mm -> (N, 3) continuous voxel indices (i, j, k)."""
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        return ((np.asarray(points_lps, np.float64) - np.asarray(self.origin_lps)) @ d) / np.asarray(self.spacing_mm)

    def to_sitk(self, pixel=sitk.sitkUInt8) -> sitk.Image:
        image = sitk.Image([int(s) for s in self.size], pixel)
        image.SetSpacing([float(s) for s in self.spacing_mm])
        image.SetOrigin([float(o) for o in self.origin_lps])
        image.SetDirection([float(d) for d in self.direction])
        return image

    @staticmethod
    def of(image: sitk.Image) -> Grid:
        return Grid(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def to_json(self) -> dict:
        return {"size": list(self.size), "spacing_mm": list(self.spacing_mm),
                "origin_lps": list(self.origin_lps), "direction": list(self.direction)}


@dataclass(frozen=True)
class Volume:
    """A 3D array [k, j, i] with the grid it lives on."""

    array: np.ndarray
    grid: Grid

    def __post_init__(self):
        if self.array.shape != self.grid.shape_zyx:
            raise ValueError(f"array shape {self.array.shape} does not match grid {self.grid.shape_zyx}")

    def with_array(self, array: np.ndarray) -> Volume:
        return replace(self, array=array)

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array, isVector=False)
        image.SetSpacing([float(s) for s in self.grid.spacing_mm])
        image.SetOrigin([float(o) for o in self.grid.origin_lps])
        image.SetDirection([float(d) for d in self.grid.direction])
        return image

    @staticmethod
    def from_sitk(image: sitk.Image) -> Volume:
        return Volume(sitk.GetArrayFromImage(image), Grid.of(image))


def check_image_file(path: str | os.PathLike) -> Grid:
    """The grid of a scalar 3D image file, with everything checked that can be without reading
    its voxels, and for NIfTI that its voxel data are whole; bad files raise UserError."""
    path = Path(require_utf8(path))
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an image file (a DICOM series: convert it to NIfTI or NRRD first)")
    require_file(path, "file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: is empty (0 bytes)")
    if is_nifti(path):
        check_nifti(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _c_stderr_captured():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UserError(f"{path}: cannot be read as an image ({_last_line(exc)})") from None
    if reader.GetDimension() != 3:
        raise UserError(f"{path}: is a {reader.GetDimension()}D image; a 3D volume is needed")
    if reader.GetNumberOfComponents() != 1:
        raise UserError(f"{path}: has {reader.GetNumberOfComponents()} components per voxel; a scalar volume is needed")
    if min(reader.GetSize()) < 8:
        raise UserError(f"{path}: size {reader.GetSize()} is too small for a 3D scan")
    grid = Grid(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()))
    check_geometry(grid, path)
    return grid


_read_ahead: dict[tuple, Volume] = {}  # volumes that the checks before the work read, for the work's read


def read_volume(path: str | os.PathLike, keep: bool = False) -> Volume:
    """Read a scalar 3D image (NIfTI, NRRD, MetaImage) with its geometry; bad files raise UserError.
    `keep`: the next read of the same unchanged file in this process takes this volume instead of
    reading it again (the CLI checks the voxel values before it imports the engine)."""
    check_image_file(path)
    key = file_key(Path(path))
    volume = _read_ahead.pop(key, None)
    if volume is None:
        try:
            with _c_stderr_captured():
                image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise UserError(f"{path}: cannot be read as an image ({_last_line(exc)})") from None
        volume = Volume.from_sitk(image)
    if keep:
        _read_ahead[key] = volume
    return volume


def _last_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "unreadable"


def check_geometry(grid: Grid, path) -> None:
    """Voxel sizes positive, origin finite, direction a rotation (axes orthonormal): every
    mapping between grids here assumes it, and coercing it would move the scan without a word."""
    if not all(np.isfinite(grid.spacing_mm)) or min(grid.spacing_mm) <= 0:
        raise UserError(f"{path}: voxel sizes {grid.spacing_mm} mm; they must be positive numbers")
    extent = np.asarray(grid.size) * np.asarray(grid.spacing_mm)
    if not (SCAN_EXTENT_MM[0] <= extent.min() and extent.max() <= SCAN_EXTENT_MM[1]):
        raise UserError(f"{path}: its box is {' x '.join(f'{e:g}' for e in extent)} mm (voxel sizes "
                        f"{', '.join(f'{s:g}' for s in grid.spacing_mm)} mm); a chest scan is "
                        f"{SCAN_EXTENT_MM[0]:g} to {SCAN_EXTENT_MM[1]:g} mm wide along each axis")
    if not all(np.isfinite(grid.origin_lps)):
        raise UserError(f"{path}: its origin {grid.origin_lps} is not a point")
    if not is_rotation(grid.direction):
        raise UserError(f"{path}: its direction matrix is not a rotation (its axes are not orthonormal); "
                        f"resample the scan onto an orthogonal grid first")


def physical_box(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) LPS mm corners of the axis-aligned box around the grid's voxel centres."""
    corners = np.array([[i, j, k] for i in (0, grid.size[0] - 1) for j in (0, grid.size[1] - 1)
                        for k in (0, grid.size[2] - 1)], np.float64)
    points = grid.index_to_physical(corners)
    return points.min(axis=0), points.max(axis=0)


def check_overlap(fixed: Grid, moving: Grid, fixed_path, moving_path) -> float:
    """The share of shared physical space (overlap_fraction); none at all is refused: scans of one
    patient share scanner coordinates, and the work grid is centred on the fixed scan."""
    shared = overlap_fraction(fixed, moving)
    if shared == 0:
        raise UserError(f"{fixed_path} and {moving_path} do not overlap in physical space (LPS mm); "
                        f"scans of one patient share scanner coordinates: check their origins")
    return shared


def overlap_fraction(a: Grid, b: Grid) -> float:
    """Volume shared by the two grids' physical boxes, as a share of the smaller box."""
    (low_a, high_a), (low_b, high_b) = physical_box(a), physical_box(b)
    shared = np.clip(np.minimum(high_a, high_b) - np.maximum(low_a, low_b), 0, None).prod()
    smaller = min(np.prod(high_a - low_a), np.prod(high_b - low_b))
    return float(shared / smaller) if smaller > 0 else 0.0


_stderr_lock = threading.Lock()
_stderr_users = 0
_stderr_saved: tuple[int, object] | None = None  # (the real stderr's duplicate, the capture file)


@contextmanager
def _c_stderr_captured():
    """While images are read or written, the C libraries' own stderr lines (e.g. NIfTI's "** ERROR:
    NWAD: wrote only 0 of N bytes" on a full disk, or "bad datatype" of a damaged header) go to a
    file: the failure is reported as one line instead. Shared by concurrent writers (outputs.write_fields
    writes two at a time); what was captured goes back to stderr when the last user finishes without an error."""
    global _stderr_users, _stderr_saved
    with _stderr_lock:
        if _stderr_users == 0:
            sys.stderr.flush()
            capture = tempfile.TemporaryFile()
            _stderr_saved = (os.dup(2), capture)
            os.dup2(capture.fileno(), 2)
        _stderr_users += 1
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        with _stderr_lock:
            _stderr_users -= 1
            if _stderr_users == 0:
                saved, capture = _stderr_saved
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                text = capture.read()
                capture.close()
                if text and not failed:
                    os.write(2, text)


def write_image(image: sitk.Image, path: str | os.PathLike) -> None:
    """Compressed at level 1: displacement fields are float noise to gzip, higher levels cost seconds
    and save little. A .gz file is gzipped by ISA-L (`isal`) where installed: the same gzip format,
    several times faster than SimpleITK's zlib (figures in README, Measured). A failure (a full disk,
    an unwritable folder) raises OSError with the path, and the C libraries' own stderr lines stay
    off the terminal."""
    path = Path(require_utf8(path))
    try:
        with _c_stderr_captured():
            _write(image, path)
    except RuntimeError as exc:
        folder = path.resolve().parent
        if folder.is_dir() and shutil.disk_usage(folder).free < _bytes_of(image):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise OSError(errno.EIO, f"cannot be written ({_last_line(exc)})", str(path)) from None


def _write(image: sitk.Image, path: Path) -> None:
    if not path.name.endswith(".nii.gz") or igzip is None:
        sitk.WriteImage(image, str(path), useCompression=True, compressionLevel=1)
        return
    handle, name = tempfile.mkstemp(suffix=".nii", prefix=".", dir=path.parent)  # a new file, never a user's
    os.close(handle)
    uncompressed = Path(name)
    try:
        sitk.WriteImage(image, str(uncompressed), useCompression=False)
        with open(uncompressed, "rb") as source, igzip.open(path, "wb", compresslevel=1) as target:
            shutil.copyfileobj(source, target, 1 << 24)
    finally:
        uncompressed.unlink(missing_ok=True)


def _bytes_of(image: sitk.Image) -> int:
    """Uncompressed size: the most that writing the image could have needed."""
    return int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()


def network_grid(center_lps: np.ndarray, shape_xyz: tuple[int, int, int], spacing_mm: float) -> Grid:
    """The model's grid: identity direction, `shape_xyz` voxels of `spacing_mm`, centred on `center_lps`."""
    size = np.asarray(shape_xyz, np.float64)
    origin = np.asarray(center_lps, np.float64) - (size - 1) / 2 * spacing_mm
    return Grid(tuple(int(s) for s in shape_xyz), (float(spacing_mm),) * 3, tuple(float(o) for o in origin))


def foreground_center_lps(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """Centre of the bounding box of `mask` ([k, j, i] booleans) in LPS mm; why the box and not
    the centroid: the box centre of the lungs is stable against dense vessel regions."""
    if not mask.any():
        raise UserError("the mask is empty: no lung or vessel voxels were found")
    corners = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.nonzero(mask.any(axis=other))[0]
        corners.append((present[0], present[-1]))
    k, j, i = corners
    lo = volume.grid.index_to_physical(np.array([[i[0], j[0], k[0]]]))[0]
    hi = volume.grid.index_to_physical(np.array([[i[1], j[1], k[1]]]))[0]
    return (lo + hi) / 2


def resample(volume: Volume, grid: Grid, linear: bool = True, default: float = 0.0) -> Volume:
    """`volume` resampled onto `grid` (physical positions kept), as float32."""
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    interpolator = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    out = sitk.Resample(image, grid.to_sitk(sitk.sitkFloat32), sitk.Transform(), interpolator, default, sitk.sitkFloat32)
    return Volume.from_sitk(out)
