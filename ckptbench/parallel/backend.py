"""Tests run by several processes: the back ends `measure` runs, whatever pool holds the processes.

`DistributedBackend`: a TensorStore test saved and loaded by several writers, each its rows of every array; or, with tp
> 1, loaded by tp readers, each its tensor-parallel slice (saved whole by the first writer, as one trainer writes, or
with tp_save by the tp ranks, each its slice). `TensorParallelReference`: a reference row under tp > 1: saved here by
the row's own back end, loaded by the tp readers with the row's own loader (`Backend.load_slices`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorstore as ts

from ckptbench.bench import cache, storage
from ckptbench.bench.backend import Backend, Wrapper
from ckptbench.bench.measure import own_backend, reference_settings
from ckptbench.bench.targets import RunLocation, Target
from ckptbench.parallel import writers
from ckptbench.parallel.slices import row_boxes
from ckptbench.parallel.writers import Job, WriterPool
from ckptbench.sources.source_file import Box
from ckptbench.spec.fields import TestSpec
from ckptbench.spec.references import CEILING
from ckptbench.spec.suite import SuiteConfig
from ckptbench.spec.tensor_parallel import rank_boxes

_EVICTION_STRENGTH = {"drop_caches": 2, "fadvise": 1, None: 0}


class _Pooled(Backend):
    """A back end whose jobs the pool's processes run from a common start; they verify what they read."""

    pool: WriterPool
    last_workers: list[dict[str, float]] | None = None  # each process's figures for the last save or load

    def _run(self, jobs: list[Job], during: str) -> None:
        self.pool.send(jobs)
        self.last_workers = [reply[1] for reply in self.pool.collect("done", writers.PHASE_TIMEOUT_S, during=during)]

    def verify(self, tensors: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray]) -> list[str]:
        replies = self.pool.collect("verified", writers.PHASE_TIMEOUT_S, during="verification")
        return sorted({name for reply in replies for name in reply[1]})

    def worker_figures(self) -> list[dict[str, float]] | None:
        return self.last_workers


@dataclass
class DistributedBackend(_Pooled):
    """A TensorStore test run by several writers."""

    layout: storage.Layout
    pool: WriterPool
    max_inflight_bytes: int
    context_extra: dict[str, Any] = field(default_factory=dict)
    tp: int = 1  # > 1: loads by tp readers (the pool's processes), each reading its tensor-parallel slice
    tp_save: bool = False  # with tp > 1: the save written by the tp ranks, each its slice
    _shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _per_rank: dict[str, list[dict[str, Box]]] = field(default_factory=dict)  # by op, each writer's box by array

    @property
    def bypasses_page_cache(self) -> bool:
        return self.layout.file_io_mode == "direct"

    def _context_extra(self) -> dict[str, Any]:
        extra = dict(self.context_extra)
        if self.layout.kvstore == "ocdbt":
            extra["ocdbt_coordinator"] = {"address": self.pool.coordinator_address(), "lease_duration": "10s"}
        return extra

    def _run_op(self, op: str, location: RunLocation) -> None:
        extra = self._context_extra()
        self._run([Job(op, location, self.layout, boxes, extra, reader=(rank, self.pool.processes))
                   for rank, boxes in enumerate(self._per_rank[op])], during=op)

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Start the writers (spawn, import, map the weights) and split the arrays, before any clock starts."""
        self.pool.start(tensors)
        if self.layout.kvstore == "ocdbt":
            self.pool.coordinator_address()  # rank 0's coordinator starts here, not inside the first timed save
        self._shapes = {name: a.shape for name, a in tensors.items()}
        self._per_rank = self.boxes()

    def boxes(self) -> dict[str, list[dict[str, Box]]]:
        """Per op ("save", "load"), each writer's box of every array it writes or reads."""
        rows = row_boxes(self.layout, self._shapes, self.pool.processes)
        if self.tp <= 1:
            return {"save": rows, "load": rows}
        if self.pool.processes != self.tp:
            raise ValueError(f"tp {self.tp} needs {self.tp} readers, the pool has {self.pool.processes}")
        sliced = rank_boxes(self._shapes, self.tp)
        if self.tp_save:  # each rank writes its slice; a replicated tensor once, by rank 0 (tp_aligned: no chunk
            # is shared, config checks it)
            save: list[dict[str, Box]] = [{n: b for n, b in boxes.items() if b or rank == 0}
                                          for rank, boxes in enumerate(sliced)]
        else:  # written whole by the first writer, as one trainer writes a checkpoint
            save = [{name: () for name in self._shapes} if rank == 0 else {} for rank in range(self.tp)]
        return {"save": save, "load": sliced}

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation) -> None:
        dtype = storage.dtype_name(next(iter(tensors.values())).dtype)
        context = self.layout.context(self._context_extra())
        if location.local_dir is not None:
            location.local_dir.mkdir(parents=True, exist_ok=True)
        with storage.settled() as track:
            for future in track([ts.open(self.layout.array_spec(location, name, shape, dtype), context=context)
                                 for name, shape in self._shapes.items()]):
                future.result()
        self._run_op("save", location)
        storage.write_manifest(location, self.layout, context, dtype, self._shapes, processes=self.pool.processes)

    def load(self, location: RunLocation) -> dict[str, np.ndarray]:
        self._run_op("load", location)
        return {}  # the data stays with the writers, which verify it

    def evict(self, directory: Path, method: str) -> str | None:
        """Evict here, then on every other host that wrote the checkpoint; the weakest method that worked."""
        used = [cache.evict(directory, method)] + [e["eviction"] for e in self.pool.evict_elsewhere(directory, method)]
        return min(used, key=lambda m: _EVICTION_STRENGTH.get(m, 0))

    def release(self) -> None:
        self.pool.settle()

    def footprint(self, location: RunLocation) -> tuple[int, int, int]:
        return storage.TensorStoreBackend(self.layout, self.max_inflight_bytes, self.context_extra).footprint(location)


