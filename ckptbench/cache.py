"""Making loads cold: evict a checkpoint's files from the OS page cache, and check it worked.

Two ways, as MLPerf Storage and fio do it:
- ``drop_caches``: `sync`, then write 3 to /proc/sys/vm/drop_caches (needs root).
  Drops every clean page, dentry and inode on the machine.
- ``fadvise``: `posix_fadvise(POSIX_FADV_DONTNEED)` on each file of the checkpoint.
  Works without root, for the files' data pages (directory metadata may stay cached).

Whichever ran, `resident_bytes` asks the kernel (mincore) how much of the checkpoint
is still in memory, so the record says what the load really read from.
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
    """Evict directory's files; returns the method that worked, or None if none did.

    `method` is "auto" (drop_caches where permitted, else fadvise), "drop_caches",
    "fadvise" or "none" (leave the cache alone: the load will be warm).
    """
    if method == "none":
        return None
    if method in ("auto", "drop_caches") and drop_caches():
        return "drop_caches"
    if method in ("auto", "fadvise") and fadvise_dontneed(directory):
        return "fadvise"
    return None


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_PAGE = mmap.PAGESIZE


def resident_bytes(directory: Path) -> int:
    """Bytes of directory's files now in the page cache (by mincore), rounded up to pages."""
    total = 0
    for path in _files(directory):
        size = os.path.getsize(path)
        if size == 0:
            continue
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), size, prot=mmap.PROT_READ) as mapped:
            view = np.frombuffer(mapped, dtype=np.uint8)  # only to learn the mapping's address
            address = view.__array_interface__["data"][0]
            pages = (ctypes.c_ubyte * ((size + _PAGE - 1) // _PAGE))()
            status = _libc.mincore(ctypes.c_void_p(address), size, pages)
            del view  # the mmap cannot close while a view exports its buffer
            if status != 0:
                raise OSError(ctypes.get_errno(), "mincore failed", path)
            total += sum(page & 1 for page in pages) * _PAGE
    return total
