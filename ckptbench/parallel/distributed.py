"""Many writers: N processes saving and loading one checkpoint together, like N hosts.

Each writer writes or reads only its own slice of every array: a contiguous range of
whole chunks along the first dimension, so no two processes ever touch one chunk. An
array with fewer chunk rows than writers is split over as many writers as it has chunk
rows; an array of one chunk row (1-D norms, for example) is written and read whole by
the first writer.

The writers and the process that runs the suite form one gloo world (`ranks.World`,
torch.distributed on TCP), and everything after that is one code path:
- rank 0 creates every array's metadata, then broadcasts one `Job` per writer;
- all ranks meet at a barrier, the common start, and each does its job (`perform`);
- rank 0 all-gathers every writer's figures: its seconds from the common start, CPU
  and peak memory growth; for a save it then writes the manifest.
A save lasts from before the metadata until every writer reports its writes durable
(and the manifest is written); a load from the common start until the slowest writer
has its slices in memory, as MLPerf Storage reports checkpoints. Writers verify their
slices bit for bit after the clock has stopped, in a second round of the same job.

Two ways to form the world:
- `--processes N` (`Pool`): this process is rank 0 and only drives; it spawns N
  workers (ranks 1..N, `spawn`: TensorStore aborts a process that forks after its
  threads started) on loopback. They see its weights through one file on /dev/shm (no
  copy per worker; where /dev/shm is too small, as in some containers, each worker
  rebuilds the weights from the same source instead). A worker that dies fails the
  run at once; the pool is then stopped and started afresh for the next run, and no
  process is left behind.
- a launch (`LaunchedPool`, see ranks.py): torchrun, srun or mpirun started the ranks;
  rank 0 runs the suite and writes its own slice too, the others run `serve`. A rank
  that dies or hangs stops the launch (`ranks.RankLost`).

For OCDBT, all writers share one database through TensorStore's distributed
coordinator, a server rank 0 runs; its address travels in every job.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import tensorstore as ts

from ckptbench.bench import cache, storage
from ckptbench.parallel import ranks
from ckptbench.bench.backend import Backend
from ckptbench.bench.targets import RunLocation
from ckptbench.bench.timing import Timed, timed
from ckptbench.bench.verify import mismatches
from ckptbench.bench.workspace import RUN_MARKER

PHASE_TIMEOUT_S = 3600.0
START_TIMEOUT_S = ranks.START_TIMEOUT_S
LOOPBACK = "127.0.0.1"
# The replies a job's writers send, one per round: a load's data stays with its writer until verified.
ROUNDS: dict[str, tuple[str, ...]] = {"save": ("done",), "load": ("done", "verified"), "evict": ("done",)}
_EVICTION_STRENGTH = {"drop_caches": 2, "fadvise": 1, None: 0}


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
    """What one rank is asked to do for one save, load or eviction."""

    op: str  # "save", "load" or "evict"
    location: RunLocation
    layout: storage.Layout | None = None
    slices: dict[str, tuple[int, int]] = field(default_factory=dict)  # this rank's [start, stop) rows by array
    context_extra: dict[str, Any] = field(default_factory=dict)
    eviction: str = "none"  # an eviction's method (see cache.evict)


class WorkerFailed(RuntimeError):
    pass


# --- what every writer does -------------------------------------------------------------------------

def perform(job: Job, tensors: Mapping[str, np.ndarray], start_at: float, label: str) -> Iterator[tuple[str, Any]]:
    """One rank's replies to a job, exactly one per round of ROUNDS[job.op]: an error fills the rounds left,
    so every rank always takes part in every round."""
    sent = 0
    try:
        for reply in _work(job, tensors, start_at):
            sent += 1
            yield reply
    except Exception as exc:  # reported to rank 0, which fails the run
        error = ("error", f"{label}: {type(exc).__name__}: {ranks.first_line(exc)}")
        for _ in range(len(ROUNDS[job.op]) - sent):
            yield error


def _work(job: Job, tensors: Mapping[str, np.ndarray], start_at: float) -> Iterator[tuple[str, Any]]:
    if job.op == "evict":  # this host's page cache, for the host's ranks
        directory = job.location.local_dir
        yield "done", {"eviction": cache.evict(directory, job.eviction), "host": socket.gethostname(),
                       "resident_bytes": cache.resident_bytes(directory)}
    elif job.op == "save":  # the clock runs from the common start: no garbage collection inside it
        _check_visible(job.location)
        yield "done", _figures(start_at, timed(lambda: _save_slices(job, tensors), collect_garbage=False))
    else:
        loaded: dict[str, np.ndarray] = {}
        yield "done", _figures(start_at, timed(lambda: loaded.update(_load_slices(job)), collect_garbage=False))
        mine = {name: _part(tensors[name], rows, tensors[name].ndim == 0) for name, rows in job.slices.items()}
        yield "verified", mismatches(mine, loaded)


def _check_visible(location: RunLocation) -> None:
    """A local run folder is made by rank 0: a rank on another host must see the very same folder."""
    if location.local_dir is not None and not (location.local_dir / RUN_MARKER).is_file():
        raise FileNotFoundError(f"{location.local_dir} (made by rank 0) is not visible on {socket.gethostname()}; "
                                "every host must see the checkpoint folder: a shared --storage folder, or s3://")


def _figures(start_at: float, usage: Timed) -> dict[str, float]:
    """A writer's own figures: seconds from the common start to its end, CPU, peak RSS growth."""
    return {"seconds": time.perf_counter() - start_at, "cpu_s": usage.cpu_s, "peak_rss_bytes": usage.rss_growth_bytes}


