"""Running the benchmark: one timed run, and a plan's runs one after another.

A run (`run_once`; PHASE4_GUIDE.md, sections 4.2 to 4.4): save, size, evict, load, verify, delete. Only the save and the
loads sit between clock reads. `timed` measures one operation: wall seconds, CPU seconds over all threads, and resident
memory, sampled every 20 ms by a thread that sleeps between reads of /proc/self/statm (one short line). A sampler is not
free: one reading /proc/self/status every 10 ms made a minimal script's many-file saves 20-30 % slower
(docs/measurements/harness-cost.md), so this one reads the cheaper file half as often. Right outside the clock reads,
what other processes of the host did is sampled (core.host: their CPU time and the disk's bytes, this run's own
processes left out) into the run's `other_processes`; with writers on other hosts, the busiest host's
(analysis.busy.busiest; each host's first rank watches its own, parallel.writers). Failures are recorded in
the run's record, never raised, so one broken test does not stop the others; a failing disk (full, I/O error) stops
the suite.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ckptbench.analysis import busy
from ckptbench.bench import async_save, cache, storage
from ckptbench.bench.backend import Backend, ThisProcess, Writers
from ckptbench.bench.references import BACKENDS
from ckptbench.bench.targets import LocalTarget, RunLocation, Target
from ckptbench.core import host, system
from ckptbench.core.errors import RunSkipped
from ckptbench.core.records import Phase, Plan, PlannedRun, RunRecord
from ckptbench.sources.source_file import SourceTensors
from ckptbench.spec.fields import TestSpec
from ckptbench.spec.references import CEILING
from ckptbench.spec.suite import SuiteConfig

SAMPLE_S = 0.02


@dataclass(frozen=True)
class Timed:
    """What one operation took."""

    wall_s: float
    cpu_s: float
    rss_growth_bytes: int  # peak resident size above the size when the operation began
    rss_anon_peak_bytes: int  # peak anonymous resident bytes of the process during the operation
    rss_file_peak_bytes: int  # peak file-backed resident bytes (mapped files) during the operation
    others: dict[str, float] | None = None  # other processes of the host meanwhile (core.host.others), if watched


def timed(operation: Callable[[], Any], collect_garbage: bool = True, watch: host.Watch | None = None) -> Timed:
    """Run operation once and measure it (see the module docstring). First, earlier garbage is collected (a full
    collection takes 0.1-0.3 s in a process that imported torch) and freed memory handed back to the OS, so that neither
    lands inside the timing; a writer whose clock started earlier, at a barrier, passes collect_garbage=False and does
    this between jobs instead."""
    if collect_garbage:
        system.release_free_memory()
    anon0, file0 = system.resident_bytes()
    resident0, shared0 = system.resident_and_shared_bytes()
    shmem_bytes = anon0 - (resident0 - shared0)  # /dev/shm maps: counted as anonymous, assumed steady meanwhile
    peaks = [anon0, file0, anon0 + file0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_S):
            _note_peaks(peaks, shmem_bytes)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    before = watch.sample() if watch is not None else None
    try:
        cpu0, t0 = os.times(), time.perf_counter()
        operation()
        t1, cpu1 = time.perf_counter(), os.times()
    finally:
        after = watch.sample() if watch is not None else None
        stop.set()
        sampler.join()
    _note_peaks(peaks, shmem_bytes)
    return Timed(wall_s=t1 - t0, cpu_s=(cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
                 rss_growth_bytes=peaks[2] - (anon0 + file0), rss_anon_peak_bytes=peaks[0],
                 rss_file_peak_bytes=peaks[1], others=host.others(before, after))


def _note_peaks(peaks: list[int], shmem_bytes: int) -> None:
    resident, shared = system.resident_and_shared_bytes()
    anon, file = resident - shared + shmem_bytes, shared - shmem_bytes
    peaks[0], peaks[1], peaks[2] = max(peaks[0], anon), max(peaks[1], file), max(peaks[2], resident)


@dataclass(frozen=True)
class Bench:
    """What a plan's runs measure with: the suite, its weights (`sources`: by `values`, for tests whose values differ
    from the suite's `tensors`), where runs are written (None: the suite's output folder), the writers of tests with
    several processes (the caller stops them), and `keep`: leave each test's last round's checkpoint."""

    config: SuiteConfig
    tensors: Mapping[str, np.ndarray]
    target: Target | None = None
    sources: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)
    writers: Writers | None = None
    keep: bool = False


def run_once(planned: PlannedRun, backend: Backend, bench: Bench, on_phase: Phase = lambda _run, _phase: None,
             keep: bool = False) -> RunRecord:
    """One save/evict/load/verify cycle (`keep`: leave its checkpoint); failures are recorded, never raised."""
    # A test the suite does not list takes every default (the suite's eviction among them)
    spec = next((t for t in bench.config.tests if t.name == planned.test), TestSpec(planned.test))
    target = bench.target or LocalTarget(bench.config.output_dir)
    tensors = bench.sources.get(bench.config.values_for(spec), bench.tensors)
    record = RunRecord(planned.test, planned.round, planned.position, planned.warmup,
                       confirm_block=planned.confirm_block)
    location = None
    settled = False  # True once no TensorStore operation can still be writing into the run's location
    try:
        location = target.new_run(planned.label)
        if isinstance(tensors, SourceTensors):
            tensors.make_resident()  # a source file the last eviction dropped is read back: before any clock
        backend.prepare(tensors)  # e.g. start worker processes, allocate buffers: before any clock
        on_phase(planned, "save")
        watch = host.watch_for(location.local_dir)  # the disk under the run's folder (remote: every disk here)
        _note(record, "save", timed(lambda: backend.save(tensors, location), watch=watch), backend)
        async_save.note(record, backend)  # async saves: blocked, commit, staging, the steps
        on_phase(planned, "size")
        record.size_bytes, record.disk_bytes, record.n_files = backend.footprint(location)
        if spec.warm_load and location.local_dir is not None and not backend.in_memory:
            on_phase(planned, "warm load")
            _warm_load(record, backend, tensors, location)
        if record.error is None:  # a wrong warm load: the cold one could only repeat it
            _load(record, backend, tensors, location, bench.config.eviction_for(spec),
                  lambda phase: on_phase(planned, phase))
        settled = True
    except RunSkipped:  # skipped before its save: nothing measured, nothing to record
        raise
    except Exception as exc:  # a failing test is recorded, and the suite goes on
        record.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        record.fatal = storage_failed(exc)
    finally:  # also on Ctrl-C: no half-written checkpoint is left behind
        backend.release()
        if location is None:  # interrupted while the run's folder was being made
            target.discard(planned.label)
        elif not (keep and record.ok):
            target.remove(location, settle=not settled)
    system.release_free_memory()  # what this run freed goes back to the OS before the next one
    record.rss_anon_after_bytes = system.resident_bytes()[0]
    return record


def _warm_load(record: RunRecord, backend: Backend, tensors: Mapping[str, np.ndarray], location: RunLocation) -> None:
    """Load (timed) from the page cache the save left in the run's folder, and verify."""
    folder = location.local_dir
    assert folder is not None  # a remote run has no page cache of its own: run_once loads it cold only
    record.warm_load_cache = cache_state(cache.resident_bytes(folder), record.disk_bytes)
    warm: dict[str, np.ndarray] = {}
    backend.before_load(tensors)
    usage = timed(lambda: warm.update(backend.load(location)), watch=host.watch_for(folder))
    span_s = readers_span_s(backend.worker_figures())
    record.warm_load_s = usage.wall_s if span_s is None else span_s
    record.warm_load_cpu_s = usage.cpu_s + sum(w["cpu_s"] for w in backend.worker_figures() or [])
    _note_others(record, "warm_load", usage, backend.worker_figures())
    _verify(record, backend, tensors, warm, "the warm load")


