"""Sizes and durations as people write them on a command line (`2GB`, `500MiB`, `30d`, `6h`): one reader of each.

Each error names the flag and the value, as every refusal does. Imports nothing of the registry.
"""

from __future__ import annotations

import re

from .errors import InvalidInput

SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str, flag: str) -> int:
    """`2GB` (10**9), `1GiB` (2**30), `500MB`, `100KB`, or plain bytes -> bytes, as transformers reads sizes."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in SIZE_UNITS or int(match.group(1)) == 0:
        raise InvalidInput(f"{flag} {text!r}: expected a size such as 2GB, 500MB or 1GiB")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).upper()]


def parse_duration(text: str, flag: str) -> int:
    """`30d`, `12h`, `15m`, `90s`, `2w` -> seconds (a whole number of one unit, more than 0)."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhdw])\s*", str(text))
    if not match or int(match.group(1)) == 0:
        raise InvalidInput(f"{flag} {text!r}: expected a duration such as 30d, 12h, 15m or 90s")
    return int(match.group(1)) * DURATION_UNITS[match.group(2)]


def duration_text(seconds: float) -> str:
    """Seconds in the largest unit that divides them (`2592000` -> `30d`), as `parse_duration` reads it back."""
    for unit, size in sorted(DURATION_UNITS.items(), key=lambda item: -item[1]):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