def _save_slices(job: Job, tensors: Mapping[str, np.ndarray]) -> None:
    context = job.layout.context(job.context_extra)
    with storage.settled() as track:  # a stop signal leaves no write running into a folder about to be removed
        opened = dict(zip(job.slices, track([ts.open(job.layout.open_spec(job.location, name), context=context)
                                             for name in job.slices])))
        writes = track([_part(opened[name].result(), rows, tensors[name].ndim == 0).write(
                            _part(tensors[name], rows, tensors[name].ndim == 0)) for name, rows in job.slices.items()])
        for write in writes:
            write.result()


def _load_slices(job: Job) -> dict[str, np.ndarray]:
    context = job.layout.context(job.context_extra)
    with storage.settled() as track:
        opened = dict(zip(job.slices, track([ts.open(job.layout.open_spec(job.location, name), context=context)
                                             for name in job.slices])))
        stores = {name: future.result() for name, future in opened.items()}
        reads = dict(zip(stores, track([_part(store, job.slices[name], store.rank == 0).read()
                                        for name, store in stores.items()])))
        return {name: np.asarray(read.result()) for name, read in reads.items()}


def serve(world: "ranks.World", tensors: Mapping[str, np.ndarray], label: str) -> int:
    """Every rank but 0: do each job rank 0 broadcasts, until it says stop; returns the status it sends.

    Raises ranks.Broken when the world fails (rank 0 then reports which rank)."""
    import gc

    from ckptbench.core import system

    gc.freeze()  # the weights and modules stay: the collections between jobs skip them
    while True:
        step = world.broadcast()
        if step[0] == "stop":
            return int(step[1])
        _, op, jobs = step
        world.barrier()  # the common start
        job = jobs[world.rank]
        replies = (perform(job, tensors, time.perf_counter(), label) if job is not None
                   else iter([("idle", None)] * len(ROUNDS[op])))
        for reply in replies:
            world.all_gather(reply)
        # The job's garbage, and what TensorStore freed, go now, outside every clock (timed() does not do
        # it for writers, whose clock started at the barrier).
        system.release_free_memory()


# --- rank 0: driving the writers ----------------------------------------------------------------------

