"""The clock of a tensor-parallel load: `load_s` is the readers' own span, from the common start (the barrier's
release) to the slowest reader's end, and holds nothing else: not the jobs sent, the readers' imports, the barrier,
the gathering of replies, nor the parent's preparation, eviction and verification.

Real spawned readers (a pool whose workers run an instrumented main, picklable by name) on real files: each
reader's load is replaced by a known sleep (then its slices copied from the source, so verification passes), and
known, different sleeps are put outside it, in the readers and in the suite's process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ckptbench.bench import measure, workspace
from ckptbench.bench.targets import LocalTarget
from ckptbench.core import records
from ckptbench.parallel.backend import backend_of
from ckptbench.parallel.shared import WeightSource
from ckptbench.parallel.spawned import Pool
from ckptbench.spec import config

LOAD_SLEEP_S = 0.2  # inside each reader's timed load
BEFORE_BARRIER_SLEEP_S = 0.6  # a reader's imports (writers.ready): before the common start
AFTER_LOAD_SLEEP_S = 0.4  # after a reader's end, before its reply (its bytes, writers._read_figures)
READER_VERIFY_SLEEP_S = 0.5  # a reader's verification, after the clock
PARENT_SLEEP_S = 0.5  # the suite process's preparation, eviction and verification


def _sleeping_before(function: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return function(*args, **kwargs)

    return slow


class SleepingReaders(Pool):
    """Spawned tp readers whose load is a known sleep, with other known sleeps around it."""

    @staticmethod
    def worker_main(launch: Any, source: Any) -> None:
        from ckptbench.parallel import spawned, writers
        from ckptbench.parallel.slices import part

        tensors = source.open()

        def load(job: writers.Job) -> dict[str, np.ndarray]:
            time.sleep(LOAD_SLEEP_S)
            return {name: np.array(part(tensors[name], box)) for name, box in job.boxes.items()}

        real_ready = writers.ready

        def ready(job: writers.Job | None) -> None:
            real_ready(job)
            if job is not None and job.op == "load":
                time.sleep(BEFORE_BARRIER_SLEEP_S)

        writers._load_slices = load
        writers.ready = ready
        writers._read_figures = _sleeping_before(writers._read_figures, AFTER_LOAD_SLEEP_S)
        writers.mismatches = _sleeping_before(writers.mismatches, READER_VERIFY_SLEEP_S)
        spawned._worker_main(launch, source)


def test_load_s_holds_the_readers_load_and_nothing_around_it(tmp_path: Path, tiny_weights) -> None:
    raw = {"model": "tiny", "testing": {"num_runs": 1, "cache_eviction": "fadvise"},
           "output_dir": str(tmp_path / "out"),
           "test_configurations": [{"name": "t", "chunk_bytes": "64KB", "concurrency_limit": 8, "tp": 2}]}
    suite = config.from_dict(raw)
    test = suite.tests[0]
    workspace.prepare_output_dir(suite.output_dir)
    pool = SleepingReaders(test.processes, WeightSource(suite.model, suite.weights, suite.dtype, suite.values))
    target = LocalTarget(suite.output_dir)
    backend = backend_of(test, suite, target, pool)
    for name in ("prepare", "evict", "verify"):  # the suite process's own steps around the load
        setattr(backend, name, _sleeping_before(getattr(backend, name), PARENT_SLEEP_S))
    try:
        record = measure.run_once(records.PlannedRun("t", 0, 0), tiny_weights.tensors, backend, suite,
                                  target=target)
    finally:
        pool.stop()
    assert record.error is None and record.verified is True, record.error
    assert record.load_clock == "readers" and len(record.process_load_s) == 2
    # Each reader's own time is its sleep; load_s spans them, with a wide margin for a busy machine
    assert all(LOAD_SLEEP_S <= s < LOAD_SLEEP_S + 0.1 for s in record.process_load_s), record.process_load_s
    assert LOAD_SLEEP_S <= record.load_s < LOAD_SLEEP_S + 0.1, record.load_s
    assert max(record.process_load_s) <= record.load_s <= max(record.process_load_s) + 0.05


def test_the_span_of_readers_is_per_host() -> None:
    """One host's readers share its monotonic clock: the latest end less the earliest start. Hosts share none:
    the slowest host's span (with one reader per host, its own time)."""
    one_host = [{"host": "a", "started_s": 10.0, "ended_s": 10.5}, {"host": "a", "started_s": 10.01, "ended_s": 10.7}]
    assert measure.readers_span_s(one_host) == 10.7 - 10.0
    two_hosts = [{"host": "a", "started_s": 10.0, "ended_s": 10.5}, {"host": "b", "started_s": 5000.0,
                                                                     "ended_s": 5000.8}]
    assert measure.readers_span_s(two_hosts) == 5000.8 - 5000.0
    assert measure.readers_span_s([{"host": "a", "seconds": 1.0}]) is None
    assert measure.readers_span_s(None) is None
