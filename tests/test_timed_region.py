"""What the clocks hold: for every back end kind, `save_s` is the save with its fsyncs and `load_s` the load, and
nothing the run does around them (preparation, the size, eviction, allocation, verification, release).

Each kind's real back end runs one real timed run (measure.run_once) on the tiny preset, instrumented with known
seconds added to the clock the run reads (time.perf_counter) where a sleep would stand, so that no real time passes:
its save adds SAVE_SLEEP_S, every fsync FSYNC_SLEEP_S, its load LOAD_SLEEP_S, and every other hook OTHER_SLEEP_S. A
figure must hold its own seconds and stay under them by less than MARGIN_S (the real I/O, on a busy machine), which is
far below OTHER_SLEEP_S: one hook moved inside a clock fails the test. The device ceiling's figures are its fastest
access pattern's (each pattern timed alone inside the back end), so there the timed units are its patterns, and
the eviction between its read patterns is a hook that must stay outside them.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pytest

from ckptbench.bench import measure, workspace
from ckptbench.bench.backend import Backend, Wrapper
from ckptbench.bench.references import BACKENDS, ceiling
from ckptbench.core import records
from ckptbench.spec import config
from ckptbench.spec.references import CEILING

LOAD_SLEEP_S = 2.0
SAVE_SLEEP_S = 3.0  # not the load's: a save figure holding the load's sleep (or the reverse) fails too
FSYNC_SLEEP_S = 0.1
OTHER_SLEEP_S = 5.0
# The real I/O of the tiny preset (5 MB) takes milliseconds; the margin leaves room for a busy shared machine
# and stays far below what one hook inside a clock would add.
MARGIN_S = 0.5

KINDS = ["tensorstore", *BACKENDS]


class Units:
    """The known sleeps inside each timed unit of a save or a load, in the order the units ran; and the clock they
    move on."""

    def __init__(self) -> None:
        self.fsyncs = 0  # fsync calls since the test began (every thread's)
        self.known_s: dict[str, list[float]] = {"save": [], "load": []}
        self.added_s = 0.0  # the sleeps so far, added to every later reading of the clock
        self.lock = threading.Lock()  # parallel writers' fsyncs add up, as the units count them
        self.real_clock = time.perf_counter

    def clock(self) -> float:
        with self.lock:
            return self.real_clock() + self.added_s

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.added_s += seconds

    def timed(self, op: str, sleep_s: float, work: Callable[[], Any]) -> Any:
        """Run one unit: the sleep, then the real work; note the sleeps it held (its fsyncs' included)."""
        fsyncs_before = self.fsyncs
        self.sleep(sleep_s)
        result = work()
        self.known_s[op].append(sleep_s + (self.fsyncs - fsyncs_before) * FSYNC_SLEEP_S)
        return result


class Instrumented(Wrapper):
    """A real back end with known sleeps: in its save and load (units of their own), and in every other hook."""

    def __init__(self, inner: Backend, units: Units, whole_operations: bool = True) -> None:
        super().__init__(inner)
        self.units = units
        self.whole_operations = whole_operations  # False: the inner back end times its own units (the ceiling)

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        self.units.sleep(OTHER_SLEEP_S)
        self.inner.prepare(tensors)

    def before_load(self, tensors: Mapping[str, np.ndarray]) -> None:
        self.units.sleep(OTHER_SLEEP_S)
        self.inner.before_load(tensors)

    def save(self, tensors: Mapping[str, np.ndarray], location: Any) -> None:
        if not self.whole_operations:
            return self.inner.save(tensors, location)
        return self.units.timed("save", SAVE_SLEEP_S, lambda: self.inner.save(tensors, location))

    def load(self, location: Any) -> dict[str, np.ndarray]:
        if not self.whole_operations:
            return self.inner.load(location)
        return self.units.timed("load", LOAD_SLEEP_S, lambda: self.inner.load(location))

    def footprint(self, location: Any) -> tuple[int, int, int]:
        self.units.sleep(OTHER_SLEEP_S)
        return self.inner.footprint(location)

    def evict(self, directory: Path, method: str) -> str | None:
        self.units.sleep(OTHER_SLEEP_S)
        return self.inner.evict(directory, method)

    def verify(self, tensors: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray]) -> list[str]:
        self.units.sleep(OTHER_SLEEP_S)
        return self.inner.verify(tensors, loaded)

    def release(self) -> None:
        self.units.sleep(OTHER_SLEEP_S)
        self.inner.release()

    def worker_figures(self) -> list[dict[str, float]] | None:
        return self.inner.worker_figures()


