"""`tune`'s progress events: what the search tells the display (reports.progress.TuneProgress), one frozen dataclass per
kind. Here, below both, so that tune/ makes them and reports/ reads them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ckptbench.core.records import RunRecord


@dataclass(frozen=True)
class Estimate:
    """Before rung 0: the plan from the priors (budget.Plan.to_json()) and the space."""

    plan: Mapping[str, Any]
    weights: Mapping[str, Any]  # the weights' description (size_bytes, dtype, values...)
    objective: str
    budget_s: float
    seed: int
    setup_s: float
    n_candidates: int
    n_skipped: int
    n_duplicates: int
    n_listed: int  # candidates rung 0 lists (it measures them while the rest still fits)
    references: Sequence[str]  # the reference rows rung 0 measures


@dataclass(frozen=True)
class StageStarted:
    name: str
    kind: str
    n_tests: int
    candidates_left: int
    time_left_s: float
    planned_s: float
    resumed: bool


@dataclass(frozen=True)
class Phase:
    stage: str
    test: str
    phase: str


@dataclass(frozen=True)
class RunEnded:
    stage: str
    record: RunRecord
    done: int
    total: int
    candidates_left: int
    time_left_s: float


@dataclass(frozen=True)
class Skipped:
    """A candidate not run: its codec, measured earlier in the tune, predicts it hopeless."""

    stage: str
    test: str
    reason: str


@dataclass(frozen=True)
class Corrected:
    """After rung 0: its estimate against what it measured, and the rungs the time left holds."""

    planned: int
    listed: int
    measured: int
    run_s_estimated: float
    run_s_measured: float | None
    references_s_estimated: float
    references_s_measured: float
    rung0_s: float
    next_rungs: list[int]
    time_left_s: float


@dataclass(frozen=True)
class StageEnded:
    name: str
    kind: str
    status: str
    decision: Mapping[str, Any]
    eliminated: int
    time_left_s: float


@dataclass(frozen=True)
class Finishing:
    time_left_s: float


TuneEvent = Estimate | StageStarted | Phase | RunEnded | Skipped | Corrected | StageEnded | Finishing
