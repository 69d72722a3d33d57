"""The reference rows: what users store checkpoints with instead (loaders, peers), and the device's ceiling.

`BACKENDS` maps each kind of spec.references.REFERENCES to the back end that measures it; a row's settings
(its `references` entry, defaults filled) are the back end's keyword arguments.
"""

from __future__ import annotations

from typing import Callable

from ckptbench.bench.references.ceiling import DIRECT_PREFIX, DeviceCeilingBackend, pattern_name
from ckptbench.bench.references.files import FileReference
from ckptbench.bench.references.loaders import SafetensorsBackend, TorchSaveBackend
from ckptbench.bench.references.peers import FastSafetensorsBackend, RunaiStreamerBackend, TorchDCPBackend

BACKENDS: dict[str, Callable[..., FileReference]] = {
    "safetensors": SafetensorsBackend,
    "torch_save": TorchSaveBackend,
    "runai_streamer": RunaiStreamerBackend,
    "fastsafetensors": FastSafetensorsBackend,
    "torch_dcp": TorchDCPBackend,
    "device_ceiling": DeviceCeilingBackend,
}
__all__ = ["BACKENDS", "DIRECT_PREFIX", "DeviceCeilingBackend", "FastSafetensorsBackend", "RunaiStreamerBackend",
           "SafetensorsBackend", "TorchDCPBackend", "TorchSaveBackend", "pattern_name"]
