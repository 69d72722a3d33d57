"""Many writers: N worker processes, like N hosts, saving and loading one checkpoint together.

Each worker sees the parent's weights through one shared-memory block (no copy per
worker; where shared memory is too small, as in some containers, each worker rebuilds
the weights from the same source instead) and writes or reads only its own slice of every array:
a contiguous range of whole chunks along the first dimension, so no two processes
ever touch one chunk. An array with fewer chunk rows than processes is split over
as many processes as it has chunk rows; an array of one chunk row (1-D norms, for
example) is written and read whole by process 0.

The parent creates every array's metadata, then starts all workers at once; a save
lasts from that common start until every worker reports its writes durable (and the
parent has written the manifest); a load from the common start until the slowest
worker has its slices in memory. Each worker's own time is kept, and the duration
reported is the slowest process's, as MLPerf Storage reports checkpoints. Workers
verify their slices bit for bit after the clock has stopped.

For OCDBT, all processes share one database through TensorStore's distributed
coordinator (a server the parent runs on loopback). Workers are started with the
`spawn` method: TensorStore aborts a process that forks after its threads started.
A worker that dies fails the run at once (no hang); the pool is then stopped and
started afresh for the next run, and no process is left behind.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorstore as ts

from . import storage
from .backend import Backend
from .targets import RunLocation
from .timing import timed
from .verify import mismatches

PHASE_TIMEOUT_S = 3600.0
START_TIMEOUT_S = 600.0


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


def _part(array, rows: tuple[int, int], scalar: bool):
    return array if scalar else array[rows[0]:rows[1]]


def _write_unit_rows(layout: storage.Layout, shape: tuple[int, ...]) -> int:
    """Rows of the smallest unit two processes must not share: the shard if sharded, else the chunk."""
    unit = layout.shard_shape(shape) or layout.chunk_shape(shape)
    return unit[0] if unit else 1


@dataclass(frozen=True)
class Job:
    """What a worker is asked to do for one save or load."""

    op: str  # "save" or "load"
    layout: storage.Layout
    location: RunLocation
    slices: dict[str, tuple[int, int]]  # this worker's [start, stop) rows of each array it owns
    context_extra: dict[str, Any]
    start_at: float  # the common start (time.perf_counter is system-wide monotonic on Linux)


def _worker_main(rank: int, conn, source: "SharedTensors | WeightSource") -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    tensors = source.open()
    conn.send(("ready", rank))
    while True:
        job: Job | None = conn.recv()
        if job is None:
            return
        try:
            if job.op == "save":
                usage = timed(lambda: _save_slices(job, tensors))
                conn.send(("done", _figures(job, usage.cpu_s, usage.rss_growth_bytes)))
            else:
                loaded: dict[str, np.ndarray] = {}
                usage = timed(lambda: loaded.update(_load_slices(job)))
                conn.send(("done", _figures(job, usage.cpu_s, usage.rss_growth_bytes)))
                mine = {name: _part(tensors[name], rows, tensors[name].ndim == 0) for name, rows in job.slices.items()}
                conn.send(("verified", mismatches(mine, loaded)))
        except Exception as exc:  # reported to the parent, which fails the run
            conn.send(("error", f"worker {rank}: {type(exc).__name__}: {str(exc).splitlines()[0]}"))


def _figures(job: Job, cpu_s: float, peak_rss_bytes: int) -> dict[str, float]:
    """A worker's own figures: seconds from the common start to its end, CPU, peak RSS growth."""
    return {"seconds": time.perf_counter() - job.start_at, "cpu_s": cpu_s, "peak_rss_bytes": peak_rss_bytes}


def _save_slices(job: Job, tensors: Mapping[str, np.ndarray]) -> None:
    context = job.layout.context(job.context_extra)
    opened = {name: ts.open(job.layout.open_spec(job.location, name), context=context) for name in job.slices}
    writes = [_part(opened[name].result(), rows, tensors[name].ndim == 0).write(_part(tensors[name], rows, tensors[name].ndim == 0))
              for name, rows in job.slices.items()]
    for write in writes:
        write.result()


def _load_slices(job: Job) -> dict[str, np.ndarray]:
    context = job.layout.context(job.context_extra)
    opened = {name: ts.open(job.layout.open_spec(job.location, name), context=context) for name in job.slices}
    stores = {name: future.result() for name, future in opened.items()}
    reads = {name: _part(store, job.slices[name], store.rank == 0).read() for name, store in stores.items()}
    return {name: np.asarray(read.result()) for name, read in reads.items()}


class WorkerFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class WeightSource:
    """Rebuild the weights in the worker from the same source as the parent (deterministic)."""

    model: str
    weights_source: str | None
    dtype: str
    values: str = "random"

    def open(self) -> dict[str, np.ndarray]:
        from . import weights

        return weights.load(self.model, self.weights_source, self.dtype, self.values).tensors


SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class SharedTensors:
    """The parent's tensors copied once into a file on /dev/shm (RAM); workers map read-only views.

    A plain file rather than multiprocessing.shared_memory, whose resource tracker
    would unlink the block when the first worker exits.
    """

    path: str
    entries: tuple[tuple[str, tuple[int, ...], str, int], ...]  # name, shape, dtype name, byte offset

    @classmethod
    def create(cls, tensors: Mapping[str, np.ndarray]) -> "SharedTensors":
        from .weights import NUMPY_DTYPES

        names = {dtype: name for name, dtype in NUMPY_DTYPES.items()}
        total = sum(a.nbytes for a in tensors.values())
        if not SHM_DIR.is_dir() or shutil.disk_usage(SHM_DIR).free < total * 1.1:
            raise OSError(f"{SHM_DIR} cannot hold {total} bytes")
        fd, path = tempfile.mkstemp(prefix="ckptbench-weights-", dir=SHM_DIR)
        entries, offset = [], 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for name, array in tensors.items():
                    handle.write(memoryview(array.reshape(-1).view(np.uint8)))
                    entries.append((name, tuple(array.shape), names[array.dtype], offset))
                    offset += array.nbytes
        except BaseException:
            os.unlink(path)
            raise
        return cls(path, tuple(entries))

    def open(self) -> dict[str, np.ndarray]:
        from .weights import NUMPY_DTYPES

        mapped = np.memmap(self.path, dtype=np.uint8, mode="r") if self.entries else np.empty(0, np.uint8)
        return {name: mapped[offset:offset + int(np.prod(shape)) * NUMPY_DTYPES[dtype].itemsize]
                .view(NUMPY_DTYPES[dtype]).reshape(shape)
                for name, shape, dtype, offset in self.entries}

    def remove(self) -> None:
        Path(self.path).unlink(missing_ok=True)


@dataclass
class Pool:
    """N long-lived worker processes, each holding the weights; restarted after any failure."""

    processes: int
    fallback: WeightSource  # used where shared memory cannot hold the weights
    _workers: list[Any] = field(default_factory=list)
    _shared: Any = None
    _conns: list[Any] = field(default_factory=list)
    _coordinator: Any = None

    def coordinator_address(self) -> str:
        if self._coordinator is None:
            self._coordinator = ts.ocdbt.DistributedCoordinatorServer({"bind_addresses": ["127.0.0.1:0"]})
        return f"127.0.0.1:{self._coordinator.port}"

    def start(self, tensors: Mapping[str, np.ndarray]) -> None:
        if self._workers:
            return
        try:
            source = self._shared = SharedTensors.create(tensors)
        except OSError:  # no /dev/shm, or a small one as in some containers
            source = self.fallback
        spawn = multiprocessing.get_context("spawn")
        for rank in range(self.processes):
            parent_end, child_end = spawn.Pipe()
            worker = spawn.Process(target=_worker_main, name=f"ckptbench-worker-{rank}", daemon=True,
                                   args=(rank, child_end, source))
            worker.start()
            child_end.close()
            self._workers.append(worker)
            self._conns.append(parent_end)
        self.collect("ready", START_TIMEOUT_S)

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def send(self, jobs: list[Job]) -> None:
        for conn, job in zip(self._conns, jobs):
            try:
                conn.send(job)
            except OSError:  # a dead worker's pipe; `collect` reports the death with its exit code
                pass

    def collect(self, expected: str, timeout_s: float, during: str = "start-up") -> list[tuple]:
        """One message of kind `expected` from every worker; any death, error or timeout fails the run."""
        replies: dict[int, tuple] = {}
        deadline = time.monotonic() + timeout_s
        while len(replies) < self.processes:
            waiting = {self._conns[r]: r for r in range(self.processes) if r not in replies}
            sentinels = {self._workers[r].sentinel: r for r in waiting.values()}
            ready = multiprocessing.connection.wait([*waiting, *sentinels], timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                self.stop()
                raise WorkerFailed(f"workers {sorted(set(range(self.processes)) - set(replies))} did not "
                                   f"finish {during} within {timeout_s:.0f} s")
            for item in ready:
                if item in waiting:
                    try:
                        message = item.recv()
                    except (EOFError, OSError):
                        continue  # the worker died: its sentinel reports how
                    if message[0] == "error":
                        self.stop()
                        raise WorkerFailed(message[1])
                    replies[waiting[item]] = message
                elif item in sentinels and sentinels[item] not in replies:
                    rank = sentinels[item]
                    self._workers[rank].join(timeout=5)  # reap it, so its exit code is known
                    pid, code = self._workers[rank].pid, self._workers[rank].exitcode
                    self.stop()
                    raise WorkerFailed(f"worker {rank} (pid {pid}) exited with code {code} during {during}")
        return [replies[r] for r in range(self.processes)]

    def stop(self) -> None:
        """Stop every worker: ask, then terminate, then kill; none is left behind."""
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.join(timeout=2)
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=3)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for conn in self._conns:
            conn.close()
        if self._shared is not None:
            self._shared.remove()
        self._workers, self._conns, self._shared = [], [], None
        self._coordinator = None


