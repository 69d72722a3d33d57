"""The loaders a user would pick instead of TensorStore to load a checkpoint fast: Run:ai Model Streamer and
fastsafetensors (each reading the safetensors file the row saved), and torch.distributed.checkpoint (DCP).

Each is measured like every other row (PHASE4_GUIDE.md, section 4.7, says how each saves and loads). Each library is
imported in `prepare`, before any clock (its first import costs seconds). A loader whose tensors are views into its own
buffers keeps the views as the loaded copy (a clone would double the memory), unless it reuses those buffers (the
streamer with `owned` false): then each tensor is cloned inside the load. The streamer's C++ core reads its settings
from environment variables (spec.references), so the row sets them around the load (always to a number: an empty value
breaks it; a setting left to the library is unset) and restores them after. DCP runs in one process without a process
group (`no_dist`), and its warning that it assumes so is silenced.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, cast

import numpy as np

from ckptbench.bench.references.files import (
    FileReference,
    SafetensorsBackend,
    folder_of,
    fsync_path,
    owned_part,
    to_numpy,
    to_torch,
)
from ckptbench.bench.targets import RunLocation
from ckptbench.sources.source_file import Box
from ckptbench.spec.references import defaults

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

_RUNAI = defaults("runai_streamer")
_FASTSAFETENSORS = defaults("fastsafetensors")
DCP_WARNING = r".*assuming the intent is to (save|load) in a single process"
# DCP without a process group says so (it is), from an async save's own thread too, where a catch_warnings block of
# this one does not reach
warnings.filterwarnings("ignore", message=DCP_WARNING, category=UserWarning)


@contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Environment variables set for the block (None: removed), then restored (removed where they were unset)."""
    def apply(settings: Mapping[str, str | None]) -> None:
        for name, value in settings.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    before = {name: os.environ.get(name) for name in values}
    apply(values)
    try:
        yield
    finally:
        apply(before)


class RunaiStreamerBackend(SafetensorsBackend):
    """safetensors save_file + fsync; Run:ai Model Streamer streams the file back."""

    libraries = ("safetensors.torch", "runai_model_streamer")

    def __init__(self, concurrency: int | None = _RUNAI["concurrency"], chunk_bytesize: int = _RUNAI["chunk_bytesize"],
                 fs_strategy: str = _RUNAI["fs_strategy"], fs_queue_depth: int | None = _RUNAI["fs_queue_depth"],
                 memory_limit: int = _RUNAI["memory_limit"], owned: bool = _RUNAI["owned"]) -> None:
        self.concurrency, self.chunk_bytesize, self.memory_limit, self.owned = (concurrency, chunk_bytesize,
                                                                                memory_limit, owned)
        self.fs_strategy, self.fs_queue_depth = fs_strategy, fs_queue_depth

    @property
    def bypasses_page_cache(self) -> bool:
        """O_DIRECT reads (the record says how much of the file entered the page cache), but for sync_buffered."""
        return self.fs_strategy != "sync_buffered"

    def settings_environment(self) -> dict[str, str | None]:
        """The environment variables its C++ core reads, as this row sets them (None: unset, the core's default)."""
        return {"RUNAI_STREAMER_CONCURRENCY": None if self.concurrency is None else str(self.concurrency),
                "RUNAI_STREAMER_CHUNK_BYTESIZE": str(self.chunk_bytesize),
                "RUNAI_STREAMER_FS_STRATEGY": None if self.fs_strategy == "auto" else self.fs_strategy,
                "RUNAI_STREAMER_FS_QUEUE_DEPTH": None if self.fs_queue_depth is None else str(self.fs_queue_depth),
                "RUNAI_STREAMER_MEMORY_LIMIT": str(self.memory_limit)}

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        from runai_model_streamer import SafetensorsStreamer

        path = str(folder_of(location) / self.filename)
        with environment(self.settings_environment()), SafetensorsStreamer() as streamer:
            streamer.stream_file(path, device="cpu", owned=self.owned)
            return self.kept(streamer.get_tensors(), clone=not self.owned)

    def load_slices(self, location: RunLocation | Path, boxes: Mapping[str, Box], rank: int, ranks: int
                    ) -> dict[str, np.ndarray]:
        """The streamer takes whole files, not slices: each rank streams the whole file, then copies its slice out (the
        row's tp_load says so)."""
        whole = self.load(location)
        return {name: owned_part(to_torch(whole[name]), box) for name, box in boxes.items()}


