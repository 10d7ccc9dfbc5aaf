"""What SimpleITK does not check when it reads a NIfTI file, checked here first.

Measured with SimpleITK 2.5 (ITK 5.4): a `.nii` or `.nii.gz` cut short, or a `.nii.gz` with
damaged bytes, reads without an error, the missing voxels as zeros; a pixdim of 0 or NaN becomes
1 mm, a negative one its absolute value; an sform that shears the grid is silently replaced by
the qform. NRRD and MetaImage readers refuse such files themselves.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import UserError

# NIfTI-1 and NIfTI-2 header fields: (offset, struct format) of dim, bitpix, pixdim, vox_offset,
# sform_code and the sform rows srow_x, srow_y, srow_z
_LAYOUTS = {348: {"dim": (40, "8h"), "bitpix": (72, "h"), "pixdim": (76, "8f"), "vox_offset": (108, "f"),
                  "sform_code": (254, "h"), "srow": (280, "12f")},
            540: {"dim": (16, "8q"), "bitpix": (14, "h"), "pixdim": (104, "8d"), "vox_offset": (168, "q"),
                  "sform_code": (348, "i"), "srow": (400, "12d")}}
ORTHONORMAL_TOLERANCE = 1e-4  # on the entries of R^T R - I; float32 headers hold a rotation to ~1e-7


def is_rotation(matrix) -> bool:
    """A finite 3x3 matrix with orthonormal axes (a rotation, or a rotation with a flip)."""
    r = np.asarray(matrix, np.float64).reshape(3, 3)
    return bool(np.all(np.isfinite(r)) and np.abs(r.T @ r - np.eye(3)).max() < ORTHONORMAL_TOLERANCE)


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def file_key(path: Path) -> tuple:
    """(path, inode, size, mtime): what tells that a file read before is still the same file."""
    status = path.stat()
    return str(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns


_checked: set[tuple] = set()  # files found whole: checked before any work, then read


def check_nifti(path: Path) -> None:
    """Refuse a NIfTI file whose voxel data are incomplete or damaged, whose voxel sizes are not
    positive numbers, or whose sform is not a rotation with voxel sizes."""
    key = file_key(path)
    if key in _checked:
        return
    _check_nifti(path)
    _checked.add(key)


def _check_nifti(path: Path) -> None:
    head, length = _header_and_length(path)
    header = _parse(head)
    if header is None:
        return  # not a NIfTI header: SimpleITK's own error follows
    dims = header["dim"]
    ndim = dims[0]
    if not 1 <= ndim <= 7 or header["bitpix"] <= 0 or any(n < 1 for n in dims[1:ndim + 1]):
        return
    expected = int(header["vox_offset"]) + math.prod(dims[1:ndim + 1]) * header["bitpix"] // 8
    if length < expected:
        raise UserError(f"{path}: is truncated: it holds {length:,} bytes, its header announces {expected:,} "
                        f"({100 * max(0, length - header['vox_offset']) / (expected - header['vox_offset']):.0f} % "
                        f"of the voxels)")
    spacing = header["pixdim"][1:min(ndim, 3) + 1]
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise UserError(f"{path}: its header gives voxel sizes (pixdim) {', '.join(f'{s:g}' for s in spacing)}; "
                        f"they must be positive numbers of mm")
    if header["sform_code"] > 0:
        axes = np.asarray(header["srow"], np.float64).reshape(3, 4)[:, :3]
        norms = np.linalg.norm(axes, axis=0)
        rotation = axes / np.where(norms > 0, norms, 1)
        if not (np.all(norms > 0) and is_rotation(rotation)):
            raise UserError(f"{path}: its sform is not a rotation with voxel sizes (it shears or skews the grid, or "
                            f"is degenerate); resample the scan onto an orthogonal grid first")


def _header_and_length(path: Path) -> tuple[bytes, int]:
    """The first 540 bytes of the (decompressed) file and its whole (decompressed) length; a gzip
    stream is read to its end, which checks its CRC and length."""
    if not path.name.lower().endswith(".gz"):
        with open(path, "rb") as handle:
            return handle.read(540), path.stat().st_size
    try:
        with gzip.open(path, "rb") as handle:
            head = handle.read(540)
            length = len(head)
            while chunk := handle.read(1 << 22):
                length += len(chunk)
    except EOFError:
        raise UserError(f"{path}: is truncated (its compressed data end early)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise UserError(f"{path}: cannot be read as an image (its compressed data are damaged: {exc})") from None
    return head, length


def _parse(head: bytes) -> dict | None:
    for order in "<>":
        if len(head) < 4:
            return None
        size = struct.unpack(f"{order}i", head[:4])[0]
        layout = _LAYOUTS.get(size)
        if layout is None or len(head) < size:
            continue
        header = {}
        for key, (offset, form) in layout.items():
            values = struct.unpack_from(f"{order}{form}", head, offset)
            header[key] = values if len(values) > 1 else values[0]
        return header
    return None
