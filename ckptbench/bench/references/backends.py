"""`BACKENDS`: each kind of spec.references.REFERENCES, and the back end that measures it.

A row's settings (its `references` entry, defaults filled) are the back end's keyword arguments.
"""

from __future__ import annotations

from typing import Callable

from ckptbench.bench.backend import Backend
from ckptbench.bench.references.ceiling import DeviceCeilingBackend
from ckptbench.bench.references.loaders import SafetensorsBackend, TorchSaveBackend
from ckptbench.bench.references.peers import FastSafetensorsBackend, RunaiStreamerBackend, TorchDCPBackend
from ckptbench.spec.references import CEILING

BACKENDS: dict[str, Callable[..., Backend]] = {
    "safetensors": SafetensorsBackend,
    "torch_save": TorchSaveBackend,
    "runai_streamer": RunaiStreamerBackend,
    "fastsafetensors": FastSafetensorsBackend,
    "torch_dcp": TorchDCPBackend,
    CEILING: DeviceCeilingBackend,
}
