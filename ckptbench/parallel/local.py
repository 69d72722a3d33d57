"""The writers of a run on this host: tests with `processes` N (tp N) are run by N workers this process spawns."""

from __future__ import annotations

from typing import Any, Mapping

from ckptbench.bench.backend import Backend
from ckptbench.bench.targets import Target
from ckptbench.parallel.backend import backend_of
from ckptbench.parallel.shared import WeightSource
from ckptbench.parallel.spawned import Pool
from ckptbench.spec.fields import TestSpec
from ckptbench.spec.suite import SuiteConfig


class LocalWriters:
    """One pool of spawned workers per process count and weights, kept for the whole suite."""

    def __init__(self) -> None:
        self.pools: dict[tuple[int, str], Pool] = {}

    def backend(self, test: TestSpec, config: SuiteConfig, target: Target) -> Backend:
        source = WeightSource(config.model, config.weights, config.dtype, config.values_for(test))
        key = (test.processes, source.values)  # each pool's workers hold the weights they were started with
        if key not in self.pools:
            self.pools[key] = Pool(test.processes, source)
        return backend_of(test, config, target, self.pools[key])

    def ready(self, tensors: Mapping[str, Any]) -> None:
        pass  # workers start with the first run of a test that needs them

    def describe(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        for pool in self.pools.values():
            pool.stop()
