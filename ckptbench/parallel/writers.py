"""Many writers: N processes saving and loading one checkpoint together, like N hosts (PHASE4_GUIDE.md, sections 4.9 and
11, say what each writer does and how a save and a load are timed; docs/launching.md, how a launch works).

Each writer writes or reads only its own box of every array (slices.py), or a tensor-parallel rank's slice, read with
the row's own loader for a reference row (`Job.reference`). Rank 0 broadcasts one `Job` per writer over the gloo world
(world.py), all meet at a barrier, each does its job (`perform`), and rank 0 all-gathers their figures (with what the
other processes of each other host did: `others`, core.host). A load is timed by the readers' own stamps, never by
rank 0's clock around the job, which also holds sending it, the imports, the barrier and gathering the replies.
"""

from __future__ import annotations

import gc
import importlib
import os
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import tensorstore as ts

from ckptbench.bench import cache, storage
from ckptbench.bench.measure import Timed, timed
from ckptbench.bench.references import BACKENDS
from ckptbench.bench.targets import RunLocation
from ckptbench.bench.verify import mismatches
from ckptbench.bench.workspace import RUN_MARKER
from ckptbench.core import host, system
from ckptbench.core.errors import Stopped
from ckptbench.parallel.slices import part
from ckptbench.parallel.world import Broken, World, short_error
from ckptbench.sources.source_file import Box

PHASE_TIMEOUT_S = 3600.0
LOOPBACK = "127.0.0.1"
# The replies a job's writers send, one per round: a load's data stays with its writer until verified.
ROUNDS: dict[str, tuple[str, ...]] = {"save": ("done",), "load": ("done", "verified"), "evict": ("done",)}


@dataclass(frozen=True)
class Job:
    """What one rank is asked to do for one save, load or eviction."""

    op: str  # "save", "load" or "evict"
    location: RunLocation
    layout: storage.Layout | None = None
    boxes: dict[str, Box] = field(default_factory=dict)  # this rank's part of each array it writes or reads
    context_extra: dict[str, Any] = field(default_factory=dict)
    eviction: str = "none"  # an eviction's method (see cache.evict)
    reference: tuple[str, dict[str, Any]] | None = None  # a reference row's kind and settings: its loader reads
    reader: tuple[int, int] = (0, 1)  # this rank's place among the readers, and how many (the ceiling's share)


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
        error = ("error", f"{label}: {type(exc).__name__}: {short_error(exc)}")
        for _ in range(len(ROUNDS[job.op]) - sent):
            yield error


def _work(job: Job, tensors: Mapping[str, np.ndarray], start_at: float) -> Iterator[tuple[str, Any]]:
    if job.op == "evict":  # this host's page cache, for the host's ranks
        directory = job.location.local_dir
        assert directory is not None  # an eviction's location is a local folder (WriterPool.evict_elsewhere)
        yield "done", {"eviction": cache.evict(directory, job.eviction), "host": socket.gethostname(),
                       "resident_bytes": cache.resident_bytes(directory)}
    elif job.op == "save":  # the clock runs from the common start: no garbage collection inside it
        folder = job.location.local_dir  # made by rank 0: a rank on another host must see the very same folder
        if folder is not None and not (folder / RUN_MARKER).is_file():
            raise FileNotFoundError(f"{folder} (made by rank 0) is not visible on {socket.gethostname()}; every "
                                    "host must see the checkpoint folder: a shared --storage folder, or s3://")
        usage = timed(lambda: _save_slices(job, tensors), collect_garbage=False)
        yield "done", _figures(start_at, time.monotonic(), usage)
    else:
        loaded: dict[str, np.ndarray] = {}
        ended_at: list[float] = []

        def load() -> None:
            loaded.update(_load_slices(job))
            ended_at.append(time.monotonic())  # the end: the slices in memory, nothing after

        before = system.io_bytes()
        usage = timed(load, collect_garbage=False)
        yield "done", {**_figures(start_at, ended_at[0], usage), **_read_figures(before, system.io_bytes(), loaded)}
        # A job without boxes read raw bytes (the ceiling's share): nothing to verify by name
        yield "verified", mismatches(tensors, loaded, job.boxes) if job.boxes else []