def _load(record: RunRecord, backend: Backend, tensors: Mapping[str, np.ndarray], location: RunLocation,
          eviction: str, on_phase: Callable[[str], None]) -> None:
    """Evict the run's files (`eviction`: the test's cache_eviction), load (timed), verify; `on_phase` before each."""
    backend.before_load(tensors)  # before the eviction: memory it touches cannot bring the files back
    if backend.in_memory:
        record.load_cache = "memory"
    elif location.local_dir is None:
        record.load_cache = "remote"  # read from the server: no local cache to drop
    else:
        on_phase("evict")
        record.eviction = backend.evict(location.local_dir, eviction)
        record.resident_bytes_at_load = cache.resident_bytes(location.local_dir)
        if record.resident_bytes_at_load and record.eviction is not None:  # drop_caches now and then keeps a page
            backend.evict(location.local_dir, eviction)  # or two the save just wrote, unread since: a 2nd drop takes it
            record.resident_bytes_at_load = cache.resident_bytes(location.local_dir)
        record.load_cache = cache_state(record.resident_bytes_at_load, record.disk_bytes)
    on_phase("load")
    loaded: dict[str, np.ndarray] = {}
    usage = timed(lambda: loaded.update(backend.load(location)), watch=host.watch_for(location.local_dir))
    _note(record, "load", usage, backend)
    if location.local_dir is not None:  # after the clock, before anything else reads or evicts the files
        record.resident_bytes_after_load = cache.resident_bytes(location.local_dir)
        record.bypass_resident_bytes = backend.bypass_resident_bytes(record.resident_bytes_after_load)
    on_phase("verify")
    _verify(record, backend, tensors, loaded, "the load")