@pytest.fixture
def units(monkeypatch) -> Units:
    """The clock the run reads, moved on by the sleeps; every fsync (os.fsync, which every Python writer here calls)
    sleeps FSYNC_SLEEP_S more, and is counted."""
    made = Units()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        with made.lock:
            made.fsyncs += 1
            made.added_s += FSYNC_SLEEP_S
        real_fsync(fd)

    monkeypatch.setattr(time, "perf_counter", made.clock)
    monkeypatch.setattr(os, "fsync", slow_fsync)
    return made


def _suite(tmp_path: Path, kind: str):
    tests = [{"name": "tensorstore", "chunk_bytes": "64KB", "concurrency_limit": 4,
              "warm_load": kind == "tensorstore"}]
    refs = {} if kind == "tensorstore" else {kind: True}
    made = config.from_dict({"model": "tiny", "references": refs, "test_configurations": tests,
                             "testing": {"num_runs": 1, "cache_eviction": "fadvise"}},
                            base_dir=tmp_path, output_dir=tmp_path / "out")
    workspace.prepare_output_dir(made.output_dir)
    return made


def _instrumented(kind: str, suite, units: Units, monkeypatch) -> Instrumented:
    real = measure.backend_for(suite.test(kind), suite)
    if kind != CEILING:
        return Instrumented(real, units)
    # The ceiling times each access pattern itself: each pattern's write or read set is a unit, and its own
    # eviction between read patterns is a hook outside them.
    write_set, read_set, evict = ceiling._write_set, ceiling._read_set, ceiling.DeviceCeilingBackend._evict
    monkeypatch.setattr(ceiling, "_write_set", lambda *a: units.timed("save", SAVE_SLEEP_S, lambda: write_set(*a)))
    monkeypatch.setattr(ceiling, "_read_set",
                        lambda *a, **k: units.timed("load", LOAD_SLEEP_S, lambda: read_set(*a, **k)))
    monkeypatch.setattr(ceiling.DeviceCeilingBackend, "_evict",
                        lambda self, folder: (units.sleep(OTHER_SLEEP_S), evict(self, folder))[1])
    return Instrumented(real, units, whole_operations=False)


def _holds_exactly(seconds: float, known_s: float, what: str) -> None:
    assert known_s <= seconds < known_s + MARGIN_S, (
        f"{what}: {seconds:.3f} s, expected its own {known_s:.3f} s of sleeps plus less than {MARGIN_S} s; "
        f"{OTHER_SLEEP_S} s more is a hook inside the clock, less is a clock other than time.perf_counter")


# the device ceiling's full grid is slow
@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k == CEILING else k for k in KINDS])
def test_the_clocks_hold_the_save_with_its_fsyncs_and_the_load_and_nothing_else(tmp_path, tiny_weights, kind,
                                                                                   units, monkeypatch):
    suite = _suite(tmp_path, kind)
    backend = _instrumented(kind, suite, units, monkeypatch)
    record = measure.run_once(records.PlannedRun(kind, 0, 0), backend, measure.Bench(suite, tiny_weights.tensors))
    assert record.ok and record.verified, record.error
    assert record.load_cache == "cold"
    save_units, load_units = units.known_s["save"], units.known_s["load"]
    if kind != "tensorstore":  # TensorStore fsyncs in its C++ file kvstore, out of Python's sight
        assert all(known > SAVE_SLEEP_S for known in save_units), f"{kind}: a save unit without an fsync"
    if backend.whole_operations:
        warm = kind == "tensorstore"  # its test also loads once from the page cache, before the eviction
        assert (len(save_units), len(load_units)) == (1, 2 if warm else 1)
        _holds_exactly(record.save_s, save_units[0], f"{kind} save_s")
        _holds_exactly(record.load_s, load_units[-1], f"{kind} load_s")
        if warm:
            _holds_exactly(record.warm_load_s, load_units[0], f"{kind} warm_load_s")
        return
    # The ceiling: every pattern holds its own unit's sleeps only; its figures are the fastest pattern's.
    patterns = record.patterns
    # fio's pattern (where fio is on PATH) is timed by fio's own clock in its own process: no unit of ours
    own = {op: {n: s for n, s in patterns[op].items() if not n.startswith(ceiling.FIO_PREFIX)} for op in patterns}
    assert (len(own["save"]), len(own["load"])) == (len(save_units), len(load_units)) == (len(ceiling.GRID),
                                                                                          len(ceiling.GRID) + 1)
    for op, known in (("save", save_units), ("load", load_units)):
        for (name, seconds), known_s in zip(own[op].items(), known):
            _holds_exactly(seconds, known_s, f"ceiling {op} pattern {name}")
    assert (record.save_s, record.load_s) == (min(patterns["save"].values()), min(patterns["load"].values()))
