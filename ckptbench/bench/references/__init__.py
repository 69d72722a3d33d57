"""The reference rows: what users store checkpoints with instead, and the device's ceiling.

files (what the file-writing rows share; safetensors, torch.save), peers, ceiling; `BACKENDS`: each kind of
spec.references.REFERENCES and the back end that measures it, a row's settings (its `references` entry, defaults filled)
its keyword arguments.
"""

from __future__ import annotations

from typing import Callable

from ckptbench.bench.references.ceiling import DeviceCeilingBackend
from ckptbench.bench.references.files import FileReference, SafetensorsBackend, TorchSaveBackend
from ckptbench.bench.references.peers import FastSafetensorsBackend, RunaiStreamerBackend, TorchDCPBackend
from ckptbench.spec.references import CEILING

BACKENDS: dict[str, Callable[..., FileReference]] = {
    "safetensors": SafetensorsBackend,
    "torch_save": TorchSaveBackend,
    "runai_streamer": RunaiStreamerBackend,
    "fastsafetensors": FastSafetensorsBackend,
    "torch_dcp": TorchDCPBackend,
    CEILING: DeviceCeilingBackend,
}