class WriterPool:
    """Rank 0's side of a world of writers: one job per writer out, one reply per writer and round back."""

    def __init__(self, world: "ranks.World | None" = None) -> None:
        self.world = world
        self._tensors: Mapping[str, np.ndarray] = {}
        self._replies: Iterator[tuple[str, Any]] | None = None  # rank 0's own replies, when it writes
        self._rounds: list[str] = []  # rounds of the job in progress not yet collected
        self._targets: list[int] = []  # ranks with a job in progress
        self._during = ""
        self._coordinator: Any = None

    @property
    def writers(self) -> list[int]:
        raise NotImplementedError

    @property
    def processes(self) -> int:
        return len(self.writers)

    def label(self, rank: int) -> str:
        return f"rank {rank}"

    def _lost(self, broken: "ranks.Broken", during: str) -> BaseException:
        raise NotImplementedError

    def coordinator_address(self) -> str:
        """TensorStore's OCDBT coordinator, run by rank 0: loopback when every rank is on this host."""
        one_host = len(self.world.hosts()) <= 1 if self.world is not None else True
        if self._coordinator is None:
            bind = f"{LOOPBACK}:0" if one_host else "[::]:0"
            self._coordinator = ts.ocdbt.DistributedCoordinatorServer({"bind_addresses": [bind]})
        host = LOOPBACK if one_host else self.world.members[0].host
        return f"{host}:{self._coordinator.port}"

    def send(self, jobs: list[Job]) -> None:
        """Start one job per writer (in writer order) at a common start."""
        by_rank: list[Job | None] = [None] * self.world.size
        for rank, job in zip(self.writers, jobs):
            by_rank[rank] = job
        self._start(jobs[0].op, by_rank)

    def _start(self, op: str, by_rank: list[Job | None]) -> None:
        self._targets = [rank for rank, job in enumerate(by_rank) if job is not None]
        self._during, self._rounds, self._replies = op, list(ROUNDS[op]), None
        try:
            self.world.broadcast(("jobs", op, by_rank), timeout_s=PHASE_TIMEOUT_S, during=op)
            self.world.barrier(timeout_s=PHASE_TIMEOUT_S, during=op)
        except ranks.Broken as exc:
            raise self._lost(exc, op) from None
        mine = by_rank[self.world.rank]
        if mine is not None:
            self._replies = perform(mine, self._tensors, time.perf_counter(), self.label(self.world.rank))

    def collect(self, expected: str, timeout_s: float, during: str = "start-up") -> list[tuple]:
        """One round of the job in progress: every target's reply (rank 0's own included); any error fails the run."""
        if self._replies is None:
            own: tuple[str, Any] = ("idle", None)
        else:  # rank 0's own job; one a stop signal cut short still answers every round
            own = next(self._replies, None) or ("error", f"{self.label(self.world.rank)}: stopped")
        if own[0] == "done" and "cpu_s" in own[1]:  # rank 0's usage is already in the figures of its own clock
            own = ("done", {**own[1], "cpu_s": 0.0, "peak_rss_bytes": 0})
        try:
            replies = self.world.all_gather(own, timeout_s=timeout_s, during=during)
        except ranks.Broken as exc:
            raise self._lost(exc, during) from None
        self._rounds.pop(0)
        if not self._rounds:
            self._replies = None  # the job is over: what rank 0 loaded is freed
        for reply in replies:
            if reply[0] == "error":
                raise WorkerFailed(reply[1])
        mine = [replies[rank] for rank in self._targets]
        if any(reply[0] != expected for reply in mine):
            raise WorkerFailed(f"expected {expected!r} from every writer, got {[r[0] for r in mine]}")
        return mine

    def settle(self) -> None:
        """Finish the job in progress after a failure on this side: the other ranks still send every round,
        and the run's folder may be removed only once nobody writes into it any more."""
        while self._rounds and self.world is not None and not self.world.broken:
            try:
                self.collect(self._rounds[0], PHASE_TIMEOUT_S, during=self._during)
            except (WorkerFailed, ranks.RankLost):  # the run has failed already; a lost rank shows at the next job
                pass
        self._rounds, self._replies = [], None
        if self.world is not None and self.world.broken:
            self.stop()

    def evict_elsewhere(self, directory: Path, method: str) -> list[dict[str, Any]]:
        """Evict a checkpoint from the page cache of every other host that wrote it (one rank per host)."""
        leaders = sorted({self.world.leader(r) for r in range(self.world.size)} - {self.world.leader(0)})
        if not leaders:
            return []
        by_rank: list[Job | None] = [None] * self.world.size
        for rank in leaders:
            by_rank[rank] = Job("evict", RunLocation.local(directory), eviction=method)
        self._start("evict", by_rank)
        return [reply[1] for reply in self.collect("done", PHASE_TIMEOUT_S, during="eviction")]


