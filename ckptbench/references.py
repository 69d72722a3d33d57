"""Reference rows, measured with the same protocol as the TensorStore tests.

- `safetensors`: what most users store LLaMA weights in today.
- `torch_save`: the PyTorch default.
- `device_ceiling`: the same bytes written as one sequential file and read back
  cold, like `dd conv=fsync` and a cold `dd` read: what the disk itself can do,
  so every test can be reported as a fraction of it.

Each save ends with an fsync of the file and its folder, as TensorStore's file
kvstore does, and each load leaves every byte in private memory: safetensors'
`load_file` maps the file lazily, so its reference copies each tensor out of the
mapping inside the timed region (otherwise the load would read nothing).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import ml_dtypes
import numpy as np

from .storage import checkpoint_size
from .targets import RunLocation, as_location

_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_IO_BLOCK_BYTES = 64 * 2**20


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
        buffer = np.empty(total, dtype=np.uint8)
        with open(directory / self.filename, "rb", buffering=0) as handle:
            view, filled = memoryview(buffer), 0
            while filled < total:
                got = handle.readinto(view[filled:filled + _IO_BLOCK_BYTES])
                if not got:
                    raise EOFError(f"{self.filename} ended after {filled} of {total} bytes")
                filled += got
        out, offset = {}, 0
        for name, shape, dtype in self._layout:
            nbytes = int(np.prod(shape)) * dtype.itemsize
            out[name] = buffer[offset:offset + nbytes].view(dtype).reshape(shape)
            offset += nbytes
        return out


BACKENDS: dict[str, Callable[[], object]] = {
    "safetensors": SafetensorsBackend,
    "torch_save": TorchSaveBackend,
    "device_ceiling": DeviceCeilingBackend,
}
