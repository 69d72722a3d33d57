"""The weights every writer needs, handed to the other processes of a host once.

The suite's source file (sources.source_file), when there is one: every process maps the same file, so a host holds one
copy, in the page cache. Weights held in memory instead (the Python API's `source=`) are copied once into a file on
/dev/shm; where /dev/shm is too small, as in some containers, each process makes them again from the same source.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ckptbench.sources import weights
from ckptbench.sources.source_file import SourceFile, SourceTensors


@dataclass(frozen=True)
class MappedSource:
    """The suite's source file: another process of this host maps the very same file."""

    folder: str

    def open(self) -> SourceTensors:
        return SourceFile.open(Path(self.folder)).tensors


@dataclass(frozen=True)
class WeightSource:
    """Rebuild the weights in the worker from the same source as the parent (deterministic)."""

    model: str
    weights_source: str | None
    dtype: str
    values: str = "random"

    def open(self) -> Mapping[str, np.ndarray]:
        return weights.load(self.model, self.weights_source, self.dtype, self.values).tensors


SHM_DIR = Path("/dev/shm")


class SharedTensors(MappedSource):
    """The parent's tensors copied once into a source file in a folder on /dev/shm (RAM), which workers map: a
    plain file rather than multiprocessing.shared_memory, whose resource tracker would unlink the block when the
    first worker exits."""

    @classmethod
    def create(cls, tensors: Mapping[str, np.ndarray]) -> SharedTensors:
        total = sum(a.nbytes for a in tensors.values())
        if not SHM_DIR.is_dir() or shutil.disk_usage(SHM_DIR).free < total * 1.1:
            raise OSError(f"{SHM_DIR} cannot hold {total} bytes")
        shared = cls(tempfile.mkdtemp(prefix="ckptbench-weights-", dir=SHM_DIR))
        try:
            SourceFile.write(Path(shared.folder), tensors.items())
        except BaseException:
            shared.remove()
            raise
        return shared

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def handoff(tensors: Mapping[str, np.ndarray],
            fallback: WeightSource | None) -> MappedSource | SharedTensors | WeightSource | None:
    """How another process of this host gets the same weights: the source file, a /dev/shm copy, or `fallback`."""
    if isinstance(tensors, SourceTensors) and tensors.folder is not None:
        return MappedSource(str(tensors.folder))
    try:
        return SharedTensors.create(tensors)
    except OSError:  # no /dev/shm, or a small one as in some containers
        return fallback
