"""Which part of each array a writer owns (so that no two processes ever touch one chunk), and a part's view."""

from __future__ import annotations

from typing import Mapping, Sequence

from ckptbench.bench import storage
from ckptbench.sources.source_file import Box, select

part = select  # a part's view, of an array or a TensorStore


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


def row_boxes(layout: storage.Layout, shapes: Mapping[str, Sequence[int]], processes: int) -> list[dict[str, Box]]:
    """Per process, the box of each array it owns: whole write units (shards, else chunks) of rows; a scalar, whole,
    by process 0."""
    owned: list[dict[str, Box]] = [{} for _ in range(processes)]
    for name, shape in shapes.items():
        shape = tuple(shape)
        unit = layout.shard_shape(shape, name) or layout.chunk_shape(shape, name)  # shards if sharded, else chunks
        for rank, rows in enumerate(row_slices(shape, unit[0] if unit else 1, processes)):
            if rows is not None:
                owned[rank][name] = (rows,) if shape else ()
    return owned