def _figures(start_at: float, end_at: float, usage: Timed) -> dict[str, Any]:
    """A writer's own figures: its start (the barrier's release) and end on the host's monotonic clock, CPU, peak RSS
    growth, its process's peak anonymous memory, and where it runs (bench.measure compares one host's stamps only)."""
    return {"seconds": end_at - start_at, "started_s": start_at, "ended_s": end_at, "cpu_s": usage.cpu_s,
            "peak_rss_bytes": usage.rss_growth_bytes, "peak_anon_bytes": usage.rss_anon_peak_bytes,
            "host": socket.gethostname(), "pid": os.getpid()}


def _read_figures(before: Mapping[str, int], after: Mapping[str, int], loaded: Mapping[str, np.ndarray]
                  ) -> dict[str, int]:
    """A reader's bytes: what it caused the device to read (read_bytes: a page another reader of this host brought in is
    a hit, so cold loads only), what its read calls returned (rchar), and its slices' bytes."""
    return {"read_bytes": after.get("read_bytes", 0) - before.get("read_bytes", 0),
            "rchar_bytes": after.get("rchar", 0) - before.get("rchar", 0),
            "slice_bytes": sum(int(array.nbytes) for array in loaded.values())}


def _opened(job: Job, track: Callable[[list[ts.Future]], list[ts.Future]]) -> dict[str, Any]:
    """Every array of a TensorStore job's boxes, opened."""
    layout = job.layout
    assert layout is not None  # a TensorStore job's (a reference row's and an eviction's have none)
    context = layout.context(job.context_extra)
    opening = track([ts.open(layout.open_spec(job.location, name), context=context) for name in job.boxes])
    return {name: future.result() for name, future in zip(job.boxes, opening)}


def _save_slices(job: Job, tensors: Mapping[str, np.ndarray]) -> None:
    with storage.settled() as track:  # a stop signal leaves no write running into a folder about to be removed
        stores = _opened(job, track)
        for write in track([part(stores[n], box).write(part(tensors[n], box)) for n, box in job.boxes.items()]):
            write.result()


def ready(job: Job | None) -> None:
    """Before the common start: a reference row's readers import its library (a first import costs seconds,
    which the clock, started at the barrier, must not count); TensorStore's readers have it imported already."""
    if job is not None and job.reference is not None:
        for module in getattr(BACKENDS[job.reference[0]], "libraries", ()):
            importlib.import_module(module)


def _load_slices(job: Job) -> dict[str, np.ndarray]:
    if job.reference is not None:  # a reference row's readers: its own loader reads each slice
        kind, settings = job.reference
        return BACKENDS[kind](**settings).load_slices(job.location, job.boxes, *job.reader)
    with storage.settled() as track:
        stores = _opened(job, track)
        reads = dict(zip(stores, track([part(store, job.boxes[name]).read() for name, store in stores.items()])))
        return {name: np.asarray(read.result()) for name, read in reads.items()}


def serve(world: World, tensors: Mapping[str, np.ndarray], label: str) -> int:
    """Every rank but 0: do each job rank 0 broadcasts, until it says stop; returns the status it sends.
    Raises Broken when the world fails (rank 0 then reports which rank)."""
    gc.freeze()  # the weights and modules stay: the collections between jobs skip them
    while True:
        step = world.broadcast()
        if step[0] == "stop":
            return int(step[1])
        _, op, jobs = step
        job = jobs[world.rank]
        ready(job)
        # This host's first rank watches its host during a save or load (rank 0 watches its own: bench.measure)
        watch = host.watch_for(job.location.local_dir) if (
            job is not None and op != "evict" and world.leader(world.rank) == world.rank) else None
        before = watch.sample() if watch is not None else None
        world.barrier()  # the common start
        replies = (perform(job, tensors, time.monotonic(), label) if job is not None
                   else iter([("idle", None)] * len(ROUNDS[op])))
        for reply in replies:
            if watch is not None and reply[0] == "done":  # the job's end, outside its clock
                reply, watch = ("done", {**(reply[1] or {}), "others": host.others(before, watch.sample())}), None
            world.all_gather(reply)
        # The job's garbage, and what TensorStore freed, go now, outside every clock (timed() does not do
        # it for writers, whose clock started at the barrier).
        system.release_free_memory()


# --- rank 0: driving the writers ----------------------------------------------------------------------

