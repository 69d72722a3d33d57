"""The reference rows that write plain files: what they share (durable writes, their folder, torch's views of arrays),
and the two users store LLaMA weights with today, safetensors and torch.save.

Each save ends with an fsync of the file and its folder, as TensorStore's file kvstore does, and each load leaves every
byte in memory of its own.

safetensors' `safe_open` maps the file lazily, so its row copies each tensor out of the mapping inside the timed region
(otherwise the load would read nothing); under load_into "preallocated" torch.load maps the file (`mmap=True`) and each
tensor is copied into its array, as `model.load_state_dict(torch.load(path, mmap=True))` fills a model's parameters.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import ml_dtypes
import numpy as np

from ckptbench.bench.backend import Backend
from ckptbench.bench.storage import checkpoint_size, poison, preallocated
from ckptbench.bench.targets import RunLocation, as_location
from ckptbench.core.system import fsync_path
from ckptbench.sources.source_file import Box, select

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


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

    return tensor.view(torch.int16).numpy().view(BFLOAT16) if tensor.dtype == torch.bfloat16 else tensor.numpy()


def owned_part(tensor, box: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The part of a torch tensor a box selects (sources.source_file.Box), as a contiguous array of its own: what a
    tensor-parallel rank keeps of a tensor it had to read whole."""
    import torch

    return to_numpy(select(tensor, box).clone(memory_format=torch.contiguous_format))


def folder_of(location: RunLocation | Path) -> Path:
    folder = as_location(location).local_dir
    if folder is None:
        raise ValueError("reference rows write local files; they cannot run on a remote --storage")
    return folder


class FileReference(Backend):
    """Plain files in the run's folder; loads are cold like TensorStore's. `load_into` (set by bench.measure from the
    test's resolved load_into) is where a load puts what it reads: "new", memory it allocates inside the clock;
    "preallocated", arrays allocated and touched in `before_load`, after the save and before the clock, that the load
    fills (`fill`), as a model's parameters are filled."""

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
        """The preallocated arrays as torch tensors sharing their memory (loads copy into them); None under "new"."""
        if self.load_into != "preallocated":
            return None
        if self._into is None:
            raise ValueError(f"{type(self).__name__}: load_into \"preallocated\" loads into arrays allocated in "
                             "before_load(), before the clock; call before_load(tensors) first")
        return {name: to_torch(array) for name, array in self._into.items()}

    def filled(self) -> dict[str, np.ndarray]:
        """What a load into the preallocated arrays gives: the very arrays allocated before the clock."""
        return dict(self._into or {})

    def kept(self, read: Iterable[tuple[str, Any]], clone: bool = False) -> dict[str, np.ndarray]:
        """What a load gives of the torch tensors it reads: under "new", arrays of their own (`clone`: copied, where
        the reader's memory is not the load's to keep); under "preallocated", each copied into its array."""
        into = self.destination()
        if into is None:
            return {name: to_numpy(tensor.clone() if clone else tensor) for name, tensor in read}
        for name, tensor in read:
            into[name].copy_(tensor)
        return self.filled()

    def verify(self, tensors: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray]) -> list[str]:
        bad = super().verify(tensors, loaded)
        if self._into is not None:  # a second load into the same arrays (warm, then cold) must fill them again
            poison(self._into)
        return bad

    def release(self) -> None:
        self._into = None

    def footprint(self, location: RunLocation | Path) -> tuple[int, int, int]:
        return checkpoint_size(folder_of(location))


class SafetensorsBackend(FileReference):
    filename = "model.safetensors"
    libraries: tuple[str, ...] = ("safetensors.torch",)

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> None:
        directory = folder_of(location)
        from safetensors.torch import save_file

        save_file({name: to_torch(a) for name, a in tensors.items()}, str(directory / self.filename))
        durable(directory / self.filename)

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        from safetensors import safe_open

        with safe_open(str(folder_of(location) / self.filename), framework="pt") as opened:
            return self.kept(((name, opened.get_tensor(name)) for name in opened.keys()), clone=True)

    def load_slices(self, location: RunLocation | Path, boxes: Mapping[str, Box], rank: int, ranks: int
                    ) -> dict[str, np.ndarray]:
        """A rank's slices as vLLM reads a shard: safe_open, then get_slice(name)[its slice] (only those bytes are
        copied out of the file's map)."""
        from safetensors import safe_open

        with safe_open(str(folder_of(location) / self.filename), framework="pt") as opened:
            return {name: to_numpy(opened.get_slice(name)[tuple(slice(a, b) for a, b in box)] if box
                                   else opened.get_tensor(name)) for name, box in boxes.items()}


class TorchSaveBackend(FileReference):
    filename = "model.pt"
    libraries = ("torch", "torch.utils.serialization")  # torch.load imports the latter on first use

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> None:
        directory = folder_of(location)
        import torch

        torch.save({name: to_torch(a) for name, a in tensors.items()}, directory / self.filename)
        durable(directory / self.filename)

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        import torch

        return self.kept(torch.load(folder_of(location) / self.filename, map_location="cpu", weights_only=True,
                                    mmap=self.load_into == "preallocated").items())

    def load_slices(self, location: RunLocation | Path, boxes: Mapping[str, Box], rank: int, ranks: int
                    ) -> dict[str, np.ndarray]:
        """torch.load has no slice request: every rank reads the whole file (mmap off), then copies its slice out."""
        import torch

        state = torch.load(folder_of(location) / self.filename, map_location="cpu", weights_only=True)
        return {name: owned_part(state[name], box) for name, box in boxes.items()}