class FastSafetensorsBackend(SafetensorsBackend):
    """safetensors save_file + fsync; fastsafetensors reads the file on the CPU (no GPUDirect)."""

    libraries = ("safetensors.torch", "fastsafetensors")

    def __init__(self, max_threads: int = _FASTSAFETENSORS["max_threads"],
                 bbuf_size_kb: int = _FASTSAFETENSORS["bbuf_size_kb"]) -> None:
        self.max_threads, self.bbuf_size_kb = max_threads, bbuf_size_kb

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        import torch
        from fastsafetensors import SafeTensorsFileLoader, SingleGroup

        loader = SafeTensorsFileLoader(SingleGroup(), torch.device("cpu"), nogds=True, max_threads=self.max_threads,
                                       bbuf_size_kb=self.bbuf_size_kb)
        try:
            loader.add_filenames({0: [str(folder_of(location) / self.filename)]})
            buffer = loader.copy_files_to_device()
            try:
                return self.kept((name, buffer.get_tensor(name)) for name in loader.get_keys())
            finally:
                buffer.close()
        finally:
            loader.close()


class TorchDCPBackend(FileReference):
    """torch.distributed.checkpoint: save with FileSystemWriter (fsync'd), load with FileSystemReader into a state dict
    allocated inside the clock ("new") or into the preallocated arrays ("preallocated")."""

    libraries = ("torch.distributed.checkpoint", "torch.utils.serialization")

    def __init__(self, thread_count: int = 1, async_checkpointer: str = "thread") -> None:
        self.thread_count, self.async_checkpointer = thread_count, async_checkpointer  # the latter: bench.async_save

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> None:
        import torch.distributed.checkpoint as dcp

        directory = folder_of(location)
        writer = dcp.FileSystemWriter(directory, thread_count=self.thread_count, sync_files=True)
        with warnings.catch_warnings():  # a caller's (pytest's) filters may have replaced the module's
            warnings.filterwarnings("ignore", message=DCP_WARNING, category=UserWarning)
            dcp.save({name: to_torch(a) for name, a in tensors.items()}, storage_writer=writer, no_dist=True)
        for file in directory.iterdir():  # the writer fsyncs each file (.metadata under a temporary name) ...
            fsync_path(file)
        fsync_path(directory)  # ... and renames it: the directory entries must be durable too

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        import torch
        import torch.distributed.checkpoint as dcp

        reader = dcp.FileSystemReader(folder_of(location))
        state = self.destination()
        if state is None:  # "new": what a load without a model allocates, inside the clock
            meta = cast("Mapping[str, TensorStorageMetadata]", reader.read_metadata().state_dict_metadata)
            state = {name: torch.empty(tuple(m.size), dtype=m.properties.dtype) for name, m in meta.items()}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=DCP_WARNING, category=UserWarning)
            dcp.load(state, storage_reader=reader, no_dist=True)
        return self.filled() if self._into is not None else {name: to_numpy(t) for name, t in state.items()}

    def load_slices(self, location: RunLocation | Path, boxes: Mapping[str, Box], rank: int, ranks: int
                    ) -> dict[str, np.ndarray]:
        """A rank's slices without a process group: tensors of the slices' shapes, and a planner that asks for each as
        the chunk at its offsets (what a DTensor's local shard would ask for). DCP's FileSystemReader reads each saved
        tensor whole and narrows it: the rank reads whole tensors."""
        import torch
        import torch.distributed.checkpoint as dcp

        metadata = dcp.FileSystemReader(folder_of(location)).read_metadata()
        meta = cast("Mapping[str, TensorStorageMetadata]", metadata.state_dict_metadata)  # this row saves tensors only
        into = {name: torch.empty([b - a for a, b in box] + list(meta[name].size)[len(box):],
                                  dtype=meta[name].properties.dtype) for name, box in boxes.items()}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=DCP_WARNING, category=UserWarning)
            dcp.load(into, storage_reader=dcp.FileSystemReader(folder_of(location)), no_dist=True,
                     planner=_slice_planner(boxes))
        return {name: to_numpy(tensor) for name, tensor in into.items()}


def _slice_planner(boxes: Mapping[str, Box]):
    """A DefaultLoadPlanner whose state dict holds slices: each tensor is read as the chunk at its box's offsets of the
    saved tensor (the resharding DCP does for a DTensor's shard), not as the whole saved tensor."""
    import torch
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    class SlicePlanner(DefaultLoadPlanner):
        def create_local_plan(self) -> LoadPlan:
            assert self.metadata is not None  # set_up_planner ran before any plan
            requests = []
            for name, tensor in self.state_dict.items():
                offsets = [start for start, _ in boxes[name]] + [0] * (tensor.dim() - len(boxes[name]))
                chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=tensor.size())
                saved = cast(TensorStorageMetadata, self.metadata.state_dict_metadata[name])  # tensors only
                requests += create_read_items_for_chunk_list(name, saved, [chunk])
            return LoadPlan(requests)

        def lookup_tensor(self, index):  # a plain tensor holding the slice: read items name it by its offsets
            return self.state_dict[index.fqn]

    return SlicePlanner()
