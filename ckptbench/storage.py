"""The TensorStore back end: a checkpoint as one zarr v2 array per parameter.

A checkpoint directory holds one array per tensor (the parameter name is the
array's folder) and `manifest.json` with names, shapes and dtypes, written last so a
checkpoint with a manifest is complete.

Saves and loads keep every array in flight at once, as a user should: all opens are
issued together, then writes (or reads) are issued without waiting for each other,
bounded only by an in-flight byte budget (like T5X's `concurrent_gb`) so that a
large model does not double its memory. Waiting tensor by tensor would serialise
the I/O and measure Python, not storage.
"""

from __future__ import annotations

import json
import os
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import tensorstore as ts

from . import chunking, compression
from .config import TestSpec
from .weights import NUMPY_DTYPES

MANIFEST = "manifest.json"
ZARR_V2_DTYPES = {"float32": "<f4", "float16": "<f2", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class Layout:
    """How one test lays a checkpoint out: the storage-facing part of a TestSpec."""

    chunk_budget_elements: int
    chunk_strategy: str
    concurrency_limit: int
    compression: dict[str, Any] | None

    @classmethod
    def of(cls, test: TestSpec, dtype: str) -> "Layout":
        itemsize = NUMPY_DTYPES[dtype].itemsize
        return cls(test.chunk_budget_elements(itemsize), test.chunk_strategy, test.concurrency_limit, test.compression)

    def context(self) -> ts.Context:
        # A fresh context per save or load: no cache is shared between them.
        return ts.Context({"file_io_concurrency": {"limit": self.concurrency_limit}})

    def array_spec(self, path: Path, shape: tuple[int, ...], dtype: str) -> dict[str, Any]:
        """TensorStore spec that creates one zarr v2 array."""
        metadata = {
            "shape": list(shape),
            "chunks": chunking.chunk_shape(shape, self.chunk_budget_elements, self.chunk_strategy),
            "dtype": ZARR_V2_DTYPES[dtype],
        }
        return {
            "driver": "zarr",
            "kvstore": {"driver": "file", "path": str(path)},
            "metadata": compression.apply_to_zarr_v2_metadata(metadata, self.compression),
            "create": True,
        }


@dataclass(frozen=True)
class TensorStoreBackend:
    """A test's way to save and load a checkpoint with TensorStore (see measure.Backend)."""

    layout: Layout
    max_inflight_bytes: int

    def save(self, tensors: Mapping[str, np.ndarray], directory: Path) -> None:
        save(tensors, directory, self.layout, self.max_inflight_bytes)

    def load(self, directory: Path) -> dict[str, np.ndarray]:
        return load(directory, self.layout, self.max_inflight_bytes)


def save(tensors: Mapping[str, np.ndarray], directory: Path, layout: Layout, max_inflight_bytes: int) -> None:
    """Write every tensor and the manifest; returns once TensorStore reports all writes durable."""
    directory.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    dtype = _dtype_name(next(iter(tensors.values())).dtype) if tensors else "float32"
    context = layout.context()
    with _settled() as track:
        opening = track([ts.open(layout.array_spec(directory / name, tensors[name].shape, dtype), context=context)
                         for name in names])
        stores = [future.result() for future in opening]
        _bounded(((tensors[n].nbytes, lambda s=s, n=n: s.write(tensors[n])) for s, n in zip(stores, names)),
                 max_inflight_bytes, track)
    manifest = {"format": "ckptbench-zarr-v2", "dtype": dtype,
                "tensors": [{"name": n, "shape": list(tensors[n].shape)} for n in names]}
    _write_durably(directory / MANIFEST, json.dumps(manifest, indent=1).encode())


def load(directory: Path, layout: Layout, max_inflight_bytes: int) -> dict[str, np.ndarray]:
    """Read a checkpoint written by `save` back into memory."""
    manifest = json.loads((directory / MANIFEST).read_bytes())
    entries = manifest["tensors"]
    itemsize = NUMPY_DTYPES[manifest["dtype"]].itemsize
    context = layout.context()
    with _settled() as track:
        opening = track([
            ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(directory / e["name"])}, "open": True},
                    context=context)
            for e in entries
        ])
        stores = [future.result() for future in opening]
        futures = _bounded(((int(np.prod(e["shape"])) * itemsize, s.read) for s, e in zip(stores, entries)),
                           max_inflight_bytes, track)
        return {e["name"]: np.asarray(f.result()) for e, f in zip(entries, futures)}


@contextmanager
def _settled() -> Iterator[Callable[[list[ts.Future]], list[ts.Future]]]:
    """Track futures; if anything interrupts (Ctrl-C, an error), cancel and wait for them all.

    TensorStore keeps writing on its own threads after Python stops waiting, so
    without this a folder could be deleted while files are still being created in it.
    """
    tracked: list[ts.Future] = []

    def track(futures: list[ts.Future]) -> list[ts.Future]:
        tracked.extend(futures)
        return futures

    try:
        yield track
    except BaseException:
        for future in tracked:
            future.cancel()
        for future in tracked:
            try:
                future.result(timeout=_SETTLE_TIMEOUT_S)
            except BaseException:  # cancelled, failed or timed out: all that matters is that it stopped
                pass
        raise


_SETTLE_TIMEOUT_S = 60.0


def _bounded(operations: Iterable[tuple[int, Callable[[], ts.Future]]], max_inflight_bytes: int,
             track: Callable[[list[ts.Future]], list[ts.Future]] = lambda futures: futures) -> list[ts.Future]:
    """Start operations in order, waiting for the oldest whenever the byte budget would be exceeded."""
    started: list[ts.Future] = []
    inflight: deque[tuple[int, ts.Future]] = deque()
    inflight_bytes = 0
    for nbytes, start in operations:
        while inflight and inflight_bytes + nbytes > max_inflight_bytes:
            done_bytes, future = inflight.popleft()
            future.result()
            inflight_bytes -= done_bytes
        future = track([start()])[0]
        started.append(future)
        inflight.append((nbytes, future))
        inflight_bytes += nbytes
    for _, future in inflight:
        future.result()
    return started


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _dtype_name(dtype: np.dtype) -> str:
    return next(name for name, np_dtype in NUMPY_DTYPES.items() if np_dtype == dtype)


def checkpoint_size(directory: Path) -> tuple[int, int, int]:
    """(apparent bytes, allocated bytes, file count) of every file under directory."""
    size_bytes = disk_bytes = n_files = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            size_bytes += st.st_size
            disk_bytes += st.st_blocks * 512
            n_files += 1
    return size_bytes, disk_bytes, n_files
