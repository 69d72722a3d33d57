"""Sizes as people write them ("64KB", "1 MiB", "t5x") and as reports print them.

Sizes are binary, as in the Phase 4 summary: 1 KB = 1,024 bytes. Printed byte counts are decimal (GB = 1e9 bytes), like
throughput in GB/s.
"""

from __future__ import annotations

import re

from ckptbench.core.errors import UserError

MAX_SIZE_BYTES = 2**32  # 4 GiB: beyond this one chunk is larger than any tensor worth chunking
T5X_CHUNK_BYTES = 64 * 2**20  # T5X's _DESIRED_CHUNK_SIZE_BYTES
SIZE_PATTERN = r"^\s*([tT]5[xX]|\d+(\.\d+)?\s*([KkMmGg][iI]?[Bb]|[Bb])?)\s*$"
_UNITS = {"": 1, "B": 1, "KB": 2**10, "KIB": 2**10, "MB": 2**20, "MIB": 2**20, "GB": 2**30, "GIB": 2**30}


def parse_size(value: int | str, where: str = "size") -> int:
    """Bytes from 262144, "256KB", "1 MiB" or "t5x" (64 MiB)."""
    if isinstance(value, int):
        return value
    text = value.strip().upper().replace(" ", "")
    if text == "T5X":
        return T5X_CHUNK_BYTES
    number = text.rstrip("KMGIB")
    try:
        size = int(float(number) * _UNITS[text[len(number):]])
    except (ValueError, OverflowError, KeyError):
        size = 0
    if not 1 <= size <= MAX_SIZE_BYTES:
        raise UserError(f"{where}: {value!r} is out of range; use 1 byte to 4 GB")
    return size


def size_label(size_bytes: int) -> str:
    """262144 -> '256KB' (binary units, as in the Phase 4 summary)."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if size_bytes >= scale and size_bytes % scale == 0:
            return f"{size_bytes // scale}{unit}"
    return f"{size_bytes}B"


def human_bytes(size_bytes: float) -> str:
    """'6.85 GB' or '538.1 MB' (decimal units)."""
    return f"{size_bytes / 1e9:.2f} GB" if size_bytes >= 1e9 else f"{size_bytes / 1e6:.1f} MB"


_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}  # a bare number is seconds
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?\s*[hms]\s*)+$|^\s*\d+(\.\d+)?\s*$"


def parse_duration(text: str, where: str = "duration") -> float:
    """Seconds from "10m", "90s", "1h", "1h30m" or a bare number of seconds."""
    value = str(text).strip().lower()
    if not re.fullmatch(DURATION_PATTERN, value):
        raise UserError(f"{where}: {text!r} is not a duration; use e.g. 90s, 10m, 1h or 1h30m")
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms]?)", value)
    seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise UserError(f"{where}: {text!r} is no time at all; use e.g. 90s, 10m, 1h or 1h30m")
    return seconds


def duration_label(seconds: float) -> str:
    """'4m05s', '52s', '1h02m'."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