def _verify(record: RunRecord, backend: Backend, tensors: Mapping[str, np.ndarray],
            loaded: dict[str, np.ndarray], what: str) -> None:
    """Compare a load with the source bit for bit, then free the loaded copy before anything else runs."""
    mismatched = backend.verify(tensors, loaded)
    loaded.clear()
    record.verified = not mismatched
    if mismatched:
        record.error = f"verification failed: {what}: {len(mismatched)} tensor(s) differ, first {mismatched[0]}"


def _note(record: RunRecord, op: str, usage: Timed, backend: Backend) -> None:
    """Put one operation's figures in the record, the workers' (if any) included."""
    seconds, cpu_s = usage.wall_s, usage.cpu_s
    growth: float = usage.rss_growth_bytes
    workers = backend.worker_figures()
    if workers:
        setattr(record, f"process_{op}_s", [w["seconds"] for w in workers])
        for key in ("read_bytes", "rchar_bytes", "slice_bytes"):  # a load's readers' bytes (writers.perform)
            if all(key in w for w in workers):
                setattr(record, f"process_{op}_{key}", [int(w[key]) for w in workers])
        cpu_s += sum(w["cpu_s"] for w in workers)  # the workers' CPU seconds
        growth += sum(w["peak_rss_bytes"] for w in workers)  # summed: an upper bound of what was in use at once
        setattr(record, f"{op}_host_rss_anon_bytes", usage.rss_anon_peak_bytes + _others_anon_bytes(workers))
        span_s = readers_span_s(workers) if op == "load" else None
        if span_s is not None:  # the readers' own clock, not this process's around sending the job and gathering it
            seconds, record.load_clock = span_s, "readers"
    patterns = backend.pattern_seconds()
    if patterns:  # the device ceiling: its time is the fastest pattern's
        record.patterns = {**(record.patterns or {}), op: dict(patterns)}
        seconds = min(patterns.values())
    for name, value in (("s", seconds), ("cpu_s", cpu_s), ("peak_rss_bytes", growth),
                        ("rss_anon_bytes", usage.rss_anon_peak_bytes), ("rss_file_bytes", usage.rss_file_peak_bytes)):
        setattr(record, f"{op}_{name}", value)
    _note_others(record, op, usage, workers)


def _note_others(record: RunRecord, op: str, usage: Timed, workers: Sequence[Mapping[str, Any]] | None) -> None:
    """What other processes did during the operation, by operation: on this host, or on the busiest host whose
    first rank watched it (`others` in its figures); nothing where not measured."""
    by_host = {w["host"]: w["others"] for w in workers or () if w.get("others") is not None}
    if usage.others is not None:
        by_host[socket.gethostname()] = usage.others
    if by_host:
        record.other_processes = {**(record.other_processes or {}), op: busy.busiest(by_host)}


def readers_span_s(workers: Sequence[Mapping[str, Any]] | None) -> float | None:
    """A load by several readers, from their own stamps (parallel.writers): the latest end less the earliest start (the
    barrier's release) of each host's readers, on that host's monotonic clock, which all its processes share; the
    slowest host's. Hosts share no clock, so with one reader per host this is the slowest reader's own time. None
    without stamps (one process)."""
    if not workers or any("started_s" not in w or "ended_s" not in w for w in workers):
        return None
    by_host: dict[Any, list[Mapping[str, Any]]] = {}
    for worker in workers:
        by_host.setdefault(worker.get("host"), []).append(worker)
    return max(max(w["ended_s"] for w in mine) - min(w["started_s"] for w in mine) for mine in by_host.values())


