"""The TensorStore back end: a checkpoint as one array per parameter.

A checkpoint folder holds one array per tensor and `manifest.json`, written last so a checkpoint with a manifest is
complete; a test's `Layout` says how (PHASE4_GUIDE.md, sections 3 and 4.2).

Saves and loads keep every array in flight at once, as a user should: all opens are issued together, then writes (or
reads) are issued without waiting for each other, bounded only by an in-flight byte budget (like T5X's `concurrent_gb`)
so that a large model does not double its memory. Waiting tensor by tensor would serialise the I/O and measure Python,
not storage; `in_flight: "one_tensor"` does exactly that, to reproduce the original Phase 4 harness (as
`timed_conversion` reproduces its casts inside the timers: the guide's section 3).
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorstore as ts

from ckptbench.bench.backend import Backend
from ckptbench.bench.targets import RunLocation, as_location, footprint_of_store
from ckptbench.bench.workspace import RUN_MARKER
from ckptbench.spec import chunking, compression, tensor_parallel
from ckptbench.spec.fields import TestSpec
from ckptbench.spec.presets import NUMPY_DTYPES, dtype_name

MANIFEST = "manifest.json"
OCDBT_DIR = "ocdbt"
ZARR_V2_DTYPES = {"float32": "<f4", "float16": "<f2", "bfloat16": "bfloat16"}
_BYTES_CODEC = {"name": "bytes", "configuration": {"endian": "little"}}
Track = Callable[[list[ts.Future]], list[ts.Future]]  # settled()'s: notes futures to cancel on an interruption


@dataclass(frozen=True)
class Layout:
    """How one test lays a checkpoint out: the storage-facing part of a TestSpec."""

    chunk_budget_elements: int
    chunk_strategy: str
    concurrency_limit: int | None  # None: TensorStore's default
    compression: dict[str, Any] | None
    format: str = "zarr2"
    kvstore: str = "file"
    shard_budget_elements: int | None = None
    data_copy_concurrency: int | None = None
    file_io_sync: bool = True
    file_io_mode: str = "default"
    in_flight: str = "all"
    timed_conversion: bool = False
    load_into: str = "new"
    tp: int = 1  # tensor-parallel ranks: what chunk_strategy "tp_aligned" aligns chunk boundaries to

    @classmethod
    def of(cls, test: TestSpec, dtype: str) -> Layout:
        itemsize = NUMPY_DTYPES[dtype].itemsize
        same = ("chunk_strategy", "concurrency_limit", "compression", "format", "kvstore", "data_copy_concurrency",
                "file_io_sync", "file_io_mode", "in_flight", "timed_conversion", "tp")  # the test's own settings
        return cls(chunk_budget_elements=test.chunk_budget_elements(itemsize),
                   shard_budget_elements=None if test.shard_bytes is None else max(1, test.shard_bytes // itemsize),
                   load_into=test.load_into or "new",  # None (a test no suite finished): the suite's default
                   **{name: getattr(test, name) for name in same})

    def context(self, extra: Mapping[str, Any] | None = None) -> ts.Context:
        """A fresh context (no cache is shared between a save and a load); `extra` adds a target's resources."""
        return ts.Context(self.context_spec(extra))

    def context_spec(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The context's resources as JSON (what `tune` prints for pasting)."""
        spec: dict[str, Any] = {"file_io_concurrency": {"limit": self.concurrency_limit},
                                "file_io_sync": self.file_io_sync, **(extra or {})}
        if self.data_copy_concurrency is not None:
            spec["data_copy_concurrency"] = {"limit": self.data_copy_concurrency}
        if self.file_io_mode != "default":
            spec["file_io_mode"] = {"mode": self.file_io_mode}
        return spec

    def kvstore_spec(self, location: RunLocation, name: str) -> dict[str, Any]:
        """Where the array `name` of the checkpoint at `location` lives."""
        if self.kvstore == "memory":
            return {"driver": "memory", "path": f"{location.label}/{name}/"}
        if self.kvstore == "ocdbt":
            return {"driver": "ocdbt", "base": location.child(f"{OCDBT_DIR}/"), "path": f"{name}/"}
        return location.child(f"{name}/")

    def manifest_store(self, location: RunLocation) -> dict[str, Any]:
        """The kvstore holding manifest.json: the run root (in memory for the memory kvstore)."""
        return {"driver": "memory", "path": f"{location.label}/"} if self.kvstore == "memory" else location.base

    def _split(self, name: str, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """The tensor-parallel split tp_aligned aligns to: (dimension, ranks), or None."""
        dim = tensor_parallel.split_dim(name, shape) if self.tp > 1 else None
        return None if dim is None else (dim, self.tp)

    def chunk_shape(self, shape: tuple[int, ...], name: str = "") -> list[int]:
        """The chunk shape of the array `name` (tp_aligned needs the name: it says how the tensor is split)."""
        return chunking.chunk_shape(shape, self.chunk_budget_elements, self.chunk_strategy, self._split(name, shape))

    def shard_shape(self, shape: tuple[int, ...], name: str = "") -> list[int] | None:
        """A shard of whole inner chunks: the chunk grid is itself chunked with the shard budget."""
        if self.shard_budget_elements is None:
            return None
        inner = self.chunk_shape(shape, name)
        grid = [math.ceil(d / c) for d, c in zip(shape, inner)]
        per_shard = max(1, self.shard_budget_elements // max(1, math.prod(inner)))
        return [g * c for g, c in zip(chunking.chunk_shape(grid, per_shard, self.chunk_strategy,
                                                           self._split(name, shape)), inner)]

    def metadata(self, shape: tuple[int, ...], dtype: str, name: str = "") -> dict[str, Any]:
        if self.format == "zarr3":
            itemsize = NUMPY_DTYPES[dtype].itemsize
            codecs = [_BYTES_CODEC, *compression.zarr3_codecs(self.compression, itemsize)]
            inner, shard = self.chunk_shape(shape, name), self.shard_shape(shape, name)
            if shard is not None:
                codecs = [{"name": "sharding_indexed", "configuration": {
                    "chunk_shape": inner, "codecs": codecs,
                    "index_codecs": [_BYTES_CODEC, {"name": "crc32c"}]}}]
            return {"shape": list(shape), "data_type": dtype, "codecs": codecs,
                    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shard or inner}}}
        metadata = {"shape": list(shape), "chunks": self.chunk_shape(shape, name), "dtype": ZARR_V2_DTYPES[dtype]}
        return compression.apply_to_zarr_v2_metadata(metadata, self.compression)

    @property
    def driver(self) -> str:
        return "zarr3" if self.format == "zarr3" else "zarr"

    def array_spec(self, location: RunLocation | Path, name: str, shape: tuple[int, ...], dtype: str) -> dict[str, Any]:
        """TensorStore spec that creates the array `name` of a checkpoint."""
        return {"driver": self.driver, "kvstore": self.kvstore_spec(as_location(location), name),
                "metadata": self.metadata(shape, dtype, name), "create": True,
                "store_data_equal_to_fill_value": True}

    def open_spec(self, location: RunLocation | Path, name: str) -> dict[str, Any]:
        return {"driver": self.driver, "kvstore": self.kvstore_spec(as_location(location), name), "open": True}


@dataclass
class TensorStoreBackend(Backend):
    """A test's way to save and load a checkpoint with TensorStore in this process."""

    layout: Layout
    max_inflight_bytes: int
    context_extra: Mapping[str, Any] = field(default_factory=dict)  # a remote target's resources
    # The memory kvstore lives in its Context: a save's context must serve the load and the size.
    _memory_context: ts.Context | None = field(default=None, repr=False)
    _half: dict[str, Any] | None = field(default=None, repr=False)  # timed_conversion's float16 sources
    _into: dict[str, np.ndarray] | None = field(default=None, repr=False)  # load_into "preallocated": the arrays

    @property
    def in_memory(self) -> bool:
        return self.layout.kvstore == "memory"

    @property
    def bypasses_page_cache(self) -> bool:
        return self.layout.file_io_mode == "direct"

    def context(self) -> ts.Context:
        """Its operations' context (public: async saves open their arrays in it); the memory kvstore's is kept."""
        if self.layout.kvstore != "memory":
            return self.layout.context(self.context_extra)
        if self._memory_context is None:
            self._memory_context = self.layout.context(self.context_extra)
        return self._memory_context

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        if self.layout.timed_conversion:
            self._half = half_copies(tensors)

    def before_load(self, tensors: Mapping[str, np.ndarray]) -> None:
        if self.layout.load_into == "preallocated" and self._into is None:
            self._into = preallocated(tensors)

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> None:
        if self.layout.timed_conversion and self._half is None:  # called without prepare (directly): copy now
            self.prepare(tensors)
        save(self._half or tensors, location, self.layout, self.max_inflight_bytes, self.context())

    def load(self, location: RunLocation | Path) -> dict[str, np.ndarray]:
        if self.layout.load_into == "preallocated" and self._into is None:
            raise ValueError("load_into \"preallocated\": the arrays are allocated in before_load(), before the "
                             "clock; call before_load(tensors) first")
        return load(location, self.layout, self.max_inflight_bytes, self.context(), into=self._into)

    def verify(self, tensors: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray]) -> list[str]:
        if self._half is not None:
            tensors = {name: half.numpy() for name, half in self._half.items()}
        bad = super().verify(tensors, loaded)
        if self._into is not None:  # a second load into the same arrays (warm, then cold) must fill them again
            poison(self._into)
        return bad

    def footprint(self, location: RunLocation | Path) -> tuple[int, int, int]:
        location = as_location(location)
        if location.local_dir is not None and self.layout.kvstore != "memory":
            return checkpoint_size(location.local_dir)
        return footprint_of_store(self.layout.manifest_store(location), self.context())

    def release(self) -> None:
        self._memory_context = None
        self._half = None
        self._into = None