@dataclass
class DistributedBackend(Backend):
    """A TensorStore test run by N processes."""

    layout: storage.Layout
    pool: Pool
    max_inflight_bytes: int
    context_extra: dict[str, Any] = field(default_factory=dict)
    last_workers: list[dict[str, float]] | None = None  # each worker's figures for the last save or load
    _shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _per_rank: list[dict[str, tuple[int, int]]] = field(default_factory=list)  # each worker's rows, by array

    def _context_extra(self) -> dict[str, Any]:
        extra = dict(self.context_extra)
        if self.layout.kvstore == "ocdbt":
            extra["ocdbt_coordinator"] = {"address": self.pool.coordinator_address(), "lease_duration": "10s"}
        return extra

    def _jobs(self, op: str, location: RunLocation, start_at: float) -> list[Job]:
        extra = self._context_extra()
        return [Job(op, self.layout, location, slices, extra, start_at) for slices in self._per_rank]

    def _run(self, op: str, location: RunLocation, start_at: float) -> None:
        self.pool.send(self._jobs(op, location, start_at))
        self.last_workers = [reply[1] for reply in self.pool.collect("done", PHASE_TIMEOUT_S, during=op)]

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Start the workers (spawn, import, map the weights) and split the arrays, before any clock starts."""
        self.pool.start(tensors)
        self._shapes = {name: a.shape for name, a in tensors.items()}
        self._per_rank = [{} for _ in range(self.pool.processes)]
        for name, shape in self._shapes.items():
            for rank, rows in enumerate(row_slices(shape, _write_unit_rows(self.layout, shape), self.pool.processes)):
                if rows is not None:
                    self._per_rank[rank][name] = rows

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation) -> None:
        start_at = time.perf_counter()
        dtype = storage.dtype_name(next(iter(tensors.values())).dtype)
        context = self.layout.context(self._context_extra())
        if location.local_dir is not None:
            location.local_dir.mkdir(parents=True, exist_ok=True)
        creating = [ts.open(self.layout.array_spec(location, name, shape, dtype), context=context)
                    for name, shape in self._shapes.items()]
        for future in creating:
            future.result()
        self._run("save", location, start_at)
        storage.write_manifest(location, self.layout, context, {
            "format": f"ckptbench-{self.layout.format}", "dtype": dtype, "processes": self.pool.processes,
            "tensors": [{"name": n, "shape": list(s)} for n, s in self._shapes.items()]})

    def load(self, location: RunLocation) -> dict[str, np.ndarray]:
        self._run("load", location, time.perf_counter())
        return {}  # the data stays in the workers, which verify it

    def verify(self, tensors: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray]) -> list[str]:
        replies = self.pool.collect("verified", PHASE_TIMEOUT_S, during="verification")
        return sorted({name for reply in replies for name in reply[1]})

    def footprint(self, location: RunLocation) -> tuple[int, int, int]:
        return storage.TensorStoreBackend(self.layout, self.max_inflight_bytes, self.context_extra).footprint(location)

    def worker_figures(self) -> list[dict[str, float]] | None:
        return self.last_workers
