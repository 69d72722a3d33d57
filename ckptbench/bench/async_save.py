"""Asynchronous saves (a test's `save_mode: "async"`): blocked until the weights may change, durable in the background.

A save is split in two. The part the training loop waits for runs on the calling thread and ends when the weights
may be modified again (`blocked_s`); the rest runs in a background thread until the checkpoint is durable, fsync'd
as a sync save is (`commit_s`, from the call). Per row:
- TensorStore: every write issued; blocked until each write's `copy` future resolves; then each `commit`, and the
  manifest;
- torch DCP: `torch.distributed.checkpoint.async_save` (its thread-based checkpointer, no process group): blocked
  until it returns (its stager's copy of the state dict), then its future, and the files fsync'd;
- every other row (torch.save, safetensors, the streamer's and fastsafetensors' safetensors files): a copy of the
  weights staged, then the row's own save of the copy from a thread (what users do today);
- the device ceiling likewise, with one fixed pattern (16 streams, 16 MiB blocks: the O_DIRECT read's set): the
  least an async save that may let the loop go on can cost here (one plain copy, then the disk's own writes).
While the background write runs, the stand-in training step (bench.training_step) runs on the calling thread, each
step timed; its time alone is measured before the clock. A run's record gets `blocked_s`, `commit_s` (its `save_s`
too: the call to durable), `staging_bytes` (the anonymous memory the save held at its peak above what the process
held at the call), the steps' times, the slowdown and the training time lost (training_step.time_lost_s).
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ckptbench.bench import storage
from ckptbench.bench.backend import Backend
from ckptbench.bench.references.ceiling import DIRECT, DeviceCeilingBackend
from ckptbench.bench.references.files import folder_of, fsync_path, to_torch
from ckptbench.bench.references.peers import DCP_WARNING, TorchDCPBackend
from ckptbench.bench.targets import RunLocation, as_location
from ckptbench.bench.training_step import StandInStep, slowdown, time_lost_s
from ckptbench.core.records import RunRecord
from ckptbench.core.system import resident_bytes
from ckptbench.sources.source_file import Box
from ckptbench.spec.fields import TestSpec

# DCP without a process group says "assuming the intent is to save in a single process" (it is), from its own
# thread too, where a catch_warnings block of this one does not reach
warnings.filterwarnings("ignore", message=DCP_WARNING, category=UserWarning)

Finish = Callable[[], None]  # the background part of a save: returns once the checkpoint is durable


@dataclass
class Figures:
    """What one async save measured (bench.measure puts them in the run's record)."""

    step_alone_s: float
    blocked_s: float = 0.0
    commit_s: float = 0.0
    anon_at_call_bytes: int = 0
    steps_s: list[float] = field(default_factory=list)
    steps_cpu_s: float = 0.0


class AsyncSave(Backend):
    """A row's back end, its saves made asynchronous; everything else is the row's own."""

    def __init__(self, inner: Backend, step_bytes: int | None = None) -> None:
        self.inner, self.step_bytes = inner, step_bytes
        self.in_memory, self.bypasses_page_cache = inner.in_memory, inner.bypasses_page_cache
        self.figures: Figures | None = None
        self._step: StandInStep | None = None

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        self.inner.prepare(tensors)
        self._step = StandInStep(tensors, self.step_bytes)  # its buffers allocated before the clock
        self.figures = Figures(step_alone_s=self._step.alone_s())

    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> None:
        if self._step is None or self.figures is None:
            self.prepare(tensors)
        figures, step = self.figures, self._step
        assert figures is not None and step is not None
        figures.anon_at_call_bytes = resident_bytes()[0]
        started = time.perf_counter()
        finish, cancel = begin(self.inner, tensors, location)
        figures.blocked_s = time.perf_counter() - started
        outcome: list[BaseException | float] = []
        thread = threading.Thread(target=_run_background, args=(finish, outcome), daemon=True)
        thread.start()
        try:
            cpu0 = time.thread_time()
            while thread.is_alive():  # the training loop goes on beside the write
                figures.steps_s.append(step())
            figures.steps_cpu_s = time.thread_time() - cpu0
        except BaseException:  # Ctrl-C: stop what can be stopped, and let the write end before its folder goes
            cancel()
            thread.join()
            raise
        thread.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        figures.commit_s = outcome[0] - started

    def release(self) -> None:
        self.inner.release()
        self._step = None

    # The row's own, unchanged
    def before_load(self, tensors: Mapping[str, np.ndarray]) -> None:
        self.inner.before_load(tensors)

    def load(self, location: RunLocation) -> dict[str, np.ndarray]:
        return self.inner.load(location)

    def footprint(self, location: RunLocation) -> tuple[int, int, int]:
        return self.inner.footprint(location)

    def evict(self, directory: Path, method: str) -> str | None:
        return self.inner.evict(directory, method)

    def before_run(self, earlier: Sequence[RunRecord]) -> None:
        self.inner.before_run(earlier)

    def bypass_resident_bytes(self, resident_after_load: int) -> int | None:
        return self.inner.bypass_resident_bytes(resident_after_load)

    def verify(self, tensors: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray]) -> list[str]:
        return self.inner.verify(tensors, loaded)

    def load_slices(self, location: RunLocation, boxes: Mapping[str, Box], rank: int, ranks: int
                    ) -> dict[str, np.ndarray]:
        return self.inner.load_slices(location, boxes, rank, ranks)

    def pattern_seconds(self) -> dict[str, float] | None:
        return self.inner.pattern_seconds()