POISON = 0xFF  # every byte of a preallocated array before a load: NaN in every float type, never a weight


def preallocated(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays shaped and typed like the tensors, every page touched (filled with POISON), for a load to fill in place:
    what a model's parameters are when a checkpoint is loaded into them. The kernel maps and zeroes their pages here,
    outside any clock (TensorStore's own output arrays pay that inside the load); a load that left a byte unwritten
    fails verification."""
    out = {name: np.empty(array.shape, array.dtype) for name, array in tensors.items()}
    poison(out)
    return out


def poison(arrays: Mapping[str, np.ndarray]) -> None:
    for array in arrays.values():
        array.reshape(-1).view(np.uint8).fill(POISON)


def half_copies(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """float16 torch copies of float32 weights, for timed_conversion; refused unless every value survives float16
    exactly (the original's weights were float16, so its casts lost nothing)."""
    import torch

    out = {}
    for name, array in tensors.items():
        if array.dtype != np.float32:
            raise ValueError(f"timed_conversion casts float16 weights to float32; tensor {name} is {array.dtype}")
        half = array.astype(np.float16)
        if not np.array_equal(half.astype(np.float32).view(np.uint32), np.ascontiguousarray(array).view(np.uint32)):
            raise ValueError(f"timed_conversion: tensor {name} is not exactly representable in float16; the "
                             "original's casts start from float16 weights: use values \"float16\"")
        out[name] = torch.from_numpy(half)
    return out


def to_float16(array: np.ndarray) -> np.ndarray:
    """The original's load-side copy and cast, timed: torch.from_numpy(np.copy(a)).half() (as numpy, no copy)."""
    import torch

    return torch.from_numpy(np.copy(array)).half().numpy()


def save(tensors: Mapping[str, Any], location: RunLocation | Path, layout: Layout, max_inflight_bytes: int,
         context: ts.Context | None = None) -> None:
    """Write every tensor and the manifest; returns once TensorStore reports all writes committed (durable, unless the
    layout turns file_io_sync off). With the layout's `timed_conversion`, `tensors` are float16 torch tensors, each cast
    to the float32 array written inside the caller's timer (the original's)."""
    location = as_location(location)
    if location.local_dir is not None:
        location.local_dir.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    convert = layout.timed_conversion
    dtype = "float32" if convert or not tensors else dtype_name(next(iter(tensors.values())).dtype)
    shapes = {name: tuple(tensors[name].shape) for name in names}
    nbytes = {name: math.prod(shapes[name]) * NUMPY_DTYPES[dtype].itemsize for name in names}
    context = context or layout.context()

    def write(store: ts.TensorStore, name: str) -> Callable[[], Any]:
        # timed_conversion: the original's save-side cast, timed: param.detach().cpu().float().numpy()
        return lambda: store.write(tensors[name].detach().cpu().float().numpy() if convert else tensors[name])

    with settled() as track:
        if layout.in_flight == "one_tensor":
            for name in names:
                store = track([ts.open(layout.array_spec(location, name, shapes[name], dtype), context=context)])[0]
                track([write(store.result(), name)()])[0].result()
        else:
            opening = track([ts.open(layout.array_spec(location, name, shapes[name], dtype), context=context)
                             for name in names])
            stores = [future.result() for future in opening]
            _bounded(((nbytes[n], write(s, n)) for s, n in zip(stores, names)), max_inflight_bytes, track)
    write_manifest(location, layout, context, dtype, shapes)


def write_manifest(location: RunLocation, layout: Layout, context: ts.Context, dtype: str,
                   shapes: Mapping[str, Sequence[int]], **extra: Any) -> None:
    """manifest.json (format, dtype, each array's shape), written last through the same kvstore (so fsync'd alike)."""
    manifest = {"format": f"ckptbench-{layout.format}", "dtype": dtype, **extra,
                "tensors": [{"name": name, "shape": list(shape)} for name, shape in shapes.items()]}
    store = ts.KvStore.open(layout.manifest_store(location), context=context).result()
    store.write(MANIFEST, json.dumps(manifest, indent=1).encode()).result()


def read_manifest(location: RunLocation, layout: Layout, context: ts.Context) -> dict[str, Any]:
    store = ts.KvStore.open(layout.manifest_store(location), context=context).result()
    found = store.read(MANIFEST).result()
    if found.state != "value":
        raise FileNotFoundError(f"no {MANIFEST} in the checkpoint at {location.base.get('path')}")
    return json.loads(bytes(found.value))


def load(location: RunLocation | Path, layout: Layout, max_inflight_bytes: int,
         context: ts.Context | None = None, *, into: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Read a checkpoint written by `save` back into memory (with the layout's `timed_conversion`, each array read cast
    back to float16 inside the caller's timer, as the original did), or into `into`'s arrays (`_reading`)."""
    location = as_location(location)
    context = context or layout.context()
    manifest = read_manifest(location, layout, context)
    entries = manifest["tensors"]
    itemsize = NUMPY_DTYPES[manifest["dtype"]].itemsize
    if into is not None:
        if layout.timed_conversion:
            raise ValueError("load: a load into preallocated arrays cannot also convert what it reads")
        _check_into(into, entries, manifest["dtype"])
    out = {e["name"]: None if into is None else into[e["name"]] for e in entries}
    finish = to_float16 if layout.timed_conversion else np.asarray
    with settled() as track:
        if layout.in_flight == "one_tensor":  # each array opened, read and finished before the next starts
            loaded: dict[str, np.ndarray] = {}
            for e in entries:
                store = track([ts.open(layout.open_spec(location, e["name"]), context=context)])[0].result()
                read = track([_reading(store, out[e["name"]], context)()])[0].result()
                loaded[e["name"]] = into[e["name"]] if into is not None else finish(read)
            return loaded
        opening = track([ts.open(layout.open_spec(location, e["name"]), context=context) for e in entries])
        stores = [future.result() for future in opening]
        futures = _bounded(((math.prod(e["shape"]) * itemsize, _reading(store, out[e["name"]], context))
                            for store, e in zip(stores, entries)), max_inflight_bytes, track)
        return {e["name"]: into[e["name"]] if into is not None else finish(f.result())  # every read awaited by now
                for e, f in zip(entries, futures)}


def _reading(store: ts.TensorStore, out: np.ndarray | None, context: ts.Context) -> Callable[[], Any]:
    """A read of the whole store: into a new array, or into `out` in place (TensorStore 0.1.86's read has no `out=`: the
    store is copied into a TensorStore view of `out`)."""
    return store.read if out is None else lambda: ts.array(out, copy=False, write=True, context=context).write(store)


def _check_into(into: Mapping[str, np.ndarray], entries: list[dict[str, Any]], dtype: str) -> None:
    """Preallocated arrays must match the checkpoint: one per tensor, its shape and dtype, contiguous."""
    for e in entries:
        out = into.get(e["name"])
        if out is None or tuple(out.shape) != tuple(e["shape"]) or out.dtype != NUMPY_DTYPES[dtype]:
            found = "none" if out is None else f"{out.dtype}{list(out.shape)}"
            raise ValueError(f"load_into: tensor {e['name']} is {dtype}{e['shape']} in the checkpoint; the "
                             f"preallocated array is {found}")


@contextmanager
def settled() -> Iterator[Track]:
    """Track futures; if anything interrupts (Ctrl-C, an error), cancel and wait for them all. TensorStore keeps writing
    on its own threads after Python stops waiting, so without this a folder could be deleted while files are still being
    created in it."""
    tracked: list[ts.Future] = []

    def track(futures: list[ts.Future]) -> list[ts.Future]:
        tracked.extend(futures)
        return futures

    try:
        yield track
    except BaseException:
        stop(tracked)
        raise


_SETTLE_TIMEOUT_S = 60.0


def stop(futures: list[Any]) -> None:
    """Cancel TensorStore futures (reads, writes), then wait until each has ended."""
    for future in futures:
        future.cancel()
    for future in futures:
        try:
            future.result(timeout=_SETTLE_TIMEOUT_S)
        except BaseException:  # cancelled, failed or timed out: all that matters is that it stopped
            pass


def _bounded(operations: Iterable[tuple[int, Callable[[], ts.Future]]], max_inflight_bytes: int,
             track: Track) -> list[ts.Future]:
    """Start operations in order, waiting for the oldest whenever the byte budget would be exceeded."""
    started: list[ts.Future] = []
    inflight: deque[tuple[int, ts.Future]] = deque()
    inflight_bytes = 0
    for nbytes, start in operations:
        while inflight and inflight_bytes + nbytes > max_inflight_bytes:
            done_bytes, future = inflight.popleft()
            future.result()
            inflight_bytes -= done_bytes
        future = track([start()])[0]
        started.append(future)
        inflight.append((nbytes, future))
        inflight_bytes += nbytes
    for _, future in inflight:
        future.result()
    return started



def checkpoint_size(directory: Path) -> tuple[int, int, int]:
    """(apparent bytes, allocated bytes, file count) of the checkpoint's files (the run's marker is not one)."""
    size_bytes = disk_bytes = n_files = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if name == RUN_MARKER:
                continue
            st = os.lstat(os.path.join(root, name))
            size_bytes += st.st_size
            disk_bytes += st.st_blocks * 512
            n_files += 1
    return size_bytes, disk_bytes, n_files
