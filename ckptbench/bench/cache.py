"""Making loads cold: evict a checkpoint's files from the OS page cache, and check it worked.

Two ways, as MLPerf Storage and fio do it: ``drop_caches`` (needs root; drops every clean page, dentry and inode on the
machine) and ``fadvise`` (each file's data pages, without root; directory metadata may stay cached). Whichever ran,
`resident_bytes` asks the kernel (mincore) how much of the checkpoint is still in memory, so the record says what the
load really read from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

import numpy as np

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def _files(directory: Path) -> list[str]:
    return [os.path.join(root, name) for root, _dirs, names in os.walk(directory) for name in names]


def drop_caches() -> bool:
    """sync + drop the whole page cache; False where not permitted."""
    os.sync()
    try:
        with open(DROP_CACHES, "w") as handle:
            handle.write("3\n")
    except OSError:
        return False
    return True


def fadvise_dontneed(directory: Path) -> bool:
    """Ask the kernel to drop each file's cached pages; False if any file refused."""
    if not hasattr(os, "posix_fadvise"):
        return False
    ok = True
    for path in _files(directory):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            ok = False
            continue
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped; TensorStore already synced, so this is cheap
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            ok = False
        finally:
            os.close(fd)
    return ok


def evict(directory: Path, method: str = "auto") -> str | None:
    """Evict directory's files; returns the method that worked, or None if none did. `method` is "auto" (drop_caches
    where permitted, else fadvise), "drop_caches", "fadvise" or "none" (leave the cache alone: the load will be
    warm)."""
    if method == "none":
        return None
    if method in ("auto", "drop_caches") and drop_caches():
        return "drop_caches"
    if method in ("auto", "fadvise") and fadvise_dontneed(directory):
        return "fadvise"
    return None


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_PAGE = mmap.PAGESIZE
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_bytes(directory: Path) -> int:
    """Bytes of directory's files now in the page cache (by mincore), rounded up to pages. Straight libc calls on a
    descriptor, no Python mmap object per file: a checkpoint of 10,000 chunk files is checked in a fraction of a
    second."""
    total = 0
    vector = np.empty(0, dtype=np.uint8)
    for path in _files(directory):
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                continue
            n_pages = (size + _PAGE - 1) // _PAGE
            if vector.size < n_pages:
                vector = np.empty(n_pages, dtype=np.uint8)
            address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if address in (None, _MAP_FAILED):
                raise OSError(ctypes.get_errno(), "mmap failed", path)
            try:
                if _libc.mincore(address, size, vector.ctypes.data) != 0:
                    raise OSError(ctypes.get_errno(), "mincore failed", path)
            finally:
                _libc.munmap(address, size)
            total += int(np.count_nonzero(vector[:n_pages] & 1)) * _PAGE
        finally:
            os.close(fd)
    return total
