"""safetensors files read without torch: the header checked against the file (standard library
only: the Slicer modules list model files with it), and the weights checked for NaN and Inf with
numpy, so that a damaged model file or training checkpoint is refused before torch is imported
(which alone takes over a second).

A safetensors file is 8 bytes of header length (little endian), a JSON header mapping each
tensor's name to {"dtype", "shape", "data_offsets": [start, end]} (offsets from the end of the
header) and `__metadata__` to string entries, then the raw little-endian tensor bytes.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER_BYTES = 1 << 24
# safetensors dtype -> the numpy dtype of its raw bytes (bfloat16 as its 16 bits: numpy has no bfloat16)
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "F8_E5M2": "u1", "F8_E4M3": "u1",
          "I64": "<i8", "U64": "<u8", "I32": "<i4", "U32": "<u4", "I16": "<i2", "U16": "<u2", "I8": "i1",
          "U8": "u1", "BOOL": "u1"}
FLOATS = ("F64", "F32", "F16", "BF16")
BF16_EXPONENT = 0x7F80  # all exponent bits set: Inf or NaN


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte offset in the file
    end: int


@dataclass(frozen=True)
class Header:
    metadata: dict[str, str]
    tensors: dict[str, Tensor]


def read_header(path: str | os.PathLike) -> Header:
    """The header of a safetensors file, every tensor's extent checked against its dtype, its shape and
    the file's size; ValueError says what is wrong (the file is not read beyond its header)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if not 0 < length < min(MAX_HEADER_BYTES, size):
            raise ValueError("no safetensors header")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError("the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError("the safetensors metadata are not text entries")
    tensors = {}
    for name, entry in header.items():
        tensor = _tensor(entry, 8 + length)
        if tensor is None:
            raise ValueError(f"the header's entry for {name} is damaged")
        if tensor.end > size:
            raise ValueError("the file is shorter than its header says (truncated)")
        tensors[name] = tensor
    return Header(metadata, tensors)


def _tensor(entry, data_start: int) -> Tensor | None:
    """A header entry as a Tensor, None when its fields or its byte count do not add up."""
    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
        return None
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    whole = [isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (shape or []) + (offsets or [])]
    if not (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2 and all(whole)):
        return None
    if offsets[1] - offsets[0] != math.prod(shape) * int(DTYPES[entry["dtype"]][-1]):  # "<f4": 4 bytes an item
        return None
    return Tensor(entry["dtype"], tuple(shape), data_start + offsets[0], data_start + offsets[1])


def nonfinite(path: str | os.PathLike, header: Header, names=None) -> list[str]:
    """The names (of `names`, default all) of the floating-point tensors that hold NaN or Inf."""
    import numpy as np  # here: listing model files (read_header) needs no numpy

    broken = []
    with open(Path(path), "rb") as handle:
        for name in header.tensors if names is None else names:
            tensor = header.tensors[name]
            if tensor.dtype not in FLOATS or tensor.end == tensor.start:
                continue
            handle.seek(tensor.start)
            values = np.frombuffer(handle.read(tensor.end - tensor.start), DTYPES[tensor.dtype])
            finite = (values & BF16_EXPONENT) != BF16_EXPONENT if tensor.dtype == "BF16" else np.isfinite(values)
            if not finite.all():
                broken.append(name)
    return broken
