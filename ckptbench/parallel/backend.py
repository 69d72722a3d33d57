"""A TensorStore test run by several writers: the back end `measure` runs, whatever pool holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorstore as ts

from ckptbench.bench import cache, storage
from ckptbench.bench.backend import Backend
from ckptbench.bench.targets import RunLocation
from ckptbench.parallel import writers
from ckptbench.parallel.slices import row_slices, write_unit_rows
from ckptbench.parallel.writers import Job, WriterPool

_EVICTION_STRENGTH = {"drop_caches": 2, "fadvise": 1, None: 0}


@dataclass
class DistributedBackend(Backend):
    """A TensorStore test run by several writers."""

    layout: storage.Layout
    pool: WriterPool
    max_inflight_bytes: int
    context_extra: dict[str, Any] = field(default_factory=dict)
    last_workers: list[dict[str, float]] | None = None  # each writer's figures for the last save or load
    _shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _per_rank: list[dict[str, tuple[int, int]]] = field(default_factory=list)  # each writer's rows, by array

    def _context_extra(self) -> dict[str, Any]:
        extra = dict(self.context_extra)
        if self.layout.kvstore == "ocdbt":
            extra["ocdbt_coordinator"] = {"address": self.pool.coordinator_address(), "lease_duration": "10s"}
        return extra

    def _run(self, op: str, location: RunLocation) -> None:
        extra = self._context_extra()
        self.pool.send([Job(op, location, self.layout, slices, extra) for slices in self._per_rank])
        self.last_workers = [reply[1] for reply in self.pool.collect("done", writers.PHASE_TIMEOUT_S, during=op)]

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Start the writers (spawn, import, map the weights) and split the arrays, before any clock starts."""
        self.pool.start(tensors)
        if self.layout.kvstore == "ocdbt":
            self.pool.coordinator_address()  # rank 0's coordinator starts here, not inside the first timed save
        self._shapes = {name: a.shape for name, a in tensors.items()}
        self._per_rank = [{} for _ in range(self.pool.processes)]
        for name, shape in self._shapes.items():
            for rank, rows in enumerate(row_slices(shape, write_unit_rows(self.layout, shape), self.pool.processes)):
                if rows is not None:
                    self._per_rank[rank][name] = rows

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation) -> None:
        dtype = storage.dtype_name(next(iter(tensors.values())).dtype)
        context = self.layout.context(self._context_extra())
        if location.local_dir is not None:
            location.local_dir.mkdir(parents=True, exist_ok=True)
        with storage.settled() as track:
            creating = track([ts.open(self.layout.array_spec(location, name, shape, dtype), context=context)
                              for name, shape in self._shapes.items()])
            for future in creating:
                future.result()
        self._run("save", location)
        storage.write_manifest(location, self.layout, context, {
            "format": f"ckptbench-{self.layout.format}", "dtype": dtype, "processes": self.pool.processes,
            "tensors": [{"name": n, "shape": list(s)} for n, s in self._shapes.items()]})

    def load(self, location: RunLocation) -> dict[str, np.ndarray]:
        self._run("load", location)
        return {}  # the data stays with the writers, which verify it

    def verify(self, tensors: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray]) -> list[str]:
        replies = self.pool.collect("verified", writers.PHASE_TIMEOUT_S, during="verification")
        return sorted({name for reply in replies for name in reply[1]})

    def evict(self, directory: Path, method: str) -> str | None:
        """Evict here, then on every other host that wrote the checkpoint; the weakest method that worked."""
        used = [cache.evict(directory, method)] + [e["eviction"] for e in self.pool.evict_elsewhere(directory, method)]
        return min(used, key=lambda m: _EVICTION_STRENGTH.get(m, 0))

    def release(self) -> None:
        self.pool.settle()

    def footprint(self, location: RunLocation) -> tuple[int, int, int]:
        return storage.TensorStoreBackend(self.layout, self.max_inflight_bytes, self.context_extra).footprint(location)

    def worker_figures(self) -> list[dict[str, float]] | None:
        return self.last_workers
