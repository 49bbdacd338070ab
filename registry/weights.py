"""Reading safetensors files without torch: header parsing, structural checks, NaN/Inf scan.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each
tensor name to {dtype, shape, data_offsets}, then the raw bytes. Parsing it ourselves
keeps the registry torch-free and lets us name exactly what is wrong with a bad file.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidAdapter

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
# Exponent bits of each IEEE-like float type: a value is NaN or Inf exactly when they are all ones.
_EXPONENT_MASKS = {"F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80), "F32": ("<u4", 0x7F800000), "F64": ("<u8", 0x7FF0000000000000)}
# Bytes scanned per step: small enough that a step's temporary stays in the CPU cache.
_SCAN_STEP_BYTES = 1 << 20
# Scan on two threads (numpy releases the GIL) when there is at least this much float data.
_PARALLEL_SCAN_BYTES = 16 << 20
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
    """Names of the floating-point tensors that hold at least one NaN or Inf.

    A value is NaN or Inf exactly when its exponent bits are all ones, i.e. when the value with
    its sign bit cleared, read as an unsigned integer, is at least the exponent mask; each step
    takes the max of that over ~1 MB of values. Large files are scanned on two threads.
    """
    import numpy as np

    steps = []  # (tensor name, dtype, file offset, element count): the work, in ~1 MB pieces
    for name, info in tensors.items():
        if info.dtype not in _EXPONENT_MASKS or info.end == info.begin:
            continue
        item = DTYPE_SIZES[info.dtype]
        count = (info.end - info.begin) // item
        per_step = _SCAN_STEP_BYTES // item
        for first in range(0, count, per_step):
            steps.append((name, info.dtype, data_start + info.begin + first * item, min(per_step, count - first)))
    if not steps:
        return []
    found: set[str] = set()
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            return []
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            pending = iter(steps)  # shared by the workers; next() on a list iterator is atomic under the GIL
            failure: list[BaseException] = []

            def worker() -> None:
                scratch: dict[str, np.ndarray] = {}
                values = None
                try:
                    for name, dtype, offset, count in pending:
                        if name in found or failure:
                            continue
                        np_dtype, mask = _EXPONENT_MASKS[dtype]
                        uint = np.dtype(np_dtype)
                        if np_dtype not in scratch:
                            scratch[np_dtype] = np.empty(_SCAN_STEP_BYTES // uint.itemsize, uint)
                        magnitude = scratch[np_dtype][:count]
                        values = np.frombuffer(mm, dtype=uint, count=count, offset=offset)
                        np.bitwise_and(values, uint.type((1 << (8 * uint.itemsize - 1)) - 1), out=magnitude)
                        values = None  # drop the view of the mmap promptly, so it can be closed
                        if magnitude.max() >= mask:
                            found.add(name)
                except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
                    values = None
                    failure.append(exc)

            helper = None
            total = sum(count * DTYPE_SIZES[dtype] for _, dtype, _, count in steps)
            if total >= _PARALLEL_SCAN_BYTES and _usable_cpus() > 1:
                helper = threading.Thread(target=worker, name="nan-scan", daemon=True)
                helper.start()
            worker()
            if helper is not None:
                helper.join()
            if failure:
                raise failure[0]
    return [name for name in tensors if name in found]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_weights_file(path: Path) -> dict[str, TensorInfo]:
    """Structural check plus NaN/Inf scan of one safetensors file; return its tensors."""
    tensors, _, data_start = read_header(path)
    bad = non_finite_tensors(path, tensors, data_start)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise InvalidAdapter(f"{path}: NaN or Inf values in tensor(s) {', '.join(bad[:3])}{more}")
    return tensors