def _run_background(finish: Finish, outcome: list[BaseException | float]) -> None:
    try:
        finish()
        outcome.append(time.perf_counter())
    except BaseException as exc:  # handed to the calling thread
        outcome.append(exc)


def _nothing() -> None:
    pass


def begin(inner: Backend, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> tuple[Finish, Finish]:
    """The blocking part of an async save by `inner`; returns (the background part, how to cancel it)."""
    if isinstance(inner, storage.TensorStoreBackend):
        return _tensorstore(inner, tensors, location)
    if isinstance(inner, TorchDCPBackend):
        return _dcp(inner, tensors, location)
    staged = {name: np.array(array, copy=True) for name, array in tensors.items()}
    return (lambda: inner.save(staged, location)), _nothing


def _tensorstore(inner: storage.TensorStoreBackend, tensors: Mapping[str, np.ndarray],
                 location: RunLocation | Path) -> tuple[Finish, Finish]:
    """Every write issued at once (no in-flight bound: an async save holds its copy), blocked until each `copy`."""
    import tensorstore as ts

    location, layout, context = as_location(location), inner.layout, inner._context()
    if location.local_dir is not None:
        location.local_dir.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    dtype = storage.dtype_name(next(iter(tensors.values())).dtype)
    stores = [ts.open(layout.array_spec(location, n, tuple(tensors[n].shape), dtype), context=context) for n in names]
    writes = [store.result().write(tensors[n]) for store, n in zip(stores, names)]

    def cancel() -> None:
        for write in writes:
            write.cancel()
        for write in writes:
            try:
                write.result()
            except BaseException:  # cancelled or failed: all that matters is that it stopped
                pass

    try:
        for write in writes:
            write.copy.result()
    except BaseException:
        cancel()
        raise

    def finish() -> None:
        for write in writes:
            write.commit.result()
        storage.write_manifest(location, layout, context, {
            "format": f"ckptbench-{layout.format}", "dtype": dtype,
            "tensors": [{"name": n, "shape": list(tensors[n].shape)} for n in names]})
    return finish, cancel


def _dcp(inner: TorchDCPBackend, tensors: Mapping[str, np.ndarray],
         location: RunLocation | Path) -> tuple[Finish, Finish]:
    """DCP's own async save (thread-based); the files and the folder fsync'd afterwards, as the sync row does."""
    import torch.distributed.checkpoint as dcp

    directory = folder_of(location)
    writer = dcp.FileSystemWriter(directory, thread_count=inner.thread_count, sync_files=True)
    state = {name: to_torch(a) for name, a in tensors.items()}
    future: Any = dcp.async_save(state, storage_writer=writer, no_dist=True)
    future = getattr(future, "upload_completion", future)  # an AsyncSaveResponse where a stager is given

    def finish() -> None:
        future.result()
        for file in directory.iterdir():
            fsync_path(file)
        fsync_path(directory)
    return finish, _nothing


def wrap(backend: Backend, test: TestSpec, eviction: str) -> Backend:
    """A test's back end as it saves: its own (sync), or made async; the ceiling's with one fixed pattern."""
    if test.save_mode != "async":
        return backend
    if isinstance(backend, DeviceCeilingBackend):
        backend = DeviceCeilingBackend(eviction, grid=(DIRECT,), fio=None)
    return AsyncSave(backend, test.train_step_bytes)


def note(record: RunRecord, backend: Backend) -> None:
    """An async save's figures into its run's record (after the save's own, which the clock around it gave)."""
    if not isinstance(backend, AsyncSave) or backend.figures is None:
        return
    figures = backend.figures
    record.blocked_s, record.commit_s, record.save_s = figures.blocked_s, figures.commit_s, figures.commit_s
    if record.save_cpu_s is not None:
        record.save_cpu_s -= figures.steps_cpu_s  # the steps' own CPU is training's, not the save's
    if record.save_rss_anon_bytes is not None:
        record.staging_bytes = max(0, record.save_rss_anon_bytes - figures.anon_at_call_bytes)
    record.step_alone_s, record.steps_during_s = figures.step_alone_s, list(figures.steps_s)
    record.step_slowdown = slowdown(figures.step_alone_s, figures.steps_s)
    record.training_lost_s = time_lost_s(figures.blocked_s, figures.step_alone_s, figures.steps_s)

