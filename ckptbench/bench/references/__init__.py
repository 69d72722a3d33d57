"""The reference rows: what users store checkpoints with instead (loaders), and the device's ceiling.

`BACKENDS` maps each kind of spec.references.REFERENCES to the back end that measures it.
"""

from __future__ import annotations

from typing import Callable

from ckptbench.bench.backend import Backend
from ckptbench.bench.references.ceiling import DIRECT_PREFIX, DeviceCeilingBackend, pattern_name
from ckptbench.bench.references.loaders import SafetensorsBackend, TorchSaveBackend

BACKENDS: dict[str, Callable[..., Backend]] = {
    "safetensors": SafetensorsBackend,
    "torch_save": TorchSaveBackend,
    "device_ceiling": DeviceCeilingBackend,
}
__all__ = ["BACKENDS", "DIRECT_PREFIX", "DeviceCeilingBackend", "SafetensorsBackend", "TorchSaveBackend",
           "pattern_name"]
