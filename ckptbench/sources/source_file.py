"""The weights as one file on disk, mapped read-only: what every save reads and every load is checked against.

Why a file: a suite holds the source weights and, during each load, the loaded copy. In anonymous memory the two need
twice the model, so a 24 GB machine could measure no checkpoint over about 10 GB. Written once to a file and mapped, the
source is clean page cache the kernel may drop while a load fills memory, and `make_resident` reads it back before the
next save's clock starts. Worker processes and the ranks of a host map the same file.

A load is checked against digests computed when the file was written, so verifying never reads the source: a 128-bit
xxh3 digest per tensor (PHASE4_GUIDE.md, section 9, says why a non-cryptographic hash is enough).

Layout: `source.bin` holds the tensors back to back, each starting at a multiple of 4096 bytes; `source.json` holds each
tensor's name, shape, dtype, offset, size and digest.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import xxhash

from ckptbench.spec.presets import NUMPY_DTYPES, dtype_name

DATA_FILE = "source.bin"
INDEX_FILE = "source.json"
ALIGN = 4096
_MADV_POPULATE_READ = 22  # Linux 5.14: map every page now (Python 3.11's mmap has no name for it)
# A part of a tensor: [start, stop) along each of its first dimensions; () is the whole tensor.
Box = tuple[tuple[int, int], ...]


def digest(array: np.ndarray) -> str:
    """xxh3-128 of an array's bytes in C order, as hex."""
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return xxhash.xxh3_128_hexdigest(data.data)


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32", "bfloat16", "float16"
    offset: int
    nbytes: int
    digest: str


class SourceTensors(dict):
    """Tensors by name (read-only views of a source file, or arrays in memory) that know their digests:
    verification compares a loaded tensor's digest with `digest_of(name)`, and never reads the source when
    the digest was computed as the file was written."""

    def __init__(self, tensors: Mapping[str, np.ndarray], digests: Mapping[str, str] | None = None,
                 mapping: mmap.mmap | None = None, folder: Path | None = None) -> None:
        super().__init__(tensors)
        self._digests: dict[tuple[str, Box], str] = {(name, ()): value for name, value in (digests or {}).items()}
        self._mapping = mapping
        self.folder = folder  # the source file's folder (other processes map it), None for arrays in memory

    def digest_of(self, name: str, box: Box = ()) -> str:
        """The digest of a tensor, or of the part `box` selects (computed once, then kept: a writer verifies
        the same slices in every run)."""
        key = (name, box)
        if key not in self._digests:
            self._digests[key] = digest(select(self[name], box))
        return self._digests[key]

    def make_resident(self) -> None:
        """Read the whole file into the page cache and map every page, before a clock starts: a save then reads
        its source from memory, as it would from a trainer's weights, with no page fault inside the timing.
        Tensors in memory are resident already."""
        if self._mapping is None:
            return
        try:
            self._mapping.madvise(_MADV_POPULATE_READ)
        except (OSError, ValueError):  # an older kernel: touch one byte of every page instead
            view = np.frombuffer(self._mapping, dtype=np.uint8)
            int(view[::mmap.PAGESIZE].sum())


def expected_digest(tensors: Mapping[str, np.ndarray], name: str, box: Box = ()) -> str:
    """The digest a loaded `name` (or its part `box`) must have: the source's recorded one, else computed."""
    if isinstance(tensors, SourceTensors):
        return tensors.digest_of(name, box)
    return digest(select(tensors[name], box))


def select(array: Any, box: Box) -> Any:
    """The part of an array (numpy, torch) or a TensorStore a box selects: [start, stop) along each of its first
    dimensions (() is all)."""
    return array[tuple(slice(start, stop) for start, stop in box)] if box else array


class SourceFile:
    """A source file written by `write`, mapped read-only."""

    def __init__(self, folder: Path, entries: list[Entry]) -> None:
        self.folder = Path(folder)
        self._mapping: mmap.mmap | None = None
        if max((e.offset + e.nbytes for e in entries), default=0):  # mmap maps no empty file
            with open(self.folder / DATA_FILE, "rb") as handle:
                self._mapping = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
        buffer = np.frombuffer(self._mapping, dtype=np.uint8) if self._mapping is not None else np.empty(0, np.uint8)
        self.tensors = SourceTensors(
            {e.name: buffer[e.offset:e.offset + e.nbytes].view(NUMPY_DTYPES[e.dtype]).reshape(e.shape)
             for e in entries},
            {e.name: e.digest for e in entries}, self._mapping, self.folder)

    @classmethod
    def write(cls, folder: Path, tensors: Iterable[tuple[str, np.ndarray]]) -> SourceFile:
        """Write the tensors (made one at a time by the iterable) into folder, fsync'd, and map the file."""
        folder = Path(folder)
        entries: list[Entry] = []
        offset = 0
        with open(folder / DATA_FILE, "wb") as handle:
            for name, array in tensors:
                array = np.ascontiguousarray(array)
                data = array.reshape(-1).view(np.uint8).data
                handle.seek(offset)
                handle.write(data)  # a buffered file writes it all, large as it may be
                entries.append(Entry(name, tuple(int(d) for d in array.shape), dtype_name(array.dtype), offset,
                                     array.nbytes, xxhash.xxh3_128_hexdigest(data)))
                offset = -(-(offset + array.nbytes) // ALIGN) * ALIGN
                del array, data
            handle.truncate(offset)  # flushes first
            os.fsync(handle.fileno())
        (folder / INDEX_FILE).write_text(json.dumps({"tensors": [asdict(e) for e in entries]}, indent=1))
        return cls(folder, entries)

    @classmethod
    def open(cls, folder: Path) -> SourceFile:
        """Map a source file another process wrote (a worker, or a rank of the same host)."""
        index = json.loads((Path(folder) / INDEX_FILE).read_text())["tensors"]
        return cls(folder, [Entry(**{**e, "shape": tuple(e["shape"])}) for e in index])