class Pool(WriterPool):
    """--processes N: N spawned workers on this host, ranks 1..N of a world whose rank 0 is this process."""

    def __init__(self, processes: int, fallback: "WeightSource") -> None:
        super().__init__()
        self.n_workers = processes
        self.fallback = fallback  # used where shared memory cannot hold the weights
        self._workers: list[Any] = []
        self._shared: SharedTensors | None = None

    @property
    def writers(self) -> list[int]:
        return list(range(1, self.n_workers + 1))

    def label(self, rank: int) -> str:
        return f"worker {rank - 1}"

    def start(self, tensors: Mapping[str, np.ndarray]) -> None:
        if self.world is not None:
            return
        import torch.distributed as dist

        store = dist.TCPStore(LOOPBACK, 0, self.n_workers + 1, is_master=True,
                              timeout=ranks.seconds(START_TIMEOUT_S), wait_for_workers=False)
        launch = ranks.Launch("processes", 0, self.n_workers + 1, 0, LOOPBACK, store.port)
        try:
            source = self._shared = SharedTensors.create(tensors)
        except OSError:  # no /dev/shm, or a small one as in some containers
            source = self.fallback
        spawn = multiprocessing.get_context("spawn")
        try:
            for rank in self.writers:
                worker = spawn.Process(target=_worker_main, name=f"ckptbench-worker-{rank - 1}", daemon=True,
                                       args=(dataclasses.replace(launch, rank=rank, local_rank=rank), source))
                worker.start()
                self._workers.append(worker)
            self._wait_ready(store)
            world = ranks.World.join(launch, store=store)
        except BaseException:
            self.stop()
            raise
        world.rank_label, world.liveness = self.label, self._check_workers
        self.world = world
        if self._shared is not None:  # every worker has mapped it: the memory lives as long as a mapping does
            self._shared.remove()
            self._shared = None

    def _wait_ready(self, store: Any) -> None:
        keys = [f"ready/{rank}" for rank in self.writers]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not store.check(keys):
            dead = self._first_dead()
            if dead or time.monotonic() > deadline:
                raise WorkerFailed(f"{dead} during start-up" if dead else
                                   f"workers did not finish start-up within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.02)

    def _first_dead(self) -> str | None:
        for rank, worker in zip(self.writers, self._workers):
            if not worker.is_alive():
                worker.join(timeout=5)  # reap it, so its exit code is known
                return f"{self.label(rank)} (pid {worker.pid}) exited with code {worker.exitcode}"
        return None

    def _check_workers(self) -> None:
        dead = self._first_dead()
        if dead:
            raise ranks.Broken(dead)  # names the worker itself

    def _lost(self, broken: "ranks.Broken", during: str) -> BaseException:
        dead = self._first_dead()
        self.stop()
        return WorkerFailed(f"{dead} during {during}" if dead else f"{broken} during {during}")

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def stop(self) -> None:
        """Stop every worker: ask, then terminate, then kill; none is left behind."""
        world, self.world = self.world, None
        asked = world is not None and not world.broken  # a broken world cannot carry the request: terminate
        if asked:
            try:
                world.broadcast(("stop", 0), timeout_s=10, during="stop")
            except ranks.Broken:
                asked = False
        for worker in self._workers:
            worker.join(timeout=2 if asked else 0)
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=3)
            if worker.is_alive():
                worker.kill()
                worker.join()
        if world is not None:
            world.close()
        if self._shared is not None:
            self._shared.remove()
        self._workers, self._shared, self._rounds, self._replies = [], None, [], None
        self._coordinator = None


