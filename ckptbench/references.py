"""Reference rows, measured with the same protocol as the TensorStore tests.

- `safetensors`: what most users store LLaMA weights in today.
- `torch_save`: the PyTorch default.
- `device_ceiling`: the same bytes written as one sequential file (1 MiB writes,
  then fsync, like `dd bs=1M conv=fsync`) and read back cold by 8 threads in 1 MiB
  blocks (like fio with a queue depth of 8): what the disk itself can do, so every
  test can be reported as a fraction of it.

Each save ends with an fsync of the file and its folder, as TensorStore's file
kvstore does, and each load leaves every byte in private memory: safetensors'
`load_file` maps the file lazily, so its reference copies each tensor out of the
mapping inside the timed region (otherwise the load would read nothing).
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping

import ml_dtypes
import numpy as np

from .storage import checkpoint_size
from .targets import RunLocation, as_location

_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
# dd's bs=1M: on the machines we measured, single 64 MiB reads ran at a sixth of the
# speed of 1-8 MiB reads (the kernel's readahead keeps up only with the smaller ones).
_IO_BLOCK_BYTES = 2**20
_READ_STREAMS = 8


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable(file: Path) -> None:
    _fsync_path(file)
    _fsync_path(file.parent)  # the new directory entry must survive a crash too


def _to_torch(array: np.ndarray):
    import torch

    if array.dtype == _BFLOAT16:  # torch cannot take numpy's bfloat16; share the bits instead
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _to_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(_BFLOAT16)
    return tensor.numpy()


def _folder(location: RunLocation | Path) -> Path:
    folder = as_location(location).local_dir
    if folder is None:
        raise ValueError("reference rows write local files; they cannot run on a remote --storage")
    return folder


class _FileReference:
    """One file per checkpoint; loads are cold like TensorStore's."""

    in_memory = False
    filename = "checkpoint"

    def footprint(self, location: RunLocation | Path) -> tuple[int, int, int]:
        return checkpoint_size(_folder(location))

    def release(self) -> None:
        pass


class SafetensorsBackend(_FileReference):
    filename = "model.safetensors"

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> None:
        directory = _folder(location)
        from safetensors.torch import save_file

        save_file({name: _to_torch(a) for name, a in tensors.items()}, str(directory / self.filename))
        _durable(directory / self.filename)

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        directory = _folder(location)
        from safetensors.torch import load_file

        mapped = load_file(str(directory / self.filename))
        return {name: _to_numpy(t.clone()) for name, t in mapped.items()}


class TorchSaveBackend(_FileReference):
    filename = "model.pt"

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> None:
        directory = _folder(location)
        import torch

        torch.save({name: _to_torch(a) for name, a in tensors.items()}, directory / self.filename)
        _durable(directory / self.filename)

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        directory = _folder(location)
        import torch

        state = torch.load(directory / self.filename, map_location="cpu", weights_only=True)
        return {name: _to_numpy(t) for name, t in state.items()}


class DeviceCeilingBackend(_FileReference):
    """All tensor bytes back to back in one file, written and read in large sequential blocks."""

    filename = "sequential.bin"

    def __init__(self) -> None:
        self._layout: list[tuple[str, tuple[int, ...], np.dtype]] = []
        self._buffer: np.ndarray | None = None

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Allocate and touch the read buffer before any clock starts: the ceiling is the device's
        speed, not the kernel's cost of mapping fresh pages (which halved the read speed we saw)."""
        self._buffer = np.empty(sum(a.nbytes for a in tensors.values()), dtype=np.uint8)
        self._buffer[::mmap.PAGESIZE] = 0

    def release(self) -> None:
        self._buffer = None

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> None:
        directory = _folder(location)
        self._layout = [(name, a.shape, a.dtype) for name, a in tensors.items()]
        fd = os.open(directory / self.filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for array in tensors.values():
                view = memoryview(array.reshape(-1).view(np.uint8))
                while view:
                    view = view[os.write(fd, view[:_IO_BLOCK_BYTES]):]
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_path(directory)

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        directory = _folder(location)
        total = sum(int(np.prod(shape)) * dtype.itemsize for _, shape, dtype in self._layout)
        buffer = self._buffer if self._buffer is not None and self._buffer.size == total else np.empty(total, np.uint8)
        fd = os.open(directory / self.filename, os.O_RDONLY)
        try:
            # Several streams, like fio with iodepth > 1: one sequential stream leaves a
            # virtual or NVMe disk idle between requests and is no ceiling at all.
            step = -(-total // _READ_STREAMS)
            with ThreadPoolExecutor(_READ_STREAMS) as pool:
                list(pool.map(lambda start: _pread_range(fd, buffer, start, min(start + step, total)),
                              range(0, total, step)))
        finally:
            os.close(fd)
        out, offset = {}, 0
        for name, shape, dtype in self._layout:
            nbytes = int(np.prod(shape)) * dtype.itemsize
            out[name] = buffer[offset:offset + nbytes].view(dtype).reshape(shape)
            offset += nbytes
        return out


def _pread_range(fd: int, buffer: np.ndarray, start: int, stop: int) -> None:
    view = memoryview(buffer)
    while start < stop:
        got = os.preadv(fd, [view[start:min(start + _IO_BLOCK_BYTES, stop)]], start)
        if got == 0:
            raise EOFError(f"the file ended at byte {start} of {stop}")
        start += got


BACKENDS: dict[str, Callable[[], object]] = {
    "safetensors": SafetensorsBackend,
    "torch_save": TorchSaveBackend,
    "device_ceiling": DeviceCeilingBackend,
}
