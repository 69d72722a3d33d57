"""The device's own ceiling: the model's bytes written and read cold in raw files, over a grid of access patterns.

What the disk itself can do, so every test can be reported as a fraction of it: 1, 4 and
16 parallel streams over as many files, in 1 MiB and 16 MiB blocks, like fio jobs, plus an
O_DIRECT read that no page cache can serve. The full grid runs in the suite's first ceiling
run; later runs repeat only the fastest write, the fastest read and the O_DIRECT read
(`before_run`), so the ceiling costs what its answer needs.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import shutil
import time
from collections import Counter
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

# dd's bs=1M and fio's large sequential blocks. One 64 MiB read stream ran at a sixth of
# the speed of 1-8 MiB reads on the machines we measured, so no single block size is "the"
# device's speed: the grid finds the best one.
_IO_BLOCK_BYTES = 2**20
_BIG_BLOCK_BYTES = 16 * 2**20


class DeviceCeilingBackend(FileReference):
    """The model's bytes, back to back, written and read in raw files over a grid of access patterns.

    Writes: 1, 4 and 16 parallel streams, each writing its own file, in 1 MiB and 16 MiB
    blocks, every file fsync'd. Reads, cold: the same grid, each pattern after an
    eviction, plus an O_DIRECT read (16 streams, 16 MiB blocks) that no page cache can
    serve. Each pattern is timed alone; the run's save and load times are the fastest
    pattern's, and every pattern that ran has its time in the record. After a run with the
    full grid, only the fastest write and read patterns and the O_DIRECT read run (the
    files their reads need are written untimed).
    """

    def __init__(self, eviction: str = "auto", streams: tuple[int, ...] = (1, 4, 16),
                 blocks: tuple[int, ...] = (_IO_BLOCK_BYTES, _BIG_BLOCK_BYTES)) -> None:
        self._eviction = eviction
        self.streams, self.blocks = streams, blocks
        self._align = max(blocks)  # every file starts at a multiple of the largest block
        self._layout: list[tuple[str, tuple[int, ...], np.dtype, int]] = []  # name, shape, dtype, offset
        self._total = 0
        self._buffer: np.ndarray | None = None
        self._mapping: mmap.mmap | None = None
        self._seconds: dict[str, float] | None = None
        self._only: tuple[str, str] | None = None  # (write, read) patterns after a full grid, else None

    def before_run(self, earlier: Sequence[RunRecord]) -> None:
        """The full grid until a run of it succeeded; then its fastest write and read patterns only."""
        full = [r for r in earlier if r.ok and r.patterns and len(r.patterns.get("save", {})) > 1]
        if not full:
            self._only = None
            return
        read = [r for r in full if r.patterns.get("load")]  # none under tp > 1: its readers time one share each
        write = fastest(full, "save")
        self._only = (write, fastest(read, "load") if read else write)

    def _write_patterns(self) -> list[tuple[int, int]]:
        if self._only is None:
            return [(s, b) for s in self.streams for b in self.blocks]
        return [_parse_pattern(self._only[0])]

    def _read_patterns(self) -> list[tuple[int, int]]:
        if self._only is None:
            return [(s, b) for s in self.streams for b in self.blocks]
        return [_parse_pattern(self._only[1])]

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Allocate and touch the read buffer before any clock starts: the ceiling is the device's
        speed, not the kernel's cost of mapping fresh pages (which halved the read speed we saw).
        An anonymous mapping is page-aligned, as O_DIRECT needs."""
        self._note_layout(tensors)
        size = -(-max(self._total, 1) // self._align) * self._align  # room for O_DIRECT's whole last block
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

    def _evict(self, folder: Path) -> None:
        """Between patterns: a few large files, so dropping their pages (fadvise) is all a cold read needs;
        the whole page cache (drop_caches) would also throw out every library the process maps."""
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
        pieces = [memoryview(a.reshape(-1).view(np.uint8)) for a in tensors.values()]
        self._seconds = {}
        for streams, block in self._write_patterns():
            folder = directory / _set_name(streams)
            if folder.exists():
                shutil.rmtree(folder)  # the same stream count, written again with the other block size
            folder.mkdir()
            started = time.perf_counter()
            _write_set(folder, pieces, _ranges(self._total, streams, self._align), block)
            self._seconds[pattern_name(streams, block)] = time.perf_counter() - started
        # The files the reads need that no timed write made (untimed: not part of any pattern).
        needed = {s for s, _ in self._read_patterns()} | {max(self.streams)}
        for streams in sorted(needed - {s for s, _ in self._write_patterns()}):
            folder = directory / _set_name(streams)
            folder.mkdir()
            _write_set(folder, pieces, _ranges(self._total, streams, self._align), max(self.blocks))

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        directory = folder_of(location)
        if self._buffer is None:  # loading without `prepare` (a direct call): allocate now
            self.prepare({name: np.empty(shape, dtype) for name, shape, dtype, _ in self._layout})
        self._seconds = {}
        for index, (streams, block) in enumerate(self._read_patterns()):
            folder = directory / _set_name(streams)
            if index:  # the runner evicted before the first pattern; each later one starts cold too
                self._evict(folder)
            started = time.perf_counter()
            _read_set(folder, self._buffer, _ranges(self._total, streams, self._align), block, direct=False)
            self._seconds[pattern_name(streams, block)] = time.perf_counter() - started
        direct_streams, direct_block = max(self.streams), max(self.blocks)
        folder = directory / _set_name(direct_streams)
        self._evict(folder)
        started = time.perf_counter()
        try:
            _read_set(folder, self._buffer, _ranges(self._total, direct_streams, self._align), direct_block,
                      direct=True)
            self._seconds[DIRECT_PREFIX + pattern_name(direct_streams, direct_block)] = time.perf_counter() - started
        except OSError as exc:  # a filesystem without O_DIRECT (tmpfs): the buffered patterns still stand
            if exc.errno != errno.EINVAL:
                raise
        return {name: self._buffer[offset:offset + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
                for name, shape, dtype, offset in self._layout}


    def load_slices(self, location: RunLocation | Path, boxes: Mapping[str, Box], rank: int, ranks: int
                    ) -> dict[str, np.ndarray]:
        """One of N parallel readers (a tensor-parallel load's ceiling): rank `rank` reads its 1/N of the bytes,
        buffered in 16 MiB blocks, from the set of files every save writes (the most streams'). Raw bytes: there
        is nothing to verify by name."""
        folder = folder_of(location) / _set_name(max(self.streams))
        files = sorted(folder.glob("part-*.bin"))
        sizes = [f.stat().st_size for f in files]
        total = sum(sizes)
        start, stop = (_aligned(total * r // ranks, mmap.PAGESIZE) for r in (rank, rank + 1))
        stop = total if rank == ranks - 1 else stop
        buffer = np.empty(stop - start, np.uint8)
        offset = 0
        for path, size in zip(files, sizes):  # the part of [start, stop) each file holds
            lo, hi = max(start, offset), min(stop, offset + size)
            if lo < hi:
                _read_range(path, memoryview(buffer)[lo - start:hi - start], lo - offset, _BIG_BLOCK_BYTES)
            offset += size
        return {"share": buffer}


def _aligned(value: int, align: int) -> int:
    return value // align * align


def fastest(records: Sequence[RunRecord], op: str) -> str:
    """The buffered pattern of an operation that was fastest in most of the records (ties: the lower mean)."""
    times = [{n: s for n, s in r.patterns[op].items() if not n.startswith(DIRECT_PREFIX)} for r in records]
    wins = Counter(min(t, key=t.get) for t in times if t)
    return min(wins, key=lambda n: (-wins[n], sum(t.get(n, 0.0) for t in times)))


def _parse_pattern(name: str) -> tuple[int, int]:
    """'4x16MiB' -> (4, 16 MiB): pattern_name's inverse."""
    streams, size = name.split("x", 1)
    unit = 2**20 if size.endswith("MiB") else 2**10
    return int(streams), int(size[:-3]) * unit


DIRECT_PREFIX = "direct "


def pattern_name(streams: int, block_bytes: int) -> str:
    """'4x16MiB': 4 streams (files) in 16 MiB blocks."""
    if block_bytes % 2**20:
        return f"{streams}x{block_bytes // 2**10}KiB"
    return f"{streams}x{block_bytes // 2**20}MiB"


def _set_name(streams: int) -> str:
    return f"{streams}-streams"


def _ranges(total: int, streams: int, align: int) -> list[tuple[int, int]]:
    """Split [0, total) into at most `streams` contiguous ranges (one per file) whose starts are
    aligned to `align` (the largest block), so that every block size reads the same files."""
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


def _read_file(path: Path, buffer: np.ndarray, start: int, stop: int, block: int, direct: bool) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    view = memoryview(buffer)
    try:
        position = start
        while position < stop:
            # O_DIRECT reads whole aligned blocks; the last one returns short at the end of the file
            length = block if direct else min(block, stop - position)
            got = os.preadv(fd, [view[position:position + length]], position - start)
            if got == 0:
                raise EOFError(f"{path} ended at byte {position - start} of {stop - start}")
            position += got
    finally:
        os.close(fd)


def _read_range(path: Path, into: memoryview, file_offset: int, block: int) -> None:
    """Read len(into) bytes of a file from `file_offset`, buffered, `block` bytes at a time."""
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(into):
            got = os.preadv(fd, [into[done:done + block]], file_offset + done)
            if got == 0:
                raise EOFError(f"{path} ended at byte {file_offset + done}")
            done += got
    finally:
        os.close(fd)


def _read_set(folder: Path, buffer: np.ndarray, ranges: list[tuple[int, int]], block: int, direct: bool) -> None:
    with ThreadPoolExecutor(len(ranges)) as pool:
        list(pool.map(lambda i: _read_file(folder / f"part-{i:02d}.bin", buffer, *ranges[i], block, direct),
                      range(len(ranges))))
