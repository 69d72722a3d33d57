"""Running the benchmark: the plan of interleaved rounds, and one timed run.

A run is: save into a fresh location (timed until TensorStore reports every write
durable; its file kvstore fsyncs each file), measure the size, evict the files from
the page cache, load (timed), verify bit for bit against the source, delete what the
run wrote. Only the save and the load sit between clock reads; size walking, eviction
and verification happen outside them.

Rounds are interleaved: round r runs every test once, in an order shuffled per round
from a recorded seed, so slow drift of the machine spreads over all tests instead
of landing on whichever test ran last.
"""

from __future__ import annotations

import errno
import gc
import os
import random
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from . import cache, storage
from .config import SuiteConfig, TestSpec
from .targets import LocalTarget, ObjectStoreTarget, RunLocation


class Backend(Protocol):
    """A way to write a checkpoint to a run's location and read it back: what a test measures."""

    in_memory: bool  # True where the checkpoint lives in RAM (memory kvstore): no page cache to drop

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation) -> None: ...

    def load(self, location: RunLocation) -> dict[str, np.ndarray]: ...

    def footprint(self, location: RunLocation) -> tuple[int, int, int]:
        """(bytes of data, bytes allocated, number of files or objects) of a saved checkpoint."""
        ...

    def release(self) -> None:
        """Drop whatever was kept between a save and its load."""
        ...

    # Optional: `prepare(tensors)`, called before the clock starts (worker processes start
    # there), and `verify(tensors, loaded) -> list[str]` where the data is checked elsewhere
    # (in the workers); otherwise `mismatches` compares the loaded arrays here.


@dataclass(frozen=True)
class PlannedRun:
    test: str
    round: int  # 0-based; warm-up rounds come first and have negative numbers
    position: int  # place within its round
    warmup: bool = False

    @property
    def label(self) -> str:
        return f"{self.test}-{'w' if self.warmup else 'r'}{abs(self.round)}"


@dataclass
class RunRecord:
    """Raw figures of one run: what was measured, nothing derived."""

    test: str
    round: int
    position: int
    warmup: bool
    save_s: float | None = None
    load_s: float | None = None
    save_cpu_s: float | None = None
    load_cpu_s: float | None = None
    save_peak_rss_bytes: int | None = None  # above the process's resident size when the save began
    load_peak_rss_bytes: int | None = None
    size_bytes: int | None = None
    disk_bytes: int | None = None
    n_files: int | None = None
    eviction: str | None = None
    resident_bytes_at_load: int | None = None
    load_cache: str | None = None  # "cold", "partial" or "warm": what the load read from
    verified: bool | None = None
    process_save_s: list[float] | None = None  # with several processes: each one's time from the common start
    process_load_s: list[float] | None = None
    error: str | None = None
    fatal: bool = False  # the storage itself failed (full disk, I/O error): the suite must stop
    started_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan(test_names: Sequence[str], num_runs: int, warmup_rounds: int, seed: int) -> list[PlannedRun]:
    """Every run of the suite in execution order: warm-up rounds, then measured rounds, each shuffled."""
    rng = random.Random(seed)
    runs = []
    for r in range(-warmup_rounds, num_runs):
        order = list(test_names)
        rng.shuffle(order)
        runs.extend(PlannedRun(name, r, pos, warmup=r < 0) for pos, name in enumerate(order))
    return runs


def new_seed() -> int:
    return secrets.randbits(32)


Phase = Callable[[PlannedRun, str], None]
Target = LocalTarget | ObjectStoreTarget


def run_once(
    planned: PlannedRun,
    tensors: Mapping[str, np.ndarray],
    backend: Backend,
    config: SuiteConfig,
    on_phase: Phase = lambda run, phase: None,
    keep: bool = False,
    target: Target | None = None,
) -> RunRecord:
    """One save/evict/load/verify cycle. Failures are recorded in the result, never raised."""
    target = target or LocalTarget(config.output_dir)
    record = RunRecord(planned.test, planned.round, planned.position, planned.warmup)
    location = None
    settled = False  # True once no TensorStore operation can still be writing into the run's location
    try:
        location = target.new_run(planned.label)
        getattr(backend, "prepare", lambda tensors: None)(tensors)  # e.g. start worker processes, before any clock
        on_phase(planned, "save")
        record.save_s, record.save_cpu_s, record.save_peak_rss_bytes = timed(lambda: backend.save(tensors, location))
        record.process_save_s, record.save_cpu_s, record.save_peak_rss_bytes = _with_workers(
            backend, record.save_cpu_s, record.save_peak_rss_bytes)
        on_phase(planned, "size")
        record.size_bytes, record.disk_bytes, record.n_files = backend.footprint(location)
        if backend.in_memory:
            record.load_cache = "memory"
        elif location.local_dir is None:
            record.load_cache = "remote"  # read from the server: no local cache to drop
        else:
            on_phase(planned, "evict")
            record.eviction = cache.evict(location.local_dir, config.cache_eviction)
            record.resident_bytes_at_load = cache.resident_bytes(location.local_dir)
            record.load_cache = _cache_state(record.resident_bytes_at_load, record.disk_bytes)
        on_phase(planned, "load")
        loaded: dict[str, np.ndarray] = {}
        record.load_s, record.load_cpu_s, record.load_peak_rss_bytes = timed(
            lambda: loaded.update(backend.load(location))
        )
        record.process_load_s, record.load_cpu_s, record.load_peak_rss_bytes = _with_workers(
            backend, record.load_cpu_s, record.load_peak_rss_bytes)
        on_phase(planned, "verify")
        mismatched = getattr(backend, "verify", mismatches)(tensors, loaded)
        loaded.clear()  # free the loaded copy before the next run
        settled = True
        record.verified = not mismatched
        if mismatched:
            record.error = f"verification failed: {len(mismatched)} tensor(s) differ, first {mismatched[0]}"
    except Exception as exc:  # a failing test is recorded, and the suite goes on
        record.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        record.fatal = storage_failed(exc)
    finally:  # also on Ctrl-C: no half-written checkpoint is left behind
        backend.release()
        if location is None:  # interrupted while the run's folder was being made
            target.discard(planned.label)
        elif not (keep and record.ok):
            target.remove(location, settle=not settled)
    return record


