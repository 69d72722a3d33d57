"""Chunk shapes from an element budget (PHASE4_GUIDE.md's `chunk_strategy` says what each strategy gives).

Every strategy returns a chunk that never exceeds the array in any dimension and holds at most `max(budget, 1)`
elements. ``halve_floor`` is the original Phase 4 harness's exact rule (floor division: 576 -> 4 instead of 5 at its
64-element chunks); ``divisor`` is T5X's (chunks divide the array, nothing padded); ``tp_aligned`` shrinks within one
rank's part of the dimension a tensor-parallel load splits (`split`), so a rank's slice is whole chunks.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

STRATEGIES = ("halve", "halve_floor", "divisor", "rows", "tp_aligned")


def chunk_shape(shape: Sequence[int], budget_elements: int, strategy: str = "halve",
                split: tuple[int, int] | None = None) -> list[int]:
    """Chunk shape for an array of `shape` holding at most `budget_elements` elements. `split` (tp_aligned
    only): the dimension a tensor-parallel load splits and into how many parts."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown chunk strategy {strategy!r}")
    chunk = [max(1, int(d)) for d in shape]
    if not chunk:  # a scalar is one chunk of one element
        return []
    # The extents chunks must divide: the array's, or along the split dimension one rank's part of it
    # (a part N does not divide evenly cannot be aligned: its dimension is then chunked as divisor would).
    extents = list(chunk)
    if strategy == "tp_aligned" and split is not None:
        dim, parts = split
        if parts > 1 and extents[dim] % parts == 0:
            extents[dim] = chunk[dim] = extents[dim] // parts
    budget = max(1, int(budget_elements))
    while math.prod(chunk) > budget:
        axis = max(range(len(chunk)), key=lambda i: chunk[i])  # first of the largest
        if strategy == "rows" and chunk[0] > 1:
            axis = 0
        if strategy in ("halve", "rows"):
            chunk[axis] = (chunk[axis] + 1) // 2
        elif strategy == "halve_floor":
            chunk[axis] = max(1, chunk[axis] // 2)
        else:  # divisor, tp_aligned
            smaller = [d for d in _divisors(extents[axis]) if d < chunk[axis]]
            chunk[axis] = smaller[-1] if smaller else 1
    return chunk


@lru_cache(maxsize=4096)
def _divisors(n: int) -> tuple[int, ...]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return tuple(sorted(set(small + [n // d for d in small])))


def padded_elements(shape: Sequence[int], chunk: Sequence[int]) -> int:
    """Elements stored on disk by zarr v2, whose edge chunks are padded to full size."""
    return math.prod(math.ceil(d / c) * c for d, c in zip(shape, chunk)) if shape else 1
