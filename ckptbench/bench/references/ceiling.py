"""The device's own ceiling: the model's bytes written and read cold in raw files, over a grid of access patterns.

What the disk itself can do, so every test can be reported as a fraction of it (PHASE4_GUIDE.md, section 4.7): GRID, an
O_DIRECT read that no page cache can serve, and fio's deep queues where `fio` is on PATH. After the suite's first
ceiling run only the grid's fastest writes and reads run again (`before_run`), with fio's and the O_DIRECT read, so each
round's ceiling is the fastest of a few strong candidates rather than one pattern whose noise would become every row's
"% of ceiling".
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ckptbench.bench import cache
from ckptbench.bench.references.files import FileReference, folder_of, fsync_path
from ckptbench.bench.storage import checkpoint_size
from ckptbench.bench.targets import RunLocation
from ckptbench.core.records import RunRecord
from ckptbench.sources.source_file import Box
from ckptbench.spec.references import DIRECT_PREFIX

_MIB = 2**20
# (streams, block bytes). dd's bs=1M and fio's large sequential blocks over 1-16 streams, and deeper queues:
# 64 MiB blocks over 16 streams, 32 streams. One 64 MiB read stream ran at a sixth of the speed of 1-8 MiB
# reads on the machines we measured, so no single pattern is "the" device's speed: the grid finds the best.
GRID = ((1, _MIB), (1, 16 * _MIB), (4, _MIB), (4, 16 * _MIB), (16, _MIB), (16, 16 * _MIB), (16, 64 * _MIB),
        (32, 16 * _MIB))
DIRECT = (16, 16 * _MIB)  # the O_DIRECT read: 16 streams, 16 MiB blocks
FIO = (16, _MIB, 32)  # fio's pattern: 16 jobs (a file each), 1 MiB blocks, 32 in flight per job, io_uring, O_DIRECT
LATER = 2  # after a full grid: its fastest LATER writes and reads run (with fio's and the O_DIRECT read)
FIO_PREFIX = "fio "
_FIO_SET = "fio"


def fio_version() -> str | None:
    """'fio-3.33', or None where fio is not on PATH (or does not answer)."""
    program = shutil.which("fio")
    if program is None:
        return None
    try:
        return subprocess.run([program, "--version"], capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class FioFailed(RuntimeError):
    """fio ran but did not move every byte (io_uring refused in a container, O_DIRECT refused by tmpfs)."""


class DeviceCeilingBackend(FileReference):
    """The model's bytes, back to back, written (each stream its own file, fsync'd) and read cold over `grid` (streams,
    block bytes), the O_DIRECT read `direct`, and fio's pattern (`fio`: jobs, block bytes, queue depth; timed by fio's
    own clock). Each pattern is timed alone; the run's times are the fastest pattern's. Files a later run's reads need
    that its writes did not make are written untimed."""

    def __init__(self, eviction: str = "auto", grid: Sequence[tuple[int, int]] = GRID,
                 direct: tuple[int, int] = DIRECT, fio: tuple[int, int, int] | None = FIO) -> None:
        self._eviction = eviction
        self.grid, self.direct, self.fio = tuple(grid), direct, fio
        self._fio_program = shutil.which("fio") if fio else None  # None: the ceiling runs its own patterns only
        self._layout: list[tuple[str, tuple[int, ...], np.dtype, int]] = []  # name, shape, dtype, offset
        self._total = 0
        self._buffer: np.ndarray | None = None
        self._mapping: mmap.mmap | None = None
        self._seconds: dict[str, float] | None = None
        self._later: tuple[list[str], list[str]] | None = None  # (writes, reads) after a full grid, else None
        self._direct_resident: int | None = None

    @property
    def uses_fio(self) -> bool:
        return self._fio_program is not None

    def before_run(self, earlier: Sequence[RunRecord]) -> None:
        """The full grid until a run of it succeeded; then its LATER fastest write and read patterns only."""
        names = {pattern_name(*p) for p in self.grid}
        full = [r for r in earlier if r.ok and r.patterns and names <= set(r.patterns.get("save", {}))]
        if not full:
            self._later = None
            return
        read = [r for r in full if (r.patterns or {}).get("load")]  # none under tp > 1: its readers time one share each
        writes = best_patterns(full, "save", names, LATER)
        self._later = (writes, best_patterns(read, "load", names, LATER) if read else writes)

    def _patterns(self, op: int) -> list[tuple[int, int]]:
        """The write (`op` 0) or read (1) patterns this run times."""
        return list(self.grid) if self._later is None else [_parse_pattern(n) for n in self._later[op]]

    def _ranges(self, streams: int) -> list[tuple[int, int]]:
        """A set's files: the O_DIRECT read's set starts each file at a multiple of its block (so every read is whole
        aligned blocks), the others at a page."""
        align = self.direct[1] if streams == self.direct[0] else mmap.PAGESIZE
        return _ranges(self._total, streams, align)

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Allocate and touch the read buffer before any clock starts: the ceiling is the device's speed, not the
        kernel's cost of mapping fresh pages (which halved the read speed we saw). An anonymous mapping is page-aligned,
        as O_DIRECT needs."""
        self._note_layout(tensors)
        align = self.direct[1]
        size = -(-max(self._total, 1) // align) * align  # room for O_DIRECT's whole last block
        self._mapping = mmap.mmap(-1, size)
        self._buffer = np.frombuffer(self._mapping, dtype=np.uint8)
        self._buffer[::mmap.PAGESIZE] = 0

    def _note_layout(self, tensors: Mapping[str, np.ndarray]) -> None:
        self._layout, offset = [], 0
        for name, array in tensors.items():
            self._layout.append((name, array.shape, array.dtype, offset))
            offset += array.nbytes
        self._total = offset

    def release(self) -> None:
        # Not closed explicitly: loaded arrays may still view it; it goes with its last reference.
        self._buffer = self._mapping = None

    def pattern_seconds(self) -> dict[str, float] | None:
        return self._seconds

    def bypass_resident_bytes(self, resident_after_load: int) -> int | None:
        """The bytes of the O_DIRECT read's files in the page cache right after that read (None: it could not run); the
        whole folder's figure holds the buffered patterns' pages too."""
        return self._direct_resident

    def _evict(self, folder: Path) -> None:
        """Between patterns: a few large files, so dropping their pages (fadvise) is all a cold read needs; the whole
        page cache (drop_caches) would also throw out every library the process maps."""
        if self._eviction == "none":
            return
        if not cache.fadvise_dontneed(folder) or cache.resident_bytes(folder):
            cache.evict(folder, self._eviction)

    def footprint(self, location: RunLocation | Path) -> tuple[int, int, int]:
        sets = sorted(folder_of(location).glob("*-streams"))  # every set holds one copy of the bytes
        return checkpoint_size(sets[0]) if sets else (0, 0, 0)

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> None:
        directory = folder_of(location)
        self._note_layout(tensors)
        pieces = [a.reshape(-1).view(np.uint8).data for a in tensors.values()]
        self._seconds = {}
        for streams, block in self._patterns(0):
            folder = directory / _set_name(streams)
            if folder.exists():
                shutil.rmtree(folder)  # the same stream count, written again with another block size
            folder.mkdir()
            started = time.perf_counter()
            _write_set(folder, pieces, self._ranges(streams), block)
            self._seconds[pattern_name(streams, block)] = time.perf_counter() - started
        # The files the reads need that no timed write made (untimed: not part of any pattern).
        needed = {s for s, _ in self._patterns(1)} | {self.direct[0]}
        for streams in sorted(needed - {s for s, _ in self._patterns(0)}):
            folder = directory / _set_name(streams)
            folder.mkdir()
            _write_set(folder, pieces, self._ranges(streams), self.direct[1])
        if self.uses_fio:
            folder = directory / _FIO_SET
            folder.mkdir()
            self._time_fio(folder, "write")

    def _time_fio(self, folder: Path, rw: str) -> None:
        """fio's pattern over its set, timed by fio; a failure drops fio for the rest of the suite."""
        assert self.fio is not None and self._fio_program is not None and self._seconds is not None  # uses_fio
        jobs, block, depth = self.fio
        sizes = [-(-(stop - start) // block) * block for start, stop in _ranges(self._total, jobs, block)]
        try:
            seconds = run_fio(self._fio_program, folder, sizes, rw, block, depth)
            if rw == "write":  # the new directory entries, as every other write's
                started = time.perf_counter()
                fsync_path(folder)
                seconds += time.perf_counter() - started
        except (FioFailed, OSError) as exc:
            print(f"device ceiling: fio failed ({exc}); its pattern is left out of this suite's ceiling",
                  file=sys.stderr)
            self._fio_program = None
            return
        self._seconds[fio_pattern_name(self.fio)] = seconds

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        directory = folder_of(location)
        if self._buffer is None:  # loading without `prepare` (a direct call): allocate now
            self.prepare({name: np.empty(shape, dtype) for name, shape, dtype, _ in self._layout})
        assert self._buffer is not None  # prepare made it
        self._seconds, self._direct_resident = {}, None
        for index, (streams, block) in enumerate(self._patterns(1)):
            folder = directory / _set_name(streams)
            if index:  # the runner evicted before the first pattern; each later one starts cold too
                self._evict(folder)
            started = time.perf_counter()
            _read_set(folder, self._buffer, self._ranges(streams), block, direct=False)
            self._seconds[pattern_name(streams, block)] = time.perf_counter() - started
        if self.uses_fio and (directory / _FIO_SET).is_dir():
            self._evict(directory / _FIO_SET)
            self._time_fio(directory / _FIO_SET, "read")
        direct_streams, direct_block = self.direct
        folder = directory / _set_name(direct_streams)
        self._evict(folder)
        started = time.perf_counter()
        try:
            _read_set(folder, self._buffer, self._ranges(direct_streams), direct_block, direct=True)
            self._seconds[DIRECT_PREFIX + pattern_name(direct_streams, direct_block)] = time.perf_counter() - started
            self._direct_resident = cache.resident_bytes(folder)  # after the clock: did O_DIRECT keep out?
        except OSError as exc:  # a filesystem without O_DIRECT (tmpfs): the buffered patterns still stand
            if exc.errno != errno.EINVAL:
                raise
        return {name: self._buffer[offset:offset + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
                for name, shape, dtype, offset in self._layout}

    def load_slices(self, location: RunLocation | Path, boxes: Mapping[str, Box], rank: int, ranks: int
                    ) -> dict[str, np.ndarray]:
        """One of N parallel readers (a tensor-parallel load's ceiling): rank `rank` reads its 1/N of the bytes,
        buffered in 16 MiB blocks, from the set of files every save writes (the O_DIRECT read's). Raw bytes: there is
        nothing to verify by name."""
        folder = folder_of(location) / _set_name(self.direct[0])
        files = sorted(folder.glob("part-*.bin"))
        sizes = [f.stat().st_size for f in files]
        total = sum(sizes)
        start, stop = (total * r // ranks // mmap.PAGESIZE * mmap.PAGESIZE for r in (rank, rank + 1))
        stop = total if rank == ranks - 1 else stop
        buffer = np.empty(stop - start, np.uint8)
        offset = 0
        for path, size in zip(files, sizes):  # the part of [start, stop) each file holds
            lo, hi = max(start, offset), min(stop, offset + size)
            if lo < hi:
                _read_file(path, buffer.data[lo - start:], hi - lo, 16 * _MIB, file_offset=lo - offset)
            offset += size
        return {"share": buffer}


def best_patterns(records: Sequence[RunRecord], op: str, names: set[str], count: int) -> list[str]:
    """The `count` grid patterns (of `names`) of an operation with the lowest mean seconds over the records."""
    seconds: dict[str, list[float]] = {}
    for record in records:
        for name, value in (record.patterns or {})[op].items():
            if name in names:
                seconds.setdefault(name, []).append(value)
    return sorted(seconds, key=lambda n: sum(seconds[n]) / len(seconds[n]))[:count]


def run_fio(program: str, folder: Path, sizes: list[int], rw: str, block: int, depth: int) -> float:
    """fio writes or reads one file per job in `folder` (part-NN.bin, `sizes` bytes each, whole blocks) through io_uring
    with O_DIRECT, `depth` blocks in flight per job; the seconds by fio's own clock, the slowest job's runtime (its jobs
    start together; a write's runtime includes its end_fsync), as fio reports a group's bandwidth: fio's start-up (16
    processes, about 0.7 s on a 2-core VM) is not the device's time. Raises FioFailed unless every byte moved."""
    command = [program, "--output-format=json", "--ioengine=io_uring", "--direct=1", f"--rw={rw}",
               f"--bs={block}", f"--iodepth={depth}", f"--directory={folder}"]
    if rw == "write":
        command.append("--end_fsync=1")  # durable when the clock stops, like the other writes
    for index, size in enumerate(sizes):
        command += [f"--name=part-{index:02d}", f"--filename=part-{index:02d}.bin", f"--size={size}"]
    done = subprocess.run(command, capture_output=True, text=True)
    report_text = done.stdout[done.stdout.find("{"):] if "{" in done.stdout else ""
    if done.returncode != 0 or not report_text:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise FioFailed(f"exit status {done.returncode}: {lines[-1] if lines else 'no output'}")
    jobs = json.loads(report_text)["jobs"]
    moved = sum(int(job[rw]["io_bytes"]) for job in jobs)
    if any(job.get("error") for job in jobs) or moved < sum(sizes):
        raise FioFailed(f"it moved {moved} of {sum(sizes)} bytes")
    return max(int(job["job_runtime"]) for job in jobs) / 1000.0 or 0.001  # milliseconds; a tiny set may take 0


def fio_pattern_name(fio: tuple[int, int, int]) -> str:
    """'fio io_uring 16x1MiB qd32'."""
    jobs, block, depth = fio
    return f"{FIO_PREFIX}io_uring {pattern_name(jobs, block)} qd{depth}"


def _parse_pattern(name: str) -> tuple[int, int]:
    """'4x16MiB' -> (4, 16 MiB): pattern_name's inverse."""
    streams, size = name.split("x", 1)
    unit = 2**20 if size.endswith("MiB") else 2**10
    return int(streams), int(size[:-3]) * unit


def pattern_name(streams: int, block_bytes: int) -> str:
    """'4x16MiB': 4 streams (files) in 16 MiB blocks."""
    return f"{streams}x{block_bytes // 2**10}KiB" if block_bytes % 2**20 else f"{streams}x{block_bytes // 2**20}MiB"


def _set_name(streams: int) -> str:
    return f"{streams}-streams"


def _ranges(total: int, streams: int, align: int) -> list[tuple[int, int]]:
    """Split [0, total) into at most `streams` contiguous ranges (one per file) whose starts are aligned to `align`; a
    set's files depend on its stream count only, so every block size reads the same files."""
    per_stream = math.ceil(total / streams)
    step = max(align, math.ceil(per_stream / align) * align)
    return [(start, min(start + step, total)) for start in range(0, total, step)] or [(0, 0)]


def _segments(pieces: list[memoryview], start: int, stop: int) -> list[memoryview]:
    """The parts of the back-to-back pieces that cover bytes [start, stop)."""
    out, offset = [], 0
    for piece in pieces:
        end = offset + len(piece)
        if end > start and offset < stop:
            out.append(piece[max(start - offset, 0):min(stop - offset, len(piece))])
        offset = end
        if offset >= stop:
            break
    return out


def _write_file(path: Path, pieces: list[memoryview], start: int, stop: int, block: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for offset in range(start, stop, block):
            buffers = _segments(pieces, offset, min(offset + block, stop))
            while buffers:
                written = os.writev(fd, buffers)
                while buffers and written >= len(buffers[0]):
                    written -= len(buffers[0])
                    buffers.pop(0)
                if buffers:
                    buffers[0] = buffers[0][written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_set(folder: Path, pieces: list[memoryview], ranges: list[tuple[int, int]], block: int) -> None:
    with ThreadPoolExecutor(len(ranges)) as pool:
        list(pool.map(lambda i: _write_file(folder / f"part-{i:02d}.bin", pieces, *ranges[i], block),
                      range(len(ranges))))
    fsync_path(folder)


def _read_file(path: Path, into: memoryview, length: int, block: int, direct: bool = False,
               file_offset: int = 0) -> None:
    """Read `length` bytes of a file from `file_offset` into `into`, `block` bytes at a time."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        done = 0
        while done < length:
            # O_DIRECT reads whole aligned blocks (`into` has room for them); the last returns short at the file's end
            got = os.preadv(fd, [into[done:done + (block if direct else min(block, length - done))]],
                            file_offset + done)
            if got == 0:
                raise EOFError(f"{path} ended at byte {file_offset + done} of {file_offset + length}")
            done += got
    finally:
        os.close(fd)


def _read_set(folder: Path, buffer: np.ndarray, ranges: list[tuple[int, int]], block: int, direct: bool) -> None:
    with ThreadPoolExecutor(len(ranges)) as pool:
        list(pool.map(lambda i: _read_file(folder / f"part-{i:02d}.bin", buffer.data[ranges[i][0]:],
                                           ranges[i][1] - ranges[i][0], block, direct), range(len(ranges))))
