"""The loop of a tune: stage after stage, each a normal suite, until the policy says stop.

Every measurement is a normal suite run by a `bench.context.Executor`
(`bench.suite.run_suite` itself unless a test injects another: fsync'd saves, cold loads,
bit-exact verification, a journal for `--resume`), one suite per stage, each in its own
folder under the tune folder, all sharing the weights made once. This is the only code
that runs suites.

The budget is enforced only through run_suite's `may_start` hook: before each run it
answers whether the run is expected to end in time (policy.may_start), and a reason
not to start makes run_suite stop there, write the partial results and raise `Stopped`
with cause BUDGET, which ends the stage with status "budget". Nothing is raised from the
callbacks, so a suite always ends through its own cleanup.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from ckptbench.bench import workspace
from ckptbench.bench.context import Callbacks, Executor, RunContext
from ckptbench.core.errors import Skip, Stopped
from ckptbench.core.records import PlannedRun, RunRecord
from ckptbench.documents import journal
from ckptbench.spec import config as config_mod
from ckptbench.spec.compression import label as compression_label
from ckptbench.spec.fields import entry
from ckptbench.spec.references import CEILING, kind_of
from ckptbench.spec.suite import SuiteConfig
from ckptbench.tune import budget, policy
from ckptbench.tune import state as tune_state
from ckptbench.tune.settings import Settings
from ckptbench.tune.space import T5X, Universe
from ckptbench.tune.state import BUDGET, COMPLETE, FINAL, RUNNING, Stage, TuneState

Event = Callable[[str, dict[str, Any]], None]  # on_event(kind, data): the progress display's input


class Stopwatch:
    """Seconds of the budget spent: earlier sessions' (a resumed tune), and this one's since it began, by the
    injected clock (a test's virtual clock, or time.monotonic)."""

    def __init__(self, clock: Callable[[], float], spent_before_s: float = 0.0) -> None:
        self.clock, self.spent_before_s, self.start_s = clock, spent_before_s, clock()

    def __call__(self) -> float:
        return self.spent_before_s + self.clock() - self.start_s


@dataclass
class Session:
    """One session of a tune once its weights are made and its state planned or read back: what the loop and
    the finish read, and the state they replace."""

    settings: Settings
    out: Path
    universe: Universe
    source: Any  # sources.weights.Weights, made once and shared by every suite
    state: TuneState
    documents: dict[str, dict[str, Any]]  # stage name -> its results.json
    emit: Event
    elapsed_s: Stopwatch

    def time_left_s(self) -> float:
        return self.state.budget_s - self.elapsed_s()

    def situation(self) -> policy.Situation:
        """What a decision reads now, besides the state."""
        return policy.Situation(self.documents, self.settings.metric, self.settings.noise_pct, self.state.seed,
                                self.elapsed_s(), self.settings.references, T5X in self.universe.tests,
                                self.codecs, self.state.durations.model_bytes)

    @cached_property
    def codecs(self) -> dict[str, str]:
        """Each candidate's compression, in words: what predicts a candidate from those measured before it."""
        return {name: compression_label(test.compression) for name, test in self.universe.tests.items()}

    def save(self) -> None:
        """The state with the time spent so far, written atomically: after every run and every decision."""
        self.state.spent_s = self.elapsed_s()
        tune_state.save(self.state, self.out)


def run_stages(session: Session, execute: Executor) -> None:
    """Run stages until the policy says stop. A stage stays "running" until its decision is made, and each
    decision replaces the state in one assignment, so a stop at any point resumes consistently."""
    while True:
        stage = session.state.stage
        if stage is not None and stage.status == RUNNING:
            status = _run_stage(session, stage, execute)
            session.state = _conclude(session, status)
        else:
            before = len(session.state.stages)
            session.state = policy.next_stage(session.state, session.situation())
            if len(session.state.stages) == before:  # no stage added: the search is over
                session.save()
                return
        session.save()


def _suite(session: Session, stage: Stage) -> SuiteConfig:
    """The stage's suite, validated by config.from_dict like any other, then put in the stage's order."""
    members = stage.members
    entries = [entry(session.universe.tests[n]) for n in members if kind_of(n) is None]
    data = session.settings.suite_data(entries, session.out / stage.name,
                                       references=any(kind_of(n) is not None for n in members), seed=stage.seed)
    suite = config_mod.from_dict(data, source=f"tune {stage.name}")
    by_name = {t.name: t for t in suite.tests}
    return dataclasses.replace(suite, tests=tuple(by_name[n] for n in members if n in by_name))


def _candidates_left(state: TuneState, stage: Stage) -> int:
    if stage.name == "rung-0":
        return len([n for n in stage.members if kind_of(n) is None])
    return len(state.finalists) if stage.kind == FINAL else len(state.alive)


def _run_stage(session: Session, stage: Stage, execute: Executor) -> str:
    """Run (or continue) a stage's suite; its status: complete, or budget when `may_start` stopped it."""
    folder = session.out / stage.name
    suite = _suite(session, stage)
    again = stage.started_s is not None and (folder / journal.JOURNAL_FILE).is_file()
    if stage.started_s is None:
        stage.started_s = session.elapsed_s()
    workspace.prepare_output_dir(folder)
    (folder / workspace.RUN_MARKER).touch()  # deletable by a later fresh tune in this folder
    left = _candidates_left(session.state, stage)
    session.emit("stage", {"name": stage.name, "kind": stage.kind, "n_tests": len(suite.tests),
                           "candidates_left": left, "time_left_s": session.time_left_s(),
                           "planned_s": stage.planned_s, "resumed": again})
    durations = session.state.durations
    started_s, runs_s, done = session.elapsed_s(), [0.0], [0]

    def may_start(planned: PlannedRun) -> str | None:
        # a hopeless candidate is skipped, not a reason to end the stage (the cheaper ones after it may fit)
        skip = policy.skip_reason(session.state, stage, planned.test, session.situation())
        if skip is not None:
            session.state.eliminated[planned.test] = skip
            session.save()
            session.emit("skipped", {"stage": stage.name, "test": planned.test, "reason": skip["reason"]})
            return Skip(skip["reason"])
        return None if policy.may_start(session.state, stage, planned.test, session.situation()) else BUDGET

    def on_phase(planned: PlannedRun, phase: str) -> None:
        session.emit("phase", {"stage": stage.name, "test": planned.test, "phase": phase})

    def on_record(record: RunRecord) -> None:
        seconds = max(0.0, time.time() - record.started_at)
        runs_s[0] += seconds
        done[0] += 1
        if record.ok:
            durations.add(record.test, seconds)
        _note_run(session, stage.name, record)
        session.save()
        session.emit("run", {"stage": stage.name, "record": record, "seconds": seconds, "done": done[0],
                             "total": len(suite.tests), "candidates_left": left,
                             "time_left_s": session.time_left_s()})

    status = COMPLETE
    try:
        outcome = execute(RunContext(suite, observer=Callbacks(phase=on_phase, record=on_record), may_start=may_start,
                                     resume=again, source=session.source, history=_earlier_ceiling_runs(session)))
    except Stopped as stop:
        if stop.partial is not None:  # the suite's own results replace the runs noted as they ended
            session.documents[stage.name] = stop.partial.document
        if stop.cause != Stopped.BUDGET:
            raise
        outcome, status = stop.partial, stop.reason
    finally:
        durations.overheads.append(max(0.0, session.elapsed_s() - started_s - runs_s[0]))
    stage.ended_s = session.elapsed_s()
    session.documents[stage.name] = outcome.document
    return status


def _note_run(session: Session, stage_name: str, record: RunRecord) -> None:
    """Add a run to the running stage's results as the decisions read them until run_suite returns its own
    document, which replaces this one (rung 0's skips compare a candidate with the best measured before it,
    in this stage too)."""
    document = session.documents.get(stage_name)
    if document is None:
        document = {"weights": {"size_bytes": session.state.durations.model_bytes}, "tests": []}
        session.documents[stage_name] = document
    test = next((t for t in document["tests"] if t["name"] == record.test), None)
    if test is None:
        test = {"name": record.test, "runs": []}
        document["tests"].append(test)
    test["runs"].append(record.to_json())


def _earlier_ceiling_runs(session: Session) -> list[RunRecord]:
    """The device ceiling's runs in earlier stages: its full grid runs once per tune, in rung 0."""
    return [RunRecord.from_json(run) for doc in session.documents.values() for test in doc["tests"]
            if test["name"] == CEILING for run in test["runs"]]


def _conclude(session: Session, status: str) -> TuneState:
    """The state after the latest stage (policy.conclude), and after rung 0 what its measurements say of the
    rest of the plan; the progress display hears both."""
    state = policy.conclude(session.state, status, session.situation())
    stage = state.stages[-1]
    if stage.name == "rung-0":
        state.corrected = _corrected(session, state)
        session.emit("corrected", dict(state.corrected))
    session.emit("stage_end", {"name": stage.name, "kind": stage.kind, "status": status,
                               "decision": stage.decision, "alive": len(state.alive),
                               "eliminated": len(stage.decision.get("eliminated", [])),
                               "time_left_s": session.time_left_s()})
    return state


def _corrected(session: Session, state: TuneState) -> dict[str, Any]:
    """After rung 0 (`state`: its conclusion): the estimate against what was measured, and what the rest of
    the budget now holds."""
    plan, durations, stage = state.plan, state.durations, state.stages[0]
    situation = session.situation()
    references = situation.references
    measured = policy.rung0_measured(state)
    run_s = [durations.of(n) for n in measured]
    time_left_s = state.budget_s - situation.elapsed_s
    # the finish's reserve as it stood while rung 0 ran, before its survivors were known (session.state is
    # still the state before this conclusion)
    reserve_s = policy.finish_reserve_s(session.state, situation)
    return {
        "planned": plan.n_candidates, "listed": len(stage.members) - len(references),
        "measured": len(measured),
        "run_s_estimated": plan.run_s, "run_s_measured": budget.mean(run_s) if run_s else None,
        "references_s_estimated": plan.references_s,
        "references_s_measured": sum(durations.runs[r][0] for r in references if durations.runs.get(r)),
        "rung0_s": (stage.ended_s or 0.0) - (stage.started_s or 0.0),
        "next_rungs": budget.rungs_left(durations, len(state.alive), time_left_s - reserve_s,
                                        policy.final_references(state, situation), situation.metric),
        "time_left_s": time_left_s,
    }
