"""`RunContext`: what one suite run needs, in one frozen object, chosen once by the caller and handed to
`bench.suite.run_suite`; an `Executor` is run_suite or what a test injects in its place (tune, explain)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from ckptbench.bench.backend import ThisProcess, Writers
from ckptbench.core.records import PlannedRun, RunRecord
from ckptbench.documents.results import Results
from ckptbench.sources.weights import Weights
from ckptbench.spec.suite import SuiteConfig


@dataclass(frozen=True)
class Start:
    """What a starting suite is about to do, for a progress display."""

    weights: dict[str, Any]
    n_tests: int
    num_runs: int
    warmup_rounds: int
    total_runs: int
    seed: int
    resumed_runs: int
    confirmation_runs: int = 0  # at most this many after the rounds (the finalists are known only then)


class Observer(Protocol):
    """Told what a suite does as it goes (a progress display, tune's and explain's bookkeeping); measures nothing."""

    def start(self, start: Start) -> None: ...
    def phase(self, planned: PlannedRun, phase: str) -> None: ...
    def record(self, record: RunRecord) -> None: ...


def _ignore(*_args: Any) -> None:
    pass


@dataclass(frozen=True)
class Callbacks:
    """An `Observer` of functions, each optional (`Callbacks()` says nothing)."""

    start: Callable[[Start], None] = _ignore
    phase: Callable[[PlannedRun, str], None] = _ignore
    record: Callable[[RunRecord], None] = _ignore


@dataclass(frozen=True)
class RunContext:
    """One suite run. `writers`: who runs the tests with processes > 1 (the suite stops them at its end).
    `may_start(run)`, asked before each run: a reason (a spent budget) stops the suite there, as a stop signal does; a
    `core.errors.Skip` skips that run alone. `resume` continues the suite's journal; `keep` leaves each test's last
    checkpoint on disk; `source`: weights in memory matching the config (None: made or read here); `history`: earlier
    suites' runs whose back ends' choices carry over (tune: the ceiling's fastest patterns)."""

    config: SuiteConfig
    writers: Writers = field(default_factory=ThisProcess)
    observer: Observer = Callbacks()
    may_start: Callable[[PlannedRun], str | None] = lambda _planned: None
    resume: bool = False
    keep: bool = False
    source: Weights | None = None
    history: Sequence[RunRecord] = ()


Executor = Callable[[RunContext], Results]
