"""The budget of a tune, as arithmetic on seconds: no clock, no I/O (callers pass the time spent).

Everything counts: making the weights, every suite, the tuned checkpoint and the report (PHASE4_GUIDE.md, "Budget").
A candidate's prior run is the median of those rung 0 runs first; rung 0 lists OVERPLAN times more than fit and stops
when the rest no longer fits by the durations measured, so a wrong prior changes how many candidates it measures, not
the total.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ckptbench.analysis import stats
from ckptbench.bench import capacity
from ckptbench.core.errors import UserError
from ckptbench.core.units import duration_label, human_bytes
from ckptbench.spec.fields import TestSpec
from ckptbench.spec.references import REFERENCES, kind_of
from ckptbench.tune.space import DEFERRED_FACTOR, T5X

FINALISTS = 2  # the halving stops at this many, and the final compares them
PRIOR_SUITE_OVERHEAD_S = 0.5  # a suite's own work: pre-flight checks, the journal, results.json
FINISH_FIXED_S = 6.0  # tuning.json, and tuning.png (importing matplotlib takes seconds on a small machine)
OVERPLAN = 3
RUNG0_MIN_LISTED = 12  # rung 0 lists at least this many: a pessimistic prior, or candidates skipped as hopeless,
# must not leave it without candidates to measure while the budget holds more
FINAL_ROUNDS_RESERVED = 2  # final rounds (after final-1) the plan keeps room for


def mean(values: Sequence[float]) -> float:
    return stats.mean_std(stats.as_floats(values))[0]


def typical_prior_s(priors_s: Iterable[float]) -> float:
    """An unmeasured candidate's run: the median prior of those rung 0 runs first (`space.rung0_order`: within
    DEFERRED_FACTOR of the cheapest; the costlier ones run after them, and are skipped once their codec measures
    hopeless), not of the whole space, whose slow codecs rung 0 rarely reaches."""
    priors = list(priors_s)
    if not priors:
        return capacity.PRIOR_FIXED_S
    return float(np.median([p for p in priors if p <= DEFERRED_FACTOR * min(priors)]))


def prior_reference_s(name: str, model_bytes: int, first: bool = True) -> float:
    """A reference row's run before it is measured (`first`: its first run, which may do more)."""
    return capacity.prior_run_s(TestSpec(name, backend=kind_of(name) or name), model_bytes, first=first)


@dataclass
class Durations:
    """Measured wall seconds per run of each test and per suite's own overhead; predictions from them."""

    model_bytes: int
    runs: dict[str, list[float]] = field(default_factory=dict)
    overheads: list[float] = field(default_factory=list)
    prior_s: float = 0.0  # an unmeasured candidate's run (typical_prior_s); not saved: recomputed on resume

    def add(self, test: str, seconds: float) -> None:
        self.runs.setdefault(test, []).append(float(seconds))

    def typical_candidate_s(self) -> float:
        """An unmeasured candidate: the median of the measured candidates' runs (>= 3), else the prior."""
        measured = [mean(v) for k, v in self.runs.items() if kind_of(k) is None and v]
        return float(np.median(measured)) if len(measured) >= 3 else self.prior_s

    def of(self, test: str) -> float:
        """A run's predicted seconds; a reference row measured once ran as a first run (the ceiling's whole grid):
        its later runs are scaled by the ratio of its priors."""
        measured, kind = self.runs.get(test), kind_of(test)
        if measured and kind is not None:
            prior = REFERENCES[kind]
            return measured[-1] * (prior.prior_later_s_per_gb / prior.prior_s_per_gb if len(measured) == 1 else 1.0)
        if measured:
            return mean(measured)
        if kind is not None:
            return prior_reference_s(test, self.model_bytes)  # its first run
        return self.typical_candidate_s()

    def overhead_s(self) -> float:  # a suite's own work besides its runs
        return mean(self.overheads) if self.overheads else PRIOR_SUITE_OVERHEAD_S

    def suite_s(self, tests: Iterable[str]) -> float:
        return sum(self.of(t) for t in tests) + self.overhead_s()

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "overheads": self.overheads}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], model_bytes: int, prior_s: float = 0.0) -> Durations:
        return cls(model_bytes, {k: [float(s) for s in v] for k, v in data["runs"].items()},
                   [float(s) for s in data["overheads"]], prior_s)


def halving_sizes(n: int) -> list[int]:
    """Rung sizes from n candidates until FINALISTS are left: 14 -> [14, 7, 4]."""
    sizes = []
    while n > FINALISTS:
        sizes.append(n)
        n = max(FINALISTS, math.ceil(n / 2))
    return sizes or [n]


def final_s(run_s: float, references_s: float, overhead_s: float, t5x_s: float | None = None) -> float:
    """The final the budget keeps room for: final-1 (the finalists, t5x_full, the peer), then
    FINAL_ROUNDS_RESERVED rounds of the finalists, one with the peer's third run (what its interval needs)."""
    first = FINALISTS * run_s + (run_s if t5x_s is None else t5x_s) + references_s + overhead_s
    return first + FINAL_ROUNDS_RESERVED * (FINALISTS * run_s + overhead_s) + references_s


