"""Reading safetensors files without torch: header parsing, structural checks, NaN/Inf scan.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each
tensor name to {dtype, shape, data_offsets}, then the raw bytes. Parsing it ourselves
keeps the registry torch-free and lets us name exactly what is wrong with a bad file.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidAdapter

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
# Exponent bits of each IEEE-like float type: a value is NaN or Inf exactly when they are all ones.
_EXPONENT_MASKS = {"F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80), "F32": ("<u4", 0x7F800000), "F64": ("<u8", 0x7FF0000000000000)}
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and check a safetensors header; return (tensors, metadata, offset of the data section).

    Raises `InvalidAdapter` naming the file and the problem for a truncated or corrupt file.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise InvalidAdapter(f"{path}: not a safetensors file ({size} bytes, too short for a header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise InvalidAdapter(f"{path}: corrupt or truncated safetensors file (header says {header_len} bytes, file has {size})")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapter(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise InvalidAdapter(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_size = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise InvalidAdapter(f"{path}: corrupt safetensors header entry for tensor {name!r}") from None
        if dtype not in DTYPE_SIZES:
            raise InvalidAdapter(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if not (0 <= begin <= end) or end - begin != expected:
            raise InvalidAdapter(f"{path}: tensor {name!r} has {end - begin} bytes of data, its shape {list(shape)} needs {expected}")
        if end > data_size:
            raise InvalidAdapter(
                f"{path}: truncated safetensors file (tensor {name!r} ends at byte {data_start + end}, file has {size})"
            )
        tensors[name] = TensorInfo(dtype, shape, begin, end)
    return tensors, metadata, data_start


def non_finite_tensors(path: Path, tensors: dict[str, TensorInfo], data_start: int) -> list[str]:
    """Names of the floating-point tensors that hold at least one NaN or Inf."""
    import numpy as np

    bad = []
    chunk = 1 << 24  # elements per step, to bound the temporary arrays
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            return bad
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for name, info in tensors.items():
                if info.dtype not in _EXPONENT_MASKS or info.end == info.begin:
                    continue
                np_dtype, mask = _EXPONENT_MASKS[info.dtype]
                count = (info.end - info.begin) // DTYPE_SIZES[info.dtype]
                values = np.frombuffer(mm, dtype=np_dtype, count=count, offset=data_start + info.begin)
                mask_value = values.dtype.type(mask)
                for start in range(0, count, chunk):
                    part = values[start : start + chunk]
                    if np.any((part & mask_value) == mask_value):
                        bad.append(name)
                        break
                del values, part
    return bad


def check_weights_file(path: Path) -> dict[str, TensorInfo]:
    """Structural check plus NaN/Inf scan of one safetensors file; return its tensors."""
    tensors, _, data_start = read_header(path)
    bad = non_finite_tensors(path, tensors, data_start)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise InvalidAdapter(f"{path}: NaN or Inf values in tensor(s) {', '.join(bad[:3])}{more}")
    return tensors
