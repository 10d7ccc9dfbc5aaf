"""What SimpleITK does not check when it reads a NIfTI file, checked here first.

Measured with SimpleITK 2.5 (ITK 5.4): a `.nii` or `.nii.gz` cut short, or a `.nii.gz` with
damaged bytes, reads without an error, the missing voxels as zeros; NaN voxels read as zeros; a
pixdim of 0 or NaN becomes 1 mm, a negative one its absolute value; an sform that shears the grid
is silently replaced by the qform. NRRD and MetaImage readers refuse such files themselves.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

try:
    from isal import igzip  # ISA-L: the same gzip format, read and written 4-5x faster than zlib
    DAMAGED_GZIP = (gzip.BadGzipFile, zlib.error, igzip.isal_zlib.error)
except ImportError:  # optional: the standard library's gzip does the same work
    igzip = None
    DAMAGED_GZIP = (gzip.BadGzipFile, zlib.error)

from .errors import UserError

# NIfTI-1 and NIfTI-2 header fields: (offset, struct format) of dim, datatype, bitpix, pixdim,
# vox_offset, sform_code and the sform rows srow_x, srow_y, srow_z
_LAYOUTS = {348: {"dim": (40, "8h"), "datatype": (70, "h"), "bitpix": (72, "h"), "pixdim": (76, "8f"), "vox_offset": (108, "f"),
                  "sform_code": (254, "h"), "srow": (280, "12f")},
            540: {"dim": (16, "8q"), "datatype": (12, "h"), "bitpix": (14, "h"), "pixdim": (104, "8d"), "vox_offset": (168, "q"),
                  "sform_code": (348, "i"), "srow": (400, "12d")}}
FLOAT_DATATYPES = {16: "f4", 64: "f8"}  # NIfTI datatype code -> numpy type of the voxels that can be NaN
CHUNK_BYTES = 1 << 22
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
    header, length, nonfinite = _read_through(path)
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
    if nonfinite:
        raise UserError(f"{path}: the image contains NaN or infinite values: it is neither a vessel mask nor a CT")


def _read_through(path: Path) -> tuple[dict | None, int, bool]:
    """(the NIfTI header, None when there is none, the file's whole decompressed length, whether it
    holds NaN or infinite float voxels). A gzip stream is read to its end, which checks its CRC and length;
    a plain file's voxels are read only when they are floats."""
    compressed = path.name.lower().endswith(".gz")
    try:
        with (igzip or gzip).open(path, "rb") if compressed else open(path, "rb") as handle:
            head = handle.read(540)
            header = _parse(head)
            voxels = FloatScan(header) if header and header["datatype"] in FLOAT_DATATYPES else None
            if not compressed and voxels is None:
                return header, path.stat().st_size, False
            length = len(head)
            if voxels:
                voxels.add(head)
            while chunk := handle.read(CHUNK_BYTES):
                length += len(chunk)
                if voxels:
                    voxels.add(chunk)
    except EOFError:
        raise UserError(f"{path}: is truncated (its compressed data end early)") from None
    except DAMAGED_GZIP as exc:
        raise UserError(f"{path}: cannot be read as an image (its compressed data are damaged: {exc})") from None
    return header, length, bool(voxels and voxels.nonfinite)


class FloatScan:
    """Float voxels checked for NaN and Inf as a file's bytes stream past, from its vox_offset on."""

    def __init__(self, header: dict):
        self.dtype = np.dtype(header["order"] + FLOAT_DATATYPES[header["datatype"]])
        self.skip = int(header["vox_offset"])  # header bytes still to come
        self.rest = b""  # the bytes of a voxel that the last piece cut
        self.nonfinite = False

    def add(self, piece: bytes) -> None:
        if self.nonfinite:
            return
        data, self.skip = self.rest + piece[self.skip:], max(0, self.skip - len(piece))
        whole = len(data) - len(data) % self.dtype.itemsize
        self.nonfinite = not np.isfinite(np.frombuffer(data[:whole], self.dtype)).all()
        self.rest = data[whole:]


def _parse(head: bytes) -> dict | None:
    for order in "<>":
        if len(head) < 4:
            return None
        size = struct.unpack(f"{order}i", head[:4])[0]
        layout = _LAYOUTS.get(size)
        if layout is None or len(head) < size:
            continue
        header = {"order": order}
        for key, (offset, form) in layout.items():
            values = struct.unpack_from(f"{order}{form}", head, offset)
            header[key] = values if len(values) > 1 else values[0]
        return header
    return None