def _with_workers(backend: Backend, cpu_s: float, peak_rss_bytes: int) -> tuple[list[float] | None, float, int]:
    """Per-process seconds, and CPU seconds and peak RSS growth with the workers' added, of a
    multi-process back end (the peaks are summed: an upper bound of the memory in use at once)."""
    workers = getattr(backend, "last_workers", None)
    if not workers:
        return None, cpu_s, peak_rss_bytes
    return ([w["seconds"] for w in workers], cpu_s + sum(w["cpu_s"] for w in workers),
            peak_rss_bytes + sum(w["peak_rss_bytes"] for w in workers))


_STORAGE_FAILURES = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS}
_STORAGE_FAILURE_TEXT = tuple(os.strerror(code) for code in _STORAGE_FAILURES)


def storage_failed(exc: BaseException) -> bool:
    """True for a full disk or an I/O error, however the library reported it (TensorStore puts the OS text in a ValueError)."""
    if isinstance(exc, OSError) and exc.errno in _STORAGE_FAILURES:
        return True
    return any(text in str(exc) for text in _STORAGE_FAILURE_TEXT)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE_BYTES


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_RSS_SAMPLE_S = 0.01


def timed(operation: Callable[[], Any]) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds over all threads, peak RSS growth in bytes) of one operation.

    RSS is sampled every 10 ms by a thread that sleeps between reads, so the cost it
    adds to the timing is a few microseconds per sample.
    """
    gc.collect()  # so a collection of earlier garbage does not land inside the timing
    resting = peak = _rss_bytes()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(_RSS_SAMPLE_S):
            peak = max(peak, _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        cpu0, t0 = os.times(), time.perf_counter()
        operation()
        t1, cpu1 = time.perf_counter(), os.times()
    finally:
        stop.set()
        sampler.join()
    peak = max(peak, _rss_bytes())
    return t1 - t0, (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), peak - resting


def _cache_state(resident_bytes: int, disk_bytes: int) -> str:
    if resident_bytes == 0:
        return "cold"
    return "warm" if resident_bytes >= 0.9 * disk_bytes else "partial"


def mismatches(source: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray]) -> list[str]:
    """Names whose loaded bytes, shape or dtype differ from the source (NaN and -0.0 compared as bits)."""
    bad = [name for name in source if name not in loaded]
    for name, expected in source.items():
        got = loaded.get(name)
        if got is None:
            continue
        if got.dtype != expected.dtype or got.shape != expected.shape:
            bad.append(name)
        elif not np.array_equal(expected.reshape(-1).view(np.uint8), np.ascontiguousarray(got).reshape(-1).view(np.uint8)):
            bad.append(name)
    bad.extend(name for name in loaded if name not in source)
    return bad


def backend_for(test: TestSpec, config: SuiteConfig, target: Target | None = None,
                pools: dict[int, Any] | None = None) -> Backend:
    """The back end that measures a test: TensorStore (in this process or N workers), or a reference row."""
    target = target or LocalTarget(config.output_dir)
    if test.backend == "tensorstore" and test.processes > 1:
        from . import distributed

        pools = {} if pools is None else pools
        source = distributed.WeightSource(config.model, None if config.weights is None else str(config.weights),
                                          config.dtype)
        pool = pools.setdefault(test.processes, distributed.Pool(test.processes, source))
        return distributed.DistributedBackend(storage.Layout.of(test, config.dtype), pool, config.max_inflight_bytes,
                                              context_extra=target.context_spec())
    if test.backend == "tensorstore":
        return storage.TensorStoreBackend(storage.Layout.of(test, config.dtype), config.max_inflight_bytes,
                                          context_extra=target.context_spec())
    from . import references

    return references.BACKENDS[test.backend]()


def run_suite(
    runs: Sequence[PlannedRun],
    tensors: Mapping[str, np.ndarray],
    config: SuiteConfig,
    on_phase: Phase = lambda run, phase: None,
    keep: bool = False,
    target: Target | None = None,
) -> Iterator[RunRecord]:
    """Execute a plan, yielding each run's record as soon as it ends; stop after a storage failure."""
    target = target or LocalTarget(config.output_dir)
    pools: dict[int, Any] = {}
    backends = {t.name: backend_for(t, config, target, pools) for t in config.tests}
    last_round = max((r.round for r in runs), default=0)
    try:
        for planned in runs:
            record = run_once(planned, tensors, backends[planned.test], config, on_phase,
                              keep=keep and planned.round == last_round, target=target)
            yield record
            if record.fatal:
                return
    finally:  # also on Ctrl-C: stop every worker process
        for pool in pools.values():
            pool.stop()
