"""What the reference rows that write plain files share: durable writes, their folder, torch's views of arrays.

Each save ends with an fsync of the file and its folder, as TensorStore's file kvstore
does, and each load leaves every byte in memory of its own.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from ckptbench.bench.backend import Backend
from ckptbench.bench.storage import checkpoint_size, poison, preallocated
from ckptbench.bench.targets import RunLocation, as_location

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable(file: Path) -> None:
    fsync_path(file)
    fsync_path(file.parent)  # the new directory entry must survive a crash too


def to_torch(array: np.ndarray):
    """A torch tensor sharing the array's memory (the source file's read-only pages: it is only read)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if array.dtype == BFLOAT16:  # torch cannot take numpy's bfloat16; share the bits instead
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)


def to_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BFLOAT16)
    return tensor.numpy()


def owned_part(tensor, box: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The part of a torch tensor a box selects (sources.source_file.Box), as a contiguous array of its own:
    what a tensor-parallel rank keeps of a tensor it had to read whole."""
    import torch

    part = tensor[tuple(slice(start, stop) for start, stop in box)] if box else tensor
    return to_numpy(part.clone(memory_format=torch.contiguous_format))


def folder_of(location: RunLocation | Path) -> Path:
    folder = as_location(location).local_dir
    if folder is None:
        raise ValueError("reference rows write local files; they cannot run on a remote --storage")
    return folder


class FileReference(Backend):
    """Plain files in the run's folder; loads are cold like TensorStore's.

    `load_into` (set by bench.measure from the test's resolved load_into) is where a load puts what it reads:
    "new", memory it allocates inside the clock; "preallocated", arrays allocated and touched in `before_load`,
    after the save and before the clock, that the load fills (`fill`), as a model's parameters are filled."""

    filename = "checkpoint"
    # What the row's save and load import, imported in `prepare` (and by each tp reader before the common start),
    # before any clock: the first import of torch costs a second, which would land in the row's first save.
    libraries: tuple[str, ...] = ()
    load_into = "new"
    _into: dict[str, np.ndarray] | None = None

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        for module in self.libraries:
            importlib.import_module(module)

    def before_load(self, tensors: Mapping[str, np.ndarray]) -> None:
        if self.load_into == "preallocated" and self._into is None:
            self._into = preallocated(tensors)  # a model's parameters: allocated and touched before the clock

    def destination(self) -> dict[str, Any] | None:
        """The preallocated arrays as torch tensors sharing their memory (the load copies into them), or None
        under "new"."""
        if self.load_into != "preallocated":
            return None
        if self._into is None:
            raise ValueError(f"{type(self).__name__}: load_into \"preallocated\" loads into arrays allocated in "
                             "before_load(), before the clock; call before_load(tensors) first")
        return {name: to_torch(array) for name, array in self._into.items()}

    def filled(self) -> dict[str, np.ndarray]:
        """What a load into the preallocated arrays gives: the very arrays allocated before the clock."""
        return dict(self._into or {})

    def verify(self, tensors: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray]) -> list[str]:
        bad = super().verify(tensors, loaded)
        if self._into is not None:  # a second load into the same arrays (warm, then cold) must fill them again
            poison(self._into)
        return bad

    def release(self) -> None:
        self._into = None

    def footprint(self, location: RunLocation | Path) -> tuple[int, int, int]:
        return checkpoint_size(folder_of(location))