def _others_anon_bytes(workers: list[dict[str, Any]]) -> int:
    """The peak anonymous bytes of the other processes of this host that took part (workers, tp readers, a launch's
    ranks here): this process's own are in its own figures, other hosts' are on theirs."""
    host, pid = socket.gethostname(), os.getpid()
    return sum(int(w.get("peak_anon_bytes", 0)) for w in workers if w.get("host") == host and w.get("pid") != pid)


_STORAGE_FAILURES = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS}
_STORAGE_FAILURE_TEXT = tuple(os.strerror(code) for code in _STORAGE_FAILURES)


def storage_failed(exc: BaseException) -> bool:
    """A full disk or an I/O error, however the library said so (TensorStore puts the OS text in a ValueError)."""
    by_errno = isinstance(exc, OSError) and exc.errno in _STORAGE_FAILURES
    return by_errno or any(text in str(exc) for text in _STORAGE_FAILURE_TEXT)


def cache_state(resident_bytes: int, disk_bytes: int | None) -> str:
    if resident_bytes == 0:
        return "cold"
    return "warm" if resident_bytes >= 0.9 * (disk_bytes or 0) else "partial"


def backend_for(test: TestSpec, config: SuiteConfig, target: Target | None = None,
                writers: Writers | None = None) -> Backend:
    """The back end that measures a test: the writers' for several processes (a tensor-parallel load's readers among
    them, a reference row's too), else `own_backend`."""
    target = target or LocalTarget(config.output_dir)
    if test.processes > 1:
        return (writers or ThisProcess()).backend(test, config, target)
    return own_backend(test, config, target)


def own_backend(test: TestSpec, config: SuiteConfig, target: Target) -> Backend:
    """The one factory of a test's back end in this process, whatever its processes (parallel.backend wraps a reference
    row's for its tp readers): TensorStore, a reference row or the device ceiling."""
    if test.backend == "tensorstore":
        return storage.TensorStoreBackend(storage.Layout.of(test, config.dtype), config.max_inflight_bytes,
                                          context_extra=target.context_spec())
    backend = BACKENDS[test.backend](**reference_settings(test, config))
    if test.backend != CEILING:  # the ceiling reads into its own buffer
        backend.load_into = test.load_into or "new"  # None: the suite's default
    return backend


def reference_settings(test: TestSpec, config: SuiteConfig) -> dict[str, Any]:
    """A reference row's back end's keyword arguments (its tp readers build theirs from them too)."""
    return {"eviction": config.cache_eviction} if test.backend == CEILING else dict(test.reference_settings or {})


def run_plan(runs: Iterable[PlannedRun], bench: Bench, on_phase: Phase = lambda _run, _phase: None,
             earlier: Sequence[RunRecord] = ()) -> Iterator[RunRecord]:
    """Execute a plan, yielding each run's record as soon as it ends; stop after a storage failure. `earlier`: runs
    before these (a resumed journal's, an earlier suite's), which each back end is told of before a run of its test. A
    run that `on_phase` skips (RunSkipped, raised before its save) yields no record."""
    config = bench.config
    backends = {t.name: async_save.wrap(backend_for(t, config, bench.target, bench.writers), t, config.cache_eviction)
                for t in config.tests}
    runs = runs if isinstance(runs, Plan) else list(runs)
    last_round = runs.last_round if isinstance(runs, Plan) else max((r.round for r in runs), default=0)
    history: dict[str, list[RunRecord]] = {t.name: [] for t in config.tests}
    for record in earlier:
        history.setdefault(record.test, []).append(record)
    for planned in runs:
        backends[planned.test].before_run(history[planned.test])
        try:
            record = run_once(planned, backends[planned.test], bench, on_phase,
                              keep=bench.keep and planned.round == last_round)
        except RunSkipped:  # on_phase skipped it before its save (a caller's `may_start`)
            continue
        history[planned.test].append(record)
        yield record
        if record.fatal:
            return
