"""Timing one operation: wall seconds, CPU seconds over all threads, and resident memory.

Only the operation sits between the two clock reads. Memory is sampled every 20 ms by a
thread that sleeps between reads of /proc/self/statm (one short line). A sampler is not free:
one reading /proc/self/status every 10 ms made a minimal script's many-file saves 20-30 %
slower (docs/measurements/harness-cost.md), so this one reads the cheaper file half as often.
Given a `core.host.Watch`, what other processes of the host did meanwhile is sampled right
outside the clock reads (`Timed.others`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ckptbench.core import host
from ckptbench.core.system import release_free_memory, resident_and_shared_bytes, resident_bytes

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
    """Run operation once and measure it (see the module docstring).

    First, earlier garbage is collected (a full collection takes 0.1-0.3 s in a process that
    imported torch) and freed memory handed back to the OS, so that neither lands inside the
    timing; a writer whose clock started earlier, at a barrier, passes collect_garbage=False
    and does this between jobs instead."""
    if collect_garbage:
        release_free_memory()
    anon0, file0 = resident_bytes()
    resident0, shared0 = resident_and_shared_bytes()
    shmem_bytes = anon0 - (resident0 - shared0)  # /dev/shm maps: counted as anonymous, assumed steady meanwhile
    peaks = [anon0, file0, anon0 + file0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_S):
            _note(peaks, shmem_bytes)

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
    _note(peaks, shmem_bytes)
    return Timed(wall_s=t1 - t0, cpu_s=(cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
                 rss_growth_bytes=peaks[2] - (anon0 + file0), rss_anon_peak_bytes=peaks[0],
                 rss_file_peak_bytes=peaks[1], others=host.others(before, after))


def _note(peaks: list[int], shmem_bytes: int) -> None:
    resident, shared = resident_and_shared_bytes()
    anon, file = resident - shared + shmem_bytes, shared - shmem_bytes
    peaks[0], peaks[1], peaks[2] = max(peaks[0], anon), max(peaks[1], file), max(peaks[2], resident)