@dataclass
class TensorParallelReference(_Pooled, Wrapper):
    """A reference row under tp > 1: the row's back end saves here; the pool's tp readers load, each its slice with
    the row's loader (`Backend.load_slices`), from a common start, and verify it."""

    inner: Backend
    kind: str
    settings: dict[str, Any]
    pool: WriterPool
    tp: int
    _boxes: list[dict[str, Box]] = field(default_factory=list)
    _patterns: dict[str, float] | None = None

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        self.pool.start(tensors)
        self.inner.prepare(tensors)
        self._boxes = rank_boxes({name: a.shape for name, a in tensors.items()}, self.tp)

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation) -> None:
        self.last_workers = None
        self.inner.save(tensors, location)
        self._patterns = self.inner.pattern_seconds()  # the ceiling's write patterns

    def load(self, location: RunLocation) -> dict[str, np.ndarray]:
        self._patterns = None  # a tensor-parallel load is one pattern: tp readers, each its share
        ceiling = self.kind == CEILING  # its readers read shares of raw bytes, not named slices
        self._run([Job("load", location, boxes={} if ceiling else boxes, reference=(self.kind, self.settings),
                       reader=(rank, self.tp)) for rank, boxes in enumerate(self._boxes)], during="load")
        return {}  # the data stays with the readers, which verify it

    def release(self) -> None:
        self.pool.settle()
        self.inner.release()

    def pattern_seconds(self) -> dict[str, float] | None:
        return self._patterns


def backend_of(test: TestSpec, config: SuiteConfig, target: Target, pool: WriterPool) -> Backend:
    """The back end of a test run by a pool's processes: a TensorStore test's writers (or tp readers), or a
    reference row's tp readers (its own back end, bench.measure's, saves)."""
    if test.is_reference:
        return TensorParallelReference(own_backend(test, config, target), test.backend,
                                       reference_settings(test, config), pool, test.tp)
    return DistributedBackend(storage.Layout.of(test, config.dtype), pool, config.max_inflight_bytes,
                              context_extra=target.context_spec(), tp=test.tp, tp_save=test.tp_save)
