"""Asynchronous saves (a test's `save_mode: "async"`): blocked until the weights may change, durable in the background.

What each row does and what a run records: PHASE4_GUIDE.md, section 4.12. DCP starts its save process ("process") at
its first save and keeps it for the interpreter's life; the harness starts it in `prepare` (a spawned interpreter
importing torch takes seconds, outside the clock) and ends it in `release`, so no process outlives the run (nor holds
its staged copy).

The stand-in step: one step reads `step_bytes` of the weights (cycling over them), each piece scaled and added into a
small accumulator, as an optimizer's update reads every parameter: two float operations per 4 bytes, memory-bound on a
CPU. The weights are only read, so the step never changes what a checkpoint must hold.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ckptbench.bench import storage
from ckptbench.bench.backend import Backend, Wrapper
from ckptbench.bench.references.ceiling import DIRECT, DeviceCeilingBackend
from ckptbench.bench.references.files import folder_of, fsync_path, to_torch
from ckptbench.bench.references.peers import TorchDCPBackend
from ckptbench.bench.targets import RunLocation, as_location
from ckptbench.core.records import RunRecord
from ckptbench.core.system import resident_bytes
from ckptbench.spec.fields import TestSpec

DEFAULT_STEP_BYTES = 2**30  # about 100 ms a step on the 2-core VM of docs/measurements
ALONE_STEPS = 5  # steps timed alone (after WARM_UP_S of untimed ones): their median is the step's time alone
WARM_UP_S = 0.3
_PIECE_ELEMENTS = 2**18  # 1 MiB of float32 at a time: the accumulator stays in the CPU's cache
_SCALE = np.float32(1e-3)


class StandInStep:
    """Calling it runs one step and returns its seconds."""

    def __init__(self, tensors: Mapping[str, np.ndarray], step_bytes: int | None = None) -> None:
        self.step_bytes = step_bytes or DEFAULT_STEP_BYTES
        # Every tensor's bytes read as float32 (whatever its dtype: the traffic is what counts)
        flat = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in tensors.values()]
        self._views = [b[: b.size // 4 * 4].view(np.float32) for b in flat if b.size >= 4]
        if not self._views:
            raise ValueError("the stand-in training step needs weights of at least 4 bytes")
        self._accumulator = np.zeros(_PIECE_ELEMENTS, np.float32)
        self._scratch = np.zeros(_PIECE_ELEMENTS, np.float32)

    def __call__(self) -> float:
        started = time.perf_counter()
        left = self.step_bytes // 4
        while left > 0:
            for view in self._views:
                for start in range(0, view.size, _PIECE_ELEMENTS):
                    piece = view[start:start + min(_PIECE_ELEMENTS, left)]
                    scratch = self._scratch[:piece.size]
                    np.multiply(piece, _SCALE, out=scratch)
                    np.add(self._accumulator[:piece.size], scratch, out=self._accumulator[:piece.size])
                    left -= piece.size
                    if left <= 0:
                        return time.perf_counter() - started
        return time.perf_counter() - started

    def alone_s(self, steps: int = ALONE_STEPS) -> float:
        """The step's time with nothing else of this process running: the median of `steps`, after untimed steps for
        WARM_UP_S (the first steps of a small step run slower: caches, the CPU's clock)."""
        warm_until = time.perf_counter() + WARM_UP_S
        while time.perf_counter() < warm_until:
            self()
        return statistics.median(self() for _ in range(steps))


def slowdown(alone_s: float, during_s: list[float]) -> float | None:
    """How much slower the steps ran than alone, as a fraction (0.25: 25 % slower); None without steps."""
    return statistics.fmean(during_s) / alone_s - 1.0 if during_s and alone_s > 0 else None


def time_lost_s(blocked_s: float, alone_s: float, during_s: list[float]) -> float:
    """Training time a checkpoint costs: the time the loop was blocked, plus each step's time beyond its time alone
    until the checkpoint was durable."""
    return blocked_s + sum(s - alone_s for s in during_s)


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


class AsyncSave(Wrapper):
    """A row's back end, its saves made asynchronous; everything else is the row's own."""

    def __init__(self, inner: Backend, step_bytes: int | None = None) -> None:
        super().__init__(inner)
        self.step_bytes = step_bytes
        self.figures: Figures | None = None
        self._step: StandInStep | None = None
        for name in ("before_load", "bypass_resident_bytes", "verify", "load_slices"):  # the row's own, unchanged
            setattr(self, name, getattr(inner, name))

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        self.inner.prepare(tensors)
        if _dcp_process(self.inner):
            _start_dcp_process()
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
        ended = outcome[0]
        if isinstance(ended, BaseException):
            raise ended
        figures.commit_s = ended - started

    def release(self) -> None:
        if _dcp_process(self.inner):
            _stop_dcp_process()
        self.inner.release()
        self._step = None


def _run_background(finish: Finish, outcome: list[BaseException | float]) -> None:
    try:
        finish()
        outcome.append(time.perf_counter())
    except BaseException as exc:  # handed to the calling thread
        outcome.append(exc)


def begin(inner: Backend, tensors: Mapping[str, np.ndarray], location: RunLocation | Path) -> tuple[Finish, Finish]:
    """The blocking part of an async save by `inner`; returns (the background part, how to cancel it)."""
    if isinstance(inner, storage.TensorStoreBackend):
        return _tensorstore(inner, tensors, location)
    if isinstance(inner, TorchDCPBackend):
        return _dcp(inner, tensors, location)
    staged = {name: np.array(array, copy=True) for name, array in tensors.items()}
    return (lambda: inner.save(staged, as_location(location))), lambda: None


def _tensorstore(inner: storage.TensorStoreBackend, tensors: Mapping[str, np.ndarray],
                 location: RunLocation | Path) -> tuple[Finish, Finish]:
    """Every write issued at once (no in-flight bound: an async save holds its copy), blocked until each `copy`."""
    import tensorstore as ts

    location, layout, context = as_location(location), inner.layout, inner.context()
    if location.local_dir is not None:
        location.local_dir.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    dtype = storage.dtype_name(next(iter(tensors.values())).dtype)
    stores = [ts.open(layout.array_spec(location, n, tuple(tensors[n].shape), dtype), context=context) for n in names]
    writes = [store.result().write(tensors[n]) for store, n in zip(stores, names)]
    try:
        for write in writes:
            write.copy.result()
    except BaseException:
        storage.stop(writes)
        raise

    def finish() -> None:
        for write in writes:
            write.commit.result()
        storage.write_manifest(location, layout, context, dtype, {n: tensors[n].shape for n in names})
    return finish, lambda: storage.stop(writes)


def _dcp(inner: TorchDCPBackend, tensors: Mapping[str, np.ndarray],
         location: RunLocation | Path) -> tuple[Finish, Finish]:
    """DCP's own async save (by a thread, or by the process `prepare` started); the files and the folder fsync'd
    afterwards, as the sync row does. Cancelled, a process is ended (DCP's thread cannot be)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

    directory = folder_of(location)
    writer = dcp.FileSystemWriter(directory, thread_count=inner.thread_count, sync_files=True)
    state = {name: to_torch(a) for name, a in tensors.items()}
    future: Any = dcp.async_save(state, storage_writer=writer, no_dist=True,
                                 async_checkpointer_type=AsyncCheckpointerType(inner.async_checkpointer))
    future = getattr(future, "upload_completion", future)  # an AsyncSaveResponse where a stager is given

    def finish() -> None:
        future.result()
        for file in directory.iterdir():
            fsync_path(file)
        fsync_path(directory)
    return finish, _stop_dcp_process if _dcp_process(inner) else lambda: None


def _dcp_process(inner: Backend) -> bool:
    return isinstance(inner, TorchDCPBackend) and inner.async_checkpointer == "process"


def _start_dcp_process() -> None:
    """DCP's save process, started by a tiny save. Its first save learns where the process meets it from a process
    group: a world of one here (unless there is one), ended again once the process has started."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    # It logs each request to the stderr it inherits: the console's lines are not for it (its errors come back by pipe)
    console, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)
    try:
        with tempfile.TemporaryDirectory() as folder:
            started: Any = dcp.async_save({"start": torch.zeros(1)}, storage_writer=dcp.FileSystemWriter(folder),
                                          no_dist=True, async_checkpointer_type=AsyncCheckpointerType.PROCESS)
            started.result()
    finally:
        os.dup2(console, 2)
        os.close(console)
        os.close(quiet)
        if own_group:
            dist.destroy_process_group()


def _stop_dcp_process() -> None:
    """End DCP's save process (torch 2.13 has no public way: its module keeps it until the interpreter exits)."""
    from torch.distributed.checkpoint import _async_process_executor as executor

    process, executor._CHECKPOINT_PROCESS = executor._CHECKPOINT_PROCESS, None
    if process is not None:
        process.__del__()  # DCP's own teardown: asks the process to end, SIGTERM after 5 s
        process._save_process.join()


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

