"""Which rows of each array a writer owns, so that no two processes ever touch one chunk."""

from __future__ import annotations

from ckptbench.bench import storage


def row_slices(shape: tuple[int, ...], chunk_rows: int, processes: int) -> list[tuple[int, int] | None]:
    """Per process, the [start, stop) rows it owns: whole chunk rows, split as evenly as possible,
    lower ranks taking the remainder (so one chunk row goes to process 0). None: owns nothing."""
    if not shape:
        return [(0, 0)] + [None] * (processes - 1)  # a scalar: process 0 writes it whole
    rows = shape[0]
    n_chunk_rows = -(-rows // chunk_rows)
    owned: list[tuple[int, int] | None] = []
    for rank in range(processes):
        first = -(-rank * n_chunk_rows // processes)
        last = -(-(rank + 1) * n_chunk_rows // processes)
        owned.append((first * chunk_rows, min(last * chunk_rows, rows)) if last > first else None)
    return owned


def part(array, rows: tuple[int, int], scalar: bool):
    return array if scalar else array[rows[0]:rows[1]]


def write_unit_rows(layout: storage.Layout, shape: tuple[int, ...]) -> int:
    """Rows of the smallest unit two processes must not share: the shard if sharded, else the chunk."""
    unit = layout.shard_shape(shape) or layout.chunk_shape(shape)
    return unit[0] if unit else 1
