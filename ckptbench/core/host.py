"""What the rest of this host did while an operation was timed: other processes' CPU time and device bytes.

A `Watch` takes a `Sample` right before an operation's clock starts and right after it stops; `others(before,
after)` is the difference, less this run's own share (what counts as whose: PHASE4_GUIDE.md, "A busy machine"). Own
CPU is utime + stime + cutime + cstime from /proc/<pid>/stat of this process, its descendants and the other ranks of a
launch on this host (`count_as_own`): a child reaped within the operation stays counted, in its parent's cutime/cstime.
Device bytes are of the disk that holds the output folder (a partition counts as its whole disk), or of every physical
disk when that folder is on no block device (tmpfs, overlay, a network filesystem).

A snapshot reads /proc/stat, /proc/diskstats and every /proc/<pid>/stat of the host (a hundred processes: a few
milliseconds), outside the clock reads. Without /proc (not Linux) the figures are None: not measured, never "quiet".

Limits: /proc/stat counts in clock ticks (10 ms) per CPU, so a short operation's figure is coarse (analysis.busy
judges with a floor); a write this run made before the operation that the kernel flushes during it counts as
another's (durable saves and evictions sync first, so only a non-durable save with no eviction leaves one); so does
the CPU of a kernel thread that ends within the operation.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ckptbench.core.system import io_bytes

PROC = Path("/proc")
SYS = Path("/sys")
SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the device's own sector size
_BUSY_FIELDS = (0, 1, 2, 7)  # of /proc/stat's cpu line: user nice system [idle iowait irq softirq] steal
_KERNEL_THREAD = 0x00200000  # PF_KTHREAD in /proc/<pid>/stat's flags
_own_roots: set[int] = set()  # other processes of this host that count as this run's own (a launch's ranks)


def count_as_own(pids: Iterable[int]) -> None:
    """Count these processes of this host (and their descendants) as this run's own: a launch's other ranks."""
    _own_roots.update(int(pid) for pid in pids)


def load_average() -> list[float] | None:
    """The host's load averages over 1, 5 and 15 minutes; None where the system has none."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class Sample:
    """The host's counters at one moment."""

    at_s: float  # time.perf_counter()
    busy_ticks: int  # every CPU's busy time, in clock ticks
    own_ticks: int  # the own processes' CPU time, in clock ticks
    kernel_ticks: Mapping[int, int]  # each kernel thread's CPU time (pid: clock ticks)
    device_read_bytes: int
    device_write_bytes: int
    own_read_bytes: int
    own_write_bytes: int


def others(before: Sample | None, after: Sample | None) -> dict[str, float] | None:
    """What other processes of this host did between two samples: their CPU seconds and device bytes read and
    written, with the window's seconds and the own processes' figures beside them; None if not measured."""
    if before is None or after is None:
        return None
    tick_s = 1.0 / _ticks_per_second()
    own_cpu = after.own_ticks - before.own_ticks
    # per thread: a kworker that ended within the window takes its whole past out of the sum, not just its share
    kernel_cpu = sum(used - before.kernel_ticks.get(pid, 0) for pid, used in after.kernel_ticks.items())
    own_read = after.own_read_bytes - before.own_read_bytes
    own_write = after.own_write_bytes - before.own_write_bytes
    return {
        "seconds": after.at_s - before.at_s,
        "cpu_s": max(0, after.busy_ticks - before.busy_ticks - own_cpu - kernel_cpu) * tick_s,
        "read_bytes": max(0, after.device_read_bytes - before.device_read_bytes - own_read),
        "write_bytes": max(0, after.device_write_bytes - before.device_write_bytes - own_write),
        "own_cpu_s": own_cpu * tick_s,
        "kernel_cpu_s": kernel_cpu * tick_s,
        "own_read_bytes": own_read,
        "own_write_bytes": own_write,
    }


@dataclass(frozen=True)
class Watch:
    """Samples of the host for operations whose checkpoint lives on `devices` (names in /proc/diskstats)."""

    devices: tuple[str, ...]

    def sample(self) -> Sample | None:
        """The host's counters now; None where there is no /proc."""
        try:
            busy = _busy_ticks()
            read, written = _device_bytes(self.devices)
            own_ticks, kernel_ticks, own_read, own_write = _own_usage()
        except (OSError, ValueError, IndexError):
            return None
        return Sample(time.perf_counter(), busy, own_ticks, kernel_ticks, read, written, own_read, own_write)


def watch_for(path: Path | None) -> Watch:
    """The watch of operations that write and read under `path` (or the nearest folder of it that exists); with
    no local path (a remote store), of every physical disk."""
    if path is None:
        return _watch_of(None)
    existing = next((p for p in (Path(path), *Path(path).parents) if p.exists()), Path("/"))
    try:
        return _watch_of(os.stat(existing).st_dev)
    except OSError:
        return _watch_of(None)


@functools.cache
def _watch_of(device: int | None) -> Watch:
    return Watch(disks_of(device))


def disks_of(device: int | None) -> tuple[str, ...]:
    """The whole disk of a filesystem's device number (st_dev), or every physical disk when it is no block
    device (tmpfs, overlay, a network filesystem) or None."""
    if device is not None and os.major(device) != 0:
        node = SYS / "dev" / "block" / f"{os.major(device)}:{os.minor(device)}"
        if node.exists():
            real = node.resolve()
            return (real.parent.name if (real / "partition").exists() else real.name,)
    return physical_disks()


def physical_disks() -> tuple[str, ...]:
    """Whole disks that are hardware (not loop, ram, zram, device-mapper or md devices, whose bytes reach a
    physical disk anyway or never do)."""
    try:
        return tuple(sorted(entry.name for entry in (SYS / "block").iterdir()
                            if "/virtual/" not in str(entry.resolve())))
    except OSError:
        return ()


@functools.lru_cache(maxsize=1)
def _ticks_per_second() -> int:
    return os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_ticks() -> int:
    with open(PROC / "stat") as handle:
        values = handle.readline().split()[1:]  # the first line: every CPU together
    return sum(int(values[i]) for i in _BUSY_FIELDS if i < len(values))


def _device_bytes(devices: tuple[str, ...]) -> tuple[int, int]:
    """(bytes read, bytes written) of the devices since boot."""
    read = written = 0
    with open(PROC / "diskstats") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) > 9 and fields[2] in devices:
                read += int(fields[5]) * SECTOR_BYTES
                written += int(fields[9]) * SECTOR_BYTES
    return read, written


def _own_usage() -> tuple[int, dict[int, int], int, int]:
    """(CPU ticks of this run's own processes, CPU ticks of the kernel's threads, device bytes read and written by
    the own processes), gone children of the own processes included."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    kernel: dict[int, int] = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/stat") as handle:
                rest = handle.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except (OSError, IndexError):
            continue  # a process that ended meanwhile
        pid = int(entry.name)
        used = sum(int(value) for value in rest[11:15])  # utime stime cutime cstime
        if int(rest[6]) & _KERNEL_THREAD:
            kernel[pid] = used
            continue
        parents[pid] = int(rest[1])
        ticks[pid] = used
    own = _descendants({os.getpid(), *_own_roots} & ticks.keys(), parents)
    read = written = 0
    for pid in own:
        counters = io_bytes(pid)
        read += counters.get("read_bytes", 0)
        written += counters.get("write_bytes", 0)
    return sum(ticks[pid] for pid in own), kernel, read, written


def _descendants(roots: set[int], parents: dict[int, int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found