def continuation_s(n: int, run_s: float, references_s: float, overhead_s: float, t5x_s: float | None = None) -> float:
    """What follows a rung 0 of n candidates: the later halving rungs and the final (its first round with the
    reference rows, `references_s`), a survivor's run taking run_s."""
    later = halving_sizes(n)[1:]  # [n] alone when n <= FINALISTS: no later rung
    return (sum(size * run_s + overhead_s for size in later)
            + final_s(run_s, references_s, overhead_s, t5x_s))


@dataclass(frozen=True)
class Plan:
    """How the budget is meant to be spent, estimated before rung 0 from the model's size."""

    n_candidates: int  # candidates expected to fit in rung 0
    rung_sizes: list[int]
    run_s: float
    references_s: float
    overhead_s: float
    final_reserve_s: float
    rung0_s: float
    time_left_s: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan_budget(time_left_s: float, run_s: float, references_s: float, overhead_s: float, n_available: int,
                later_references_s: float | None = None) -> Plan:
    """The largest rung 0 that, with what must follow it, fits the time left. The reference rows cost
    `references_s` in rung 0 and `later_references_s` (default the same) in the final."""
    later = references_s if later_references_s is None else later_references_s

    def total(n: int) -> float:
        return n * run_s + references_s + overhead_s + continuation_s(n, run_s, later, overhead_s)

    fit = 0
    for n in range(1, n_available + 1):
        if total(n) > time_left_s:
            break
        fit = n
    return Plan(fit, halving_sizes(fit) if fit else [], run_s, references_s, overhead_s,
                final_s(run_s, later, overhead_s),
                (fit * run_s + references_s + overhead_s) if fit else 0.0, time_left_s)


def first_plan(budget_s: float, setup_s: float, model_bytes: int, references: Sequence[str], n_available: int,
               run_s: float) -> Plan:
    """The plan from the priors, after the setup (making the weights), the finish and one run of slack; a budget
    in which not even FINALISTS + 1 candidates fit is refused with the budget that would do."""
    references_s = sum(prior_reference_s(r, model_bytes) for r in references)
    # the final measures one peer again (rung 0's fastest, not known yet: the slowest to plan for)
    later_s = max([prior_reference_s(r, model_bytes, first=False) for r in references
                   if REFERENCES[kind_of(r) or r].peer],
                  default=0.0)
    left_s = budget_s - setup_s - FINISH_FIXED_S - run_s
    plan = plan_budget(left_s, run_s, references_s, PRIOR_SUITE_OVERHEAD_S, n_available, later_s)
    if plan.n_candidates < min(n_available, FINALISTS + 1):
        need_s = setup_s + FINISH_FIXED_S + run_s + plan.final_reserve_s + (
            (FINALISTS + 1) * run_s + references_s + PRIOR_SUITE_OVERHEAD_S)
        raise UserError(f"--budget: {duration_label(budget_s)} is too short for {human_bytes(model_bytes)} of "
                        f"weights: a run takes about {run_s:.0f} s and the reference rows about {references_s:.0f} s "
                        f"per rung; give at least --budget {duration_label(math.ceil(need_s / 30) * 30)}")
    return plan


def rung0_listed(plan: Plan, n_available: int) -> int:
    """How many candidates rung 0 lists: OVERPLAN times the plan's, at least RUNG0_MIN_LISTED."""
    return min(n_available, max(OVERPLAN * plan.n_candidates, RUNG0_MIN_LISTED))


def fits(elapsed_s: float, predicted_s: float, deadline_s: float) -> bool:
    """Whether something predicted to take predicted_s, started now, ends by the deadline."""
    return elapsed_s + predicted_s <= deadline_s


def final_needs_s(durations: Durations, finalists: Sequence[str], also_first: Sequence[str]) -> float:
    """The final these finalists would need: final-1 with `also_first` (t5x_full, the peer), then the reserved
    rounds. A halving rung may start only if this still fits after it."""
    peers = [n for n in also_first if kind_of(n) is not None]
    return (durations.suite_s(list(finalists) + list(also_first))
            + FINAL_ROUNDS_RESERVED * durations.suite_s(finalists) + sum(durations.of(p) for p in peers))


def survivor_run_s(durations: Durations, metric: str) -> float:
    """A survivor's run: on a time objective the mean of the faster half measured; for size, the median."""
    measured = sorted(mean(v) for k, v in durations.runs.items() if kind_of(k) is None and k != T5X and v)
    if len(measured) < 2:
        return durations.typical_candidate_s()
    if metric == "size_bytes":
        return float(np.median(measured))
    return mean(measured[:len(measured) // 2])


def rungs_left(durations: Durations, n_alive: int, time_left_s: float, references: Sequence[str],
               metric: str) -> list[int]:
    """The halving rungs the time left holds at the measured durations, after the final."""
    survivor_s, references_s = survivor_run_s(durations, metric), sum(durations.of(r) for r in references)
    left_s = time_left_s - final_s(survivor_s, references_s, durations.overhead_s(), durations.of(T5X))
    sizes = []
    for size in halving_sizes(n_alive) if n_alive > FINALISTS else []:
        left_s -= size * survivor_s + durations.overhead_s()
        if left_s < 0:
            break
        sizes.append(size)
    return sizes