class WriterPool(ABC):
    """Rank 0's side of a world of writers: one job per writer out, one reply per writer and round back.
    `world` is None until the pool is started (a --processes pool starts its workers with the first run);
    `writers` are the ranks that write, in writer order."""

    def __init__(self, writers: list[int], world: World | None = None) -> None:
        self.writers = writers
        self.world = world
        self._tensors: Mapping[str, np.ndarray] = {}
        self._replies: Iterator[tuple[str, Any]] | None = None  # rank 0's own replies, when it writes
        self._rounds: list[str] = []  # rounds of the job in progress not yet collected
        self._targets: list[int] = []  # ranks with a job in progress
        self._during = ""
        self._coordinator: Any = None

    # start: before the clock, the writers are up and hold the weights; stop: no job in progress any more, and no
    # writer the pool started is left; _lost: what to raise when the world broke during a job
    @abstractmethod
    def start(self, tensors: Mapping[str, np.ndarray]) -> None: ...
    @abstractmethod
    def stop(self) -> None: ...
    @abstractmethod
    def _lost(self, broken: Broken, during: str) -> BaseException: ...

    @property
    def processes(self) -> int:
        return len(self.writers)

    def label(self, rank: int) -> str:
        return f"rank {rank}"

    def _joined(self) -> World:
        if self.world is None:
            raise WorkerFailed("the writers were not started")
        return self.world

    def coordinator_address(self) -> str:
        """TensorStore's OCDBT coordinator, run by rank 0: loopback when every rank is on this host."""
        world = self.world
        one_host = world is None or len(world.hosts()) <= 1
        if self._coordinator is None:
            bind = f"{LOOPBACK}:0" if one_host else "[::]:0"
            self._coordinator = ts.ocdbt.DistributedCoordinatorServer({"bind_addresses": [bind]})
        host = LOOPBACK if world is None or one_host else world.members[0].host
        return f"{host}:{self._coordinator.port}"

    def send(self, jobs: list[Job]) -> None:
        """Start one job per writer (in writer order) at a common start."""
        self._start(jobs[0].op, dict(zip(self.writers, jobs)))

    def _start(self, op: str, jobs: Mapping[int, Job]) -> None:
        world = self._joined()
        by_rank = [jobs.get(rank) for rank in range(world.size)]
        self._targets = sorted(jobs)
        self._during, self._rounds, self._replies = op, list(ROUNDS[op]), None
        try:
            world.broadcast(("jobs", op, by_rank), timeout_s=PHASE_TIMEOUT_S)
            ready(by_rank[world.rank])
            world.barrier(timeout_s=PHASE_TIMEOUT_S)
        except Broken as exc:
            raise self._lost(exc, op) from None
        mine = by_rank[world.rank]
        if mine is not None:
            self._replies = perform(mine, self._tensors, time.monotonic(), self.label(world.rank))

    def collect(self, expected: str, timeout_s: float, during: str = "start-up") -> list[tuple]:
        """One round of the job in progress: every target's reply (rank 0's own included); any error fails the run."""
        world = self._joined()
        if self._replies is None:
            own: tuple[str, Any] = ("idle", None)
        else:  # rank 0's own job; one a stop signal cut short still answers every round
            own = next(self._replies, None) or ("error", f"{self.label(world.rank)}: stopped")
        if own[0] == "done" and "cpu_s" in own[1]:  # rank 0's usage is already in the figures of its own clock
            own = ("done", {**own[1], "cpu_s": 0.0, "peak_rss_bytes": 0})
        try:
            replies = world.all_gather(own, timeout_s=timeout_s)
        except Broken as exc:
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
            except WorkerFailed:  # the run has failed already
                pass
            except Stopped as stop:  # a lost rank shows at the next job; a signal goes on up
                if stop.cause != Stopped.LOST_RANK:
                    raise
        self._rounds, self._replies = [], None
        if self.world is not None and self.world.broken:
            self.stop()

    def evict_elsewhere(self, directory: Path, method: str) -> list[dict[str, Any]]:
        """Evict a checkpoint from the page cache of every other host that wrote it (one rank per host)."""
        world = self._joined()
        leaders = {world.leader(r) for r in range(world.size)} - {world.leader(0)}
        if not leaders:
            return []
        self._start("evict", {rank: Job("evict", RunLocation.local(directory), eviction=method) for rank in leaders})
        return [reply[1] for reply in self.collect("done", PHASE_TIMEOUT_S, during="eviction")]

