"""What a test measures: a way to write a checkpoint to a run's location and read it back.

Every back end (TensorStore in this process or in N workers, safetensors, torch.save, the device ceiling) derives from
`Backend`. The optional hooks have defaults here, so the runner calls them all unconditionally.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from ckptbench.bench import cache
from ckptbench.bench.targets import RunLocation, Target
from ckptbench.bench.verify import mismatches
from ckptbench.core.records import RunRecord
from ckptbench.sources.source_file import Box
from ckptbench.spec.fields import TestSpec
from ckptbench.spec.suite import SuiteConfig


class Backend(ABC):
    @property
    def in_memory(self) -> bool:
        """True where the checkpoint lives in RAM (memory kvstore): no page cache to drop."""
        return False

    @property
    def bypasses_page_cache(self) -> bool:
        """True where loads are meant to read around the page cache (O_DIRECT)."""
        return False

    def prepare(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Called before the clock starts (worker processes start here, buffers are allocated)."""

    def before_load(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Called after the save and before each load, outside every clock: a back end that loads into memory that
        exists before the load (a model's parameters) allocates and touches it here, so the save does not hold it."""

    @abstractmethod
    def save(self, tensors: Mapping[str, np.ndarray], location: RunLocation) -> None:
        """Write a checkpoint; return once it is durable (unless the test turns durability off)."""

    @abstractmethod
    def load(self, location: RunLocation) -> dict[str, np.ndarray]:
        """Read a checkpoint back into memory."""

    @abstractmethod
    def footprint(self, location: RunLocation) -> tuple[int, int, int]:
        """(bytes of data, bytes allocated, number of files or objects) of a saved checkpoint."""

    def evict(self, directory: Path, method: str) -> str | None:
        """Drop a saved checkpoint from the page cache before it is loaded; the method that worked, or None. Back ends
        whose writers run on other hosts evict there too."""
        return cache.evict(directory, method)

    def before_run(self, earlier: Sequence[RunRecord]) -> None:
        """Told the test's earlier runs (this suite's, a resumed journal's, an earlier suite's) before each run: the
        device ceiling runs its full grid only until one run of it has succeeded."""

    def release(self) -> None:
        """Drop whatever was kept between a save and its load."""

    def bypass_resident_bytes(self, resident_after_load: int) -> int | None:
        """A load meant to read around the page cache: the bytes of the files it read left in the page cache right after
        it (given: the whole run folder's), so the claim is measured; None where there is no claim."""
        return resident_after_load if self.bypasses_page_cache else None

    def verify(self, tensors: Mapping[str, np.ndarray], loaded: Mapping[str, np.ndarray]) -> list[str]:
        """Names of tensors that did not come back bit for bit (workers verify their own slices)."""
        return mismatches(tensors, loaded)

    def load_slices(self, location: RunLocation, boxes: Mapping[str, Box], rank: int, ranks: int
                    ) -> dict[str, np.ndarray]:
        """One tensor-parallel reader's load (rank `rank` of `ranks`): the part `boxes` selects of each tensor, as
        arrays of its own. Reference rows that can run under tp define it (spec.references: tp_load)."""
        raise NotImplementedError(f"{type(self).__name__} cannot load tensor-parallel slices")

    def worker_figures(self) -> list[dict[str, float]] | None:
        """Each worker's seconds, CPU seconds and peak RSS growth for the last save or load, if any."""
        return None

    def pattern_seconds(self) -> dict[str, float] | None:
        """Seconds per access pattern of the last save or load, for back ends that time several patterns inside one
        operation (the device ceiling); the fastest is the operation's time."""
        return None


class Wrapper(Backend):
    """A back end around another (`inner`), on the same storage and files: the hooks below are the inner one's."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def in_memory(self) -> bool:
        return self.inner.in_memory

    @property
    def bypasses_page_cache(self) -> bool:
        return self.inner.bypasses_page_cache

    def load(self, location: RunLocation) -> dict[str, np.ndarray]:
        return self.inner.load(location)

    def footprint(self, location: RunLocation) -> tuple[int, int, int]:
        return self.inner.footprint(location)

    def evict(self, directory: Path, method: str) -> str | None:
        return self.inner.evict(directory, method)

    def before_run(self, earlier: Sequence[RunRecord]) -> None:
        self.inner.before_run(earlier)

    def pattern_seconds(self) -> dict[str, float] | None:
        return self.inner.pattern_seconds()


class Writers(Protocol):
    """Who saves and loads the tests run by several processes: chosen once, where the process's role is chosen (the
    command line, or the Python API), and handed to `bench.suite.run_suite`. This package never starts or joins
    processes itself: `parallel.LocalWriters` spawns workers on this host, `parallel.session.LaunchWriters` uses the
    ranks of a launch."""

    def backend(self, test: TestSpec, config: SuiteConfig, target: Target) -> Backend:
        """The back end of a test with processes > 1."""

    def ready(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Before anything is written: every writer has its weights and reaches the storage."""
        return None

    def describe(self) -> dict[str, Any] | None:
        """What results.json records about the writers (a launch's hosts and ranks), if anything."""
        return None

    def close(self) -> None:
        """After the suite: stop every writer this object started."""
        return None


class ThisProcess(Writers):
    """Writers of a suite whose tests all run in this process."""

    def backend(self, test: TestSpec, config: SuiteConfig, target: Target) -> Backend:
        raise ValueError(f"test {test.name!r} needs {test.processes} processes; run the suite with writers that "
                         "start them (parallel.LocalWriters)")
