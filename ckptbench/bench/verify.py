"""Bit-for-bit verification of a loaded checkpoint against its source."""

from __future__ import annotations

from typing import Mapping

import numpy as np

_BLOCK_BYTES = 16 * 2**20  # compared a block at a time, so verifying adds no model-sized temporary


def mismatches(source: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray]) -> list[str]:
    """Names whose loaded bytes, shape or dtype differ from the source (NaN and -0.0 compared as bits)."""
    bad = [name for name in source if name not in loaded]
    for name, expected in source.items():
        got = loaded.get(name)
        if got is None:
            continue
        if got.dtype != expected.dtype or got.shape != expected.shape or not same_bytes(expected, got):
            bad.append(name)
    bad.extend(name for name in loaded if name not in source)
    return bad


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    left = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    right = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    if left.size != right.size:
        return False
    return all(np.array_equal(left[i:i + _BLOCK_BYTES], right[i:i + _BLOCK_BYTES])
               for i in range(0, left.size, _BLOCK_BYTES))
