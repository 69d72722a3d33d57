"""The reference rows users store LLaMA weights with today: safetensors and torch.save.

safetensors' `safe_open` maps the file lazily, so its row copies each tensor out of the
mapping inside the timed region (otherwise the load would read nothing): into a clone of
its own under load_into "new", into the tensor's preallocated array under "preallocated".
torch.load reads the whole file into tensors of its own ("new"); under "preallocated" it
maps the file (`mmap=True`) and each tensor is copied into its array, as
`model.load_state_dict(torch.load(path, mmap=True))` fills a model's parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ckptbench.bench.references.files import FileReference, durable, folder_of, owned_part, to_numpy, to_torch
from ckptbench.bench.targets import RunLocation
from ckptbench.sources.source_file import Box


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

        into = self.destination()
        with safe_open(str(folder_of(location) / self.filename), framework="pt") as opened:
            if into is None:
                return {name: to_numpy(opened.get_tensor(name).clone()) for name in opened.keys()}
            for name in opened.keys():
                into[name].copy_(opened.get_tensor(name))
        return self.filled()

    def load_slices(self, location: RunLocation | Path, boxes: Mapping[str, Box], rank: int, ranks: int
                    ) -> dict[str, np.ndarray]:
        """A rank's slices as vLLM reads a shard: safe_open, then get_slice(name)[its slice] (only those bytes
        are copied out of the file's map)."""
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
        directory = folder_of(location)
        import torch

        into = self.destination()
        state = torch.load(directory / self.filename, map_location="cpu", weights_only=True, mmap=into is not None)
        if into is None:
            return {name: to_numpy(t) for name, t in state.items()}
        for name, tensor in state.items():
            into[name].copy_(tensor)
        return self.filled()

    def load_slices(self, location: RunLocation | Path, boxes: Mapping[str, Box], rank: int, ranks: int
                    ) -> dict[str, np.ndarray]:
        """torch.load has no slice request: every rank reads the whole file (mmap off), then copies its slice out."""
        import torch

        state = torch.load(folder_of(location) / self.filename, map_location="cpu", weights_only=True)
        return {name: owned_part(state[name], box) for name, box in boxes.items()}
