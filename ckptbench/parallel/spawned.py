"""--processes N: N workers this process spawns on this host, ranks 1..N of a world whose rank 0 it is.

The workers map the parent's source file (shared.handoff: one copy per host, in the page cache). `spawn`, not fork:
TensorStore aborts a process that forks after its threads started. A worker that dies fails the run at once; the pool is
then stopped and started afresh for the next run, and no process is left behind.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import signal
import sys
import time
from typing import Any, Mapping

import numpy as np

from ckptbench.bench.backend import Backend, Writers
from ckptbench.bench.targets import Target
from ckptbench.parallel.backend import backend_of
from ckptbench.parallel.launch import Launch
from ckptbench.parallel.shared import MappedSource, SharedTensors, WeightSource, handoff
from ckptbench.parallel.world import START_TIMEOUT_S, Broken, World, connect_store, process_alive
from ckptbench.parallel.writers import LOOPBACK, WorkerFailed, WriterPool, serve
from ckptbench.spec.fields import TestSpec
from ckptbench.spec.suite import SuiteConfig


class Pool(WriterPool):
    """--processes N: N spawned workers on this host, ranks 1..N of a world whose rank 0 is this process."""

    def __init__(self, processes: int, fallback: WeightSource) -> None:
        super().__init__(list(range(1, processes + 1)))
        self.fallback = fallback  # used where shared memory cannot hold the weights
        self._workers: list[Any] = []
        self._shared: SharedTensors | None = None

    @staticmethod
    def worker_main(launch: Launch, source: MappedSource | SharedTensors | WeightSource) -> None:
        """What each spawned worker runs (picklable by name: a test's pool runs an instrumented one)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
        tensors = source.open()
        store = connect_store(launch)
        store.set(f"ready/{launch.rank}", "1")
        try:
            serve(World.join(launch, store=store), tensors, label=f"worker {launch.rank - 1}")
        except Broken:
            sys.exit(1)  # the parent saw it too, and reports it

    def label(self, rank: int) -> str:
        return f"worker {rank - 1}"

    def start(self, tensors: Mapping[str, np.ndarray]) -> None:
        if self.world is not None:
            return
        store = connect_store(Launch("processes", 0, self.processes + 1, 0, LOOPBACK, 0))  # rank 0's, any free port
        launch = Launch("processes", 0, self.processes + 1, 0, LOOPBACK, store.port)
        source = handoff(tensors, self.fallback)
        self._shared = source if isinstance(source, SharedTensors) else None
        spawn = multiprocessing.get_context("spawn")
        try:
            for rank in self.writers:
                worker = spawn.Process(target=self.worker_main, name=f"ckptbench-worker-{rank - 1}", daemon=True,
                                       args=(dataclasses.replace(launch, rank=rank, local_rank=rank), source))
                worker.start()
                self._workers.append(worker)
            self._wait_ready(store)
            world = World.join(launch, store=store)
        except BaseException:
            self.stop()
            raise
        world.rank_label = self.label
        self.world = world
        if self._shared is not None:  # every worker has mapped it: the memory lives as long as a mapping does
            self._shared.remove()
            self._shared = None

    def _wait_ready(self, store: Any) -> None:
        keys = [f"ready/{rank}" for rank in self.writers]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not store.check(keys):
            dead = self._first_dead()
            if dead or time.monotonic() > deadline:
                raise WorkerFailed(f"{dead} during start-up" if dead else
                                   f"workers did not finish start-up within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.02)

    def _first_dead(self) -> str | None:
        for rank, worker in zip(self.writers, self._workers):
            if not process_alive(worker.pid):  # as the world sees it: its other threads may still be exiting
                worker.join(timeout=5)  # reap it, so its exit code is known
                return f"{self.label(rank)} (pid {worker.pid}) exited with code {worker.exitcode}"
        return None

    def _lost(self, broken: Broken, during: str) -> BaseException:
        dead = self._first_dead()
        self.stop()
        return WorkerFailed(f"{dead} during {during}" if dead else f"{broken} during {during}")

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def stop(self) -> None:
        """Stop every worker: ask, then terminate, then kill; none is left behind."""
        world, self.world, asked = self.world, None, False
        if world is not None and not world.broken:  # a broken world cannot carry the request: terminate
            try:
                world.broadcast(("stop", 0), timeout_s=10)
                asked = True
            except Broken:
                pass
        for worker in self._workers:
            worker.join(timeout=2 if asked else 0)
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=3)
            if worker.is_alive():
                worker.kill()
                worker.join()
        if world is not None:
            world.close()
        if self._shared is not None:
            self._shared.remove()
        self._workers, self._shared, self._rounds, self._replies = [], None, [], None
        self._coordinator = None


class LocalWriters(Writers):
    """The writers of a run on this host: a pool of spawned workers per process count and weights, for the suite."""

    def __init__(self) -> None:
        self.pools: dict[tuple[int, str], Pool] = {}

    def backend(self, test: TestSpec, config: SuiteConfig, target: Target) -> Backend:
        source = WeightSource(config.model, config.weights, config.dtype, config.values_for(test))
        key = (test.processes, source.values)  # each pool's workers hold the weights they were started with
        if key not in self.pools:
            self.pools[key] = Pool(test.processes, source)
        return backend_of(test, config, target, self.pools[key])

    def close(self) -> None:
        for pool in self.pools.values():
            pool.stop()
