"""Will it fit? Disk and memory checks before a suite starts.

Disk: one run of the largest test must fit in the output filesystem's free space.
zarr v2 pads edge chunks to full size and every chunk file occupies whole blocks,
so the estimate counts padded chunks rounded up to 4 KiB blocks (an upper bound for
uncompressed data; compressed data is assumed no smaller, to stay safe).
Memory: the source weights plus one loaded copy must fit in available RAM.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from . import chunking
from .config import TestSpec
from .errors import UserError

BLOCK_BYTES = 4096
SAFETY = 1.05


def checkpoint_bytes_upper(shapes: Iterable[Sequence[int]], itemsize: int, budget_elements: int, strategy: str) -> int:
    """Bytes on disk of one zarr v2 checkpoint at most (before compression)."""
    total = 0
    for shape in shapes:
        chunk = chunking.chunk_shape(shape, budget_elements, strategy)
        n_chunks = math.prod(math.ceil(d / c) for d, c in zip(shape, chunk)) if shape else 1
        chunk_bytes = math.prod(chunk) * itemsize
        total += n_chunks * math.ceil(chunk_bytes / BLOCK_BYTES) * BLOCK_BYTES + BLOCK_BYTES  # + .zarray
    return total


def run_bytes_upper(test: TestSpec, shapes: Sequence[Sequence[int]], itemsize: int) -> int:
    """Disk bytes one run of a test may take: padded chunks for TensorStore, the raw bytes for references."""
    if test.backend != "tensorstore":
        return sum(math.prod(s) for s in shapes) * itemsize + BLOCK_BYTES
    if test.kvstore == "memory":
        return BLOCK_BYTES * 2  # only the manifest touches the disk
    return checkpoint_bytes_upper(shapes, itemsize, test.chunk_budget_elements(itemsize), test.chunk_strategy)


def free_bytes(path: Path) -> int:
    existing = next(p for p in (Path(path), *Path(path).parents) if p.exists())
    stat = os.statvfs(existing)
    return stat.f_bavail * stat.f_frsize


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _human(size_bytes: float) -> str:
    return f"{size_bytes / 1e9:.2f} GB" if size_bytes >= 1e9 else f"{size_bytes / 1e6:.1f} MB"


def check_disk(output_dir: Path, need_bytes: int, what: str) -> None:
    free = free_bytes(output_dir)
    if need_bytes * SAFETY > free:
        raise UserError(
            f"output_dir: {what} needs about {_human(need_bytes)} on disk but {output_dir} has "
            f"{_human(free)} free; free space, choose another --output-dir, or use a smaller --model or --dtype bfloat16"
        )


def check_memory(weights_bytes: int) -> None:
    available = available_memory_bytes()
    need = 2 * weights_bytes  # the source weights and one loaded copy
    if available is not None and need * SAFETY > available:
        raise UserError(
            f"memory: the weights ({_human(weights_bytes)}) plus one loaded copy need about {_human(need)} "
            f"but {_human(available)} is available; use a smaller --model or --dtype bfloat16"
        )
