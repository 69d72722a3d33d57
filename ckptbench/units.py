"""Sizes as people write them ("64KB", "1 MiB", "t5x") and as reports print them.

Sizes are binary, as in the Phase 4 summary: 1 KB = 1,024 bytes. Printed byte
counts are decimal (GB = 1e9 bytes), like throughput in GB/s.
"""

from __future__ import annotations

from .errors import UserError

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
