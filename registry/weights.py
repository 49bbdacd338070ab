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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidAdapter, shown

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
# The largest |entry| accepted in a LoRA A or B factor. A LoRA update is scale * B @ A with A initialised at
# about 1/sqrt(fan_in) and B at zero; trained factors have entries of order 1e-3..1. An entry of 1e4 in both
# factors already puts 1e8 * rank into one entry of the update, far beyond any weight of the base (and float16's
# largest value, 65504, is overflowed by a single product of two such entries): such a file is corrupt.
MAX_LORA_FACTOR = 1e4


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


def peak_magnitudes(path: Path, tensors: dict[str, TensorInfo], data_start: int) -> dict[str, int]:
    """For each floating-point tensor, the largest |value| as its bit pattern with the sign cleared.

    For IEEE-like floats that unsigned integer orders like |value|, and it is at least the exponent mask
    exactly when the value is NaN or Inf; so one max per ~1 MB step answers both "any NaN/Inf?" and "any
    |value| above a bound?" without converting a single value. Large files are scanned on two threads,
    each with its own peaks (merged at the end); a tensor already known to hold NaN/Inf is not read further.
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
        return {}
    peaks: list[dict[str, int]] = []
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            return {}
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            pending = iter(steps)  # shared by the workers; next() on a list iterator is atomic under the GIL
            failure: list[BaseException] = []

            def worker() -> None:
                scratch: dict[str, np.ndarray] = {}
                peak: dict[str, int] = {}
                peaks.append(peak)
                values = None
                try:
                    for name, dtype, offset, count in pending:
                        np_dtype, mask = _EXPONENT_MASKS[dtype]
                        if failure or peak.get(name, 0) >= mask:
                            continue
                        uint = np.dtype(np_dtype)
                        if np_dtype not in scratch:
                            scratch[np_dtype] = np.empty(_SCAN_STEP_BYTES // uint.itemsize, uint)
                        magnitude = scratch[np_dtype][:count]
                        values = np.frombuffer(mm, dtype=uint, count=count, offset=offset)
                        np.bitwise_and(values, uint.type((1 << (8 * uint.itemsize - 1)) - 1), out=magnitude)
                        values = None  # drop the view of the mmap promptly, so it can be closed
                        peak[name] = max(peak.get(name, 0), int(magnitude.max()))
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
    merged: dict[str, int] = {}
    for peak in peaks:
        for name, bits in peak.items():
            merged[name] = max(merged.get(name, 0), bits)
    return merged


def non_finite_tensors(path: Path, tensors: dict[str, TensorInfo], data_start: int) -> list[str]:
    """Names of the floating-point tensors that hold at least one NaN or Inf."""
    peaks = peak_magnitudes(path, tensors, data_start)
    return [name for name in tensors if name in peaks and peaks[name] >= _EXPONENT_MASKS[tensors[name].dtype][1]]


def magnitude_bits(bound: float, dtype: str) -> int:
    """The bit pattern of the largest `dtype` value that is at most `bound` (>= 0): |x| > bound iff bits(|x|) exceeds it."""
    import numpy as np

    if dtype == "BF16":  # bfloat16 is the top half of a float32; dropping the low half rounds toward zero
        return magnitude_bits(bound, "F32") >> 16
    np_float = {"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype]
    value = np_float(bound)
    if float(value) > bound:
        value = np.nextafter(value, np_float(0))
    return int(np.array(value).view(_EXPONENT_MASKS[dtype][0]))


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_weights_file(path: Path, bounded: Callable[[str], bool] = lambda name: False) -> dict[str, TensorInfo]:
    """Structural check plus one scan of one safetensors file; return its tensors.

    Refused: any NaN or Inf, and in the tensors `bounded(name)` selects (the LoRA A/B factors) any
    |value| > MAX_LORA_FACTOR.
    """
    tensors, _, data_start = read_header(path)
    peaks = peak_magnitudes(path, tensors, data_start)
    bad = [n for n in tensors if n in peaks and peaks[n] >= _EXPONENT_MASKS[tensors[n].dtype][1]]
    if bad:
        raise InvalidAdapter(f"{path}: NaN or Inf values in tensor(s) {_some(bad)}")
    huge = [n for n in tensors if n in peaks and bounded(n) and peaks[n] > magnitude_bits(MAX_LORA_FACTOR, tensors[n].dtype)]
    if huge:
        raise InvalidAdapter(f"{path}: values beyond ±{MAX_LORA_FACTOR:g} in LoRA factor(s) {_some(huge)}; trained LoRA "
                             f"factors stay far below that, so these weights are corrupt or not LoRA factors")
    return tensors


def _some(names: list[str]) -> str:
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(shown(n, 120) for n in names[:3]) + more
