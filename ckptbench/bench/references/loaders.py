"""The reference rows users store LLaMA weights with today: safetensors and torch.save.

safetensors' `load_file` maps the file lazily, so its row copies each tensor out of the
mapping inside the timed region (otherwise the load would read nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ckptbench.bench.references.files import FileReference, durable, folder_of, to_numpy, to_torch
from ckptbench.bench.targets import RunLocation


class SafetensorsBackend(FileReference):
    filename = "model.safetensors"

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> None:
        directory = folder_of(location)
        from safetensors.torch import save_file

        save_file({name: to_torch(a) for name, a in tensors.items()}, str(directory / self.filename))
        durable(directory / self.filename)

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        directory = folder_of(location)
        from safetensors.torch import load_file

        mapped = load_file(str(directory / self.filename))
        return {name: to_numpy(t.clone()) for name, t in mapped.items()}


class TorchSaveBackend(FileReference):
    filename = "model.pt"

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> None:
        directory = folder_of(location)
        import torch

        torch.save({name: to_torch(a) for name, a in tensors.items()}, directory / self.filename)
        durable(directory / self.filename)

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        directory = folder_of(location)
        import torch

        state = torch.load(directory / self.filename, map_location="cpu", weights_only=True)
        return {name: to_numpy(t) for name, t in state.items()}
