"""The loaders a user would pick instead of TensorStore to load a checkpoint fast: Run:ai Model Streamer and
fastsafetensors (each reading the safetensors file the row saved), and torch.distributed.checkpoint (DCP).

Each is measured like every other row: the file written and fsync'd in the save, the load cold, every byte
verified. Each library is imported in `prepare`, before any clock (its first import costs seconds), and the
loaded copy is memory the load owns when the clock stops:

- Run:ai streamer (`SafetensorsStreamer().stream_file(path, device="cpu")`): with `owned` (its default) each
  tensor it yields is a view into a buffer of its own that it never reuses, so keeping the views keeps the
  copy; with `owned` false its buffers are reused, so each tensor is cloned inside the load. Its C++ core reads
  RUNAI_STREAMER_CONCURRENCY when a streamer is made and RUNAI_STREAMER_MEMORY_LIMIT at each stream, so the
  row sets both around the load (always to a number: an empty value breaks it) and restores them after.
- fastsafetensors (`SafeTensorsFileLoader(SingleGroup(), cpu, nogds=True)`): `get_tensor` is a view into one
  buffer holding the whole file, which stays valid after the loader is closed; keeping the views is the copy
  (a clone would double the memory).
- DCP (`FileSystemWriter(thread_count=N, sync_files=True)`, `FileSystemReader`): the load fills tensors in
  place, as a model's parameters are filled; they are allocated and touched in `before_load`, after the save
  and before the load's clock. It runs in one
  process without a process group (`no_dist`), and its warning that it assumes so is silenced.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from ckptbench.bench.references.files import (
    FileReference,
    folder_of,
    fsync_path,
    owned_part,
    to_numpy,
    to_torch,
)
from ckptbench.bench.references.loaders import SafetensorsBackend
from ckptbench.bench.storage import poison, preallocated
from ckptbench.bench.targets import RunLocation
from ckptbench.sources.source_file import Box
from ckptbench.spec.references import defaults

_RUNAI = defaults("runai_streamer")
_DCP_WARNING = r".*assuming the intent is to (save|load) in a single process"


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Environment variables set for the block, then restored (removed where they were unset)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RunaiStreamerBackend(SafetensorsBackend):
    """safetensors save_file + fsync; Run:ai Model Streamer streams the file back."""

    bypasses_page_cache = True  # O_DIRECT reads: the record says how much of the file entered the page cache
    libraries = ("safetensors.torch", "runai_model_streamer")

    def __init__(self, concurrency: int = _RUNAI["concurrency"], memory_limit: int = _RUNAI["memory_limit"],
                 owned: bool = _RUNAI["owned"]) -> None:
        self.concurrency, self.memory_limit, self.owned = concurrency, memory_limit, owned

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        from runai_model_streamer import SafetensorsStreamer

        path = str(folder_of(location) / self.filename)
        loaded: dict[str, np.ndarray] = {}
        with environment({"RUNAI_STREAMER_CONCURRENCY": str(self.concurrency),
                          "RUNAI_STREAMER_MEMORY_LIMIT": str(self.memory_limit)}):
            with SafetensorsStreamer() as streamer:
                streamer.stream_file(path, device="cpu", owned=self.owned)
                for name, tensor in streamer.get_tensors():
                    loaded[name] = to_numpy(tensor if self.owned else tensor.clone())
        return loaded

    def load_slices(self, location: RunLocation | Path, boxes: Mapping[str, Box], rank: int, ranks: int
                    ) -> dict[str, np.ndarray]:
        """The streamer takes whole files, not slices: each rank streams the whole file, then copies its slice out
        (the row's tp_load says so)."""
        whole = self.load(location)
        return {name: owned_part(to_torch(whole[name]), box) for name, box in boxes.items()}


class FastSafetensorsBackend(SafetensorsBackend):
    """safetensors save_file + fsync; fastsafetensors reads the file on the CPU (no GPUDirect)."""

    libraries = ("safetensors.torch", "fastsafetensors")

    def __init__(self, max_threads: int = 16) -> None:
        self.max_threads = max_threads

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        import torch
        from fastsafetensors import SafeTensorsFileLoader, SingleGroup

        loader = SafeTensorsFileLoader(SingleGroup(), torch.device("cpu"), nogds=True, max_threads=self.max_threads)
        try:
            loader.add_filenames({0: [str(folder_of(location) / self.filename)]})
            buffer = loader.copy_files_to_device()
            try:
                return {name: to_numpy(buffer.get_tensor(name)) for name in loader.get_keys()}
            finally:
                buffer.close()
        finally:
            loader.close()


class TorchDCPBackend(FileReference):
    """torch.distributed.checkpoint: save with FileSystemWriter (fsync'd), load into preallocated tensors."""

    libraries = ("torch.distributed.checkpoint", "torch.utils.serialization")

    def __init__(self, thread_count: int = 1) -> None:
        self.thread_count = thread_count
        self._into: dict[str, np.ndarray] | None = None

    def before_load(self, tensors: Mapping[str, np.ndarray]) -> None:
        if self._into is None:
            self._into = preallocated(tensors)  # a model's parameters: allocated and touched before the clock

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> None:
        import torch.distributed.checkpoint as dcp

        directory = folder_of(location)
        writer = dcp.FileSystemWriter(directory, thread_count=self.thread_count, sync_files=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DCP_WARNING, category=UserWarning)
            dcp.save({name: to_torch(a) for name, a in tensors.items()}, storage_writer=writer, no_dist=True)
        for file in directory.iterdir():  # the writer fsyncs each file (.metadata under a temporary name) ...
            fsync_path(file)
        fsync_path(directory)  # ... and renames it: the directory entries must be durable too

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        import torch.distributed.checkpoint as dcp

        if self._into is None:
            raise ValueError("torch_dcp loads into tensors allocated in before_load(), before the clock; call "
                             "before_load(tensors) first")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DCP_WARNING, category=UserWarning)
            dcp.load({name: to_torch(a) for name, a in self._into.items()},
                     storage_reader=dcp.FileSystemReader(folder_of(location)), no_dist=True)
        return dict(self._into)

    def load_slices(self, location: RunLocation | Path, boxes: Mapping[str, Box], rank: int, ranks: int
                    ) -> dict[str, np.ndarray]:
        """A rank's slices without a process group: tensors of the slices' shapes, and a planner that asks for
        each as the chunk at its offsets (what a DTensor's local shard would ask for). DCP's FileSystemReader
        reads each saved tensor whole and narrows it: the rank reads whole tensors."""
        import torch
        import torch.distributed.checkpoint as dcp

        meta = dcp.FileSystemReader(folder_of(location)).read_metadata().state_dict_metadata
        into = {name: torch.empty([b - a for a, b in box] + list(meta[name].size)[len(box):],
                                  dtype=meta[name].properties.dtype) for name, box in boxes.items()}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DCP_WARNING, category=UserWarning)
            dcp.load(into, storage_reader=dcp.FileSystemReader(folder_of(location)), no_dist=True,
                     planner=_slice_planner(boxes))
        return {name: to_numpy(tensor) for name, tensor in into.items()}

    def verify(self, tensors: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray]) -> list[str]:
        bad = super().verify(tensors, loaded)
        if self._into is not None:  # a second load into the same tensors (warm, then cold) must fill them again
            poison(self._into)
        return bad

    def release(self) -> None:
        self._into = None


def _slice_planner(boxes: Mapping[str, Box]):
    """A DefaultLoadPlanner whose state dict holds slices: each tensor is read as the chunk at its box's offsets
    of the saved tensor (the resharding DCP does for a DTensor's shard), not as the whole saved tensor."""
    import torch
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    class SlicePlanner(DefaultLoadPlanner):
        def create_local_plan(self) -> LoadPlan:
            requests = []
            for name, tensor in self.state_dict.items():
                offsets = [start for start, _ in boxes[name]] + [0] * (tensor.dim() - len(boxes[name]))
                chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=tensor.size())
                requests += create_read_items_for_chunk_list(name, self.metadata.state_dict_metadata[name], [chunk])
            return LoadPlan(requests)

        def lookup_tensor(self, index):  # a plain tensor holding the slice: read items name it by its offsets
            return self.state_dict[index.fqn]

    return SlicePlanner()