def _worker_main(launch: "ranks.Launch", source: "SharedTensors | WeightSource") -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    tensors = source.open()
    store = ranks.connect_store(launch)
    store.set(f"ready/{launch.rank}", "1")
    try:
        serve(ranks.World.join(launch, store=store), tensors, label=f"worker {launch.rank - 1}")
    except ranks.Broken:
        sys.exit(1)  # the parent saw it too, and reports it


class LaunchedPool(WriterPool):
    """The ranks of a launch (torchrun, srun, mpirun): rank 0, this process, runs the suite and writes too."""

    @property
    def writers(self) -> list[int]:
        return list(range(self.world.size))

    def start(self, tensors: Mapping[str, np.ndarray]) -> None:
        self._tensors = tensors

    def stop(self) -> None:
        # The launch itself ends with the suite (ranks.run); a broken one, with its launcher, which stops
        # every rank (so none still writes into a run folder rank 0 removes).
        self._rounds, self._replies = [], None

    def _lost(self, broken: "ranks.Broken", during: str) -> BaseException:
        ranks.ignore_stop_signals()  # the launcher's SIGTERM must not cut short the cleanup that follows
        if broken.who:
            return ranks.RankLost(f"the loss of {broken.who}, which {broken.what} during {during}")
        return ranks.RankLost(f"a broken launch during {during}: {broken.what}")


def pool_for(processes: int, fallback: "WeightSource") -> WriterPool:
    """The writers of a test run by `processes` processes: the launch's ranks when launched, else spawned workers."""
    world = ranks.current()
    return LaunchedPool(world) if world is not None else Pool(processes, fallback)


@dataclass(frozen=True)
class WeightSource:
    """Rebuild the weights in the worker from the same source as the parent (deterministic)."""

    model: str
    weights_source: str | None
    dtype: str
    values: str = "random"

    def open(self) -> dict[str, np.ndarray]:
        from ckptbench.sources import weights

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
        from ckptbench.sources.weights import NUMPY_DTYPES

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
        from ckptbench.sources.weights import NUMPY_DTYPES

        mapped = np.memmap(self.path, dtype=np.uint8, mode="r") if self.entries else np.empty(0, np.uint8)
        return {name: mapped[offset:offset + int(np.prod(shape)) * NUMPY_DTYPES[dtype].itemsize]
                .view(NUMPY_DTYPES[dtype]).reshape(shape)
                for name, shape, dtype, offset in self.entries}

    def remove(self) -> None:
        Path(self.path).unlink(missing_ok=True)


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
        self.last_workers = [reply[1] for reply in self.pool.collect("done", PHASE_TIMEOUT_S, during=op)]

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Start the writers (spawn, import, map the weights) and split the arrays, before any clock starts."""
        self.pool.start(tensors)
        if self.layout.kvstore == "ocdbt":
            self.pool.coordinator_address()  # rank 0's coordinator starts here, not inside the first timed save
        self._shapes = {name: a.shape for name, a in tensors.items()}
        self._per_rank = [{} for _ in range(self.pool.processes)]
        for name, shape in self._shapes.items():
            for rank, rows in enumerate(row_slices(shape, _write_unit_rows(self.layout, shape), self.pool.processes)):
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
        replies = self.pool.collect("verified", PHASE_TIMEOUT_S, during="verification")
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
