"""The loop of a tune: stage after stage, each a normal suite run by the injected executor (run_suite: fsync'd
saves, cold loads, verified, a journal for `--resume`) in its own folder, all sharing the weights made once.

The budget is kept only through run_suite's `may_start` hook: a run not expected to end in time
(policy.may_start) is not started, and run_suite stops there, writes the partial results and raises `Stopped`
with cause BUDGET, which ends the stage with status "budget". Nothing is raised from the callbacks, so a suite
always ends through its own cleanup.
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
from ckptbench.core import tune_events as events
from ckptbench.core.errors import Skip, Stopped
from ckptbench.core.records import PlannedRun, RunRecord
from ckptbench.documents import journal
from ckptbench.sources.weights import Weights
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

Event = Callable[[events.TuneEvent], None]  # on_event(event): the progress display's input


class Stopwatch:
    """Seconds of the budget spent: earlier sessions' (a resumed tune) and this one's, by the injected clock."""

    def __init__(self, clock: Callable[[], float], spent_before_s: float = 0.0) -> None:
        self.clock, self.start_s = clock, clock() - spent_before_s

    def __call__(self) -> float:
        return self.clock() - self.start_s


@dataclass
class Session:
    """One session of a tune once its weights are made and its state planned or read back."""

    settings: Settings
    out: Path
    universe: Universe
    source: Weights  # made once and shared by every suite
    state: TuneState
    documents: dict[str, dict[str, Any]]  # stage name -> its results.json
    emit: Event
    elapsed_s: Stopwatch

    def time_left_s(self) -> float:
        return self.state.budget_s - self.elapsed_s()

    def situation(self) -> policy.Situation:
        return policy.Situation(self.documents, self.settings.metric, self.settings.noise_pct, self.state.seed,
                                self.elapsed_s(), self.settings.references, T5X in self.universe.tests,
                                self.codecs, self.state.durations.model_bytes)

    @cached_property
    def codecs(self) -> dict[str, str]:  # each candidate's compression: what predicts it hopeless in rung 0
        return {name: compression_label(test.compression) for name, test in self.universe.tests.items()}

    def save(self) -> None:
        self.state.spent_s = self.elapsed_s()
        tune_state.save(self.state, self.out)


def run_stages(session: Session, execute: Executor) -> None:
    """Run stages until the policy says stop. Each decision replaces the state in one assignment, so a stop at
    any point resumes consistently."""
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
                                       references=len(entries) < len(members), seed=stage.seed)
    suite = config_mod.from_dict(data, source=f"tune {stage.name}")
    by_name = {t.name: t for t in suite.tests}
    return dataclasses.replace(suite, tests=tuple(by_name[n] for n in members if n in by_name))


def _run_stage(session: Session, stage: Stage, execute: Executor) -> str:
    """Run (or continue) a stage's suite; its status: complete, or budget when `may_start` stopped it."""
    folder = session.out / stage.name
    suite = _suite(session, stage)
    again = stage.started_s is not None and (folder / journal.JOURNAL_FILE).is_file()
    if stage.started_s is None:
        stage.started_s = session.elapsed_s()
    workspace.prepare_output_dir(folder)
    (folder / workspace.RUN_MARKER).touch()  # deletable by a later fresh tune in this folder
    state = session.state
    left = (sum(kind_of(n) is None for n in stage.members) if stage.name == "rung-0"
            else len(state.finalists if stage.kind == FINAL else state.alive))
    session.emit(events.StageStarted(stage.name, stage.kind, len(suite.tests), left, session.time_left_s(),
                                     stage.planned_s, again))
    durations = session.state.durations
    started_s, runs_s, done = session.elapsed_s(), [0.0], [0]

    def may_start(planned: PlannedRun) -> str | None:
        # a hopeless candidate is skipped, not a reason to end the stage (the cheaper ones after it may fit)
        skip = policy.skip_reason(session.state, stage, planned.test, session.situation())
        if skip is not None:
            session.state.eliminated[planned.test] = skip
            session.save()
            session.emit(events.Skipped(stage.name, planned.test, skip["reason"]))
            return Skip(skip["reason"])
        return None if policy.may_start(session.state, stage, planned.test, session.situation()) else BUDGET

    def on_phase(planned: PlannedRun, phase: str) -> None:
        session.emit(events.Phase(stage.name, planned.test, phase))

    def on_record(record: RunRecord) -> None:
        seconds = max(0.0, time.time() - record.started_at)
        runs_s[0] += seconds
        done[0] += 1
        if record.ok:
            durations.add(record.test, seconds)
        _note_run(session, stage.name, record)
        session.save()
        session.emit(events.RunEnded(stage.name, record, done[0], len(suite.tests), left, session.time_left_s()))

    # the device ceiling's runs in earlier stages: its full grid runs once per tune, in rung 0
    history = [RunRecord.from_json(run) for doc in session.documents.values() for test in doc["tests"]
               if test["name"] == CEILING for run in test["runs"]]
    status = COMPLETE
    try:
        outcome = execute(RunContext(suite, observer=Callbacks(phase=on_phase, record=on_record), may_start=may_start,
                                     resume=again, source=session.source, history=history))
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
    """Add a run to the running stage's results as the decisions read them (rung 0's skips compare a candidate
    with the best measured before it, in this stage too) until run_suite's own document replaces them."""
    document = session.documents.setdefault(
        stage_name, {"weights": {"size_bytes": session.state.durations.model_bytes}, "tests": []})
    test = next((t for t in document["tests"] if t["name"] == record.test), None)
    if test is None:
        document["tests"].append(test := {"name": record.test, "runs": []})
    test["runs"].append(record.to_json())


def _conclude(session: Session, status: str) -> TuneState:
    """The state after the latest stage (policy.conclude), and after rung 0 what it says of the rest of the plan."""
    state = policy.conclude(session.state, status, session.situation())
    stage = state.stages[-1]
    if stage.name == "rung-0":
        corrected = _corrected(session, state)
        state.corrected = dataclasses.asdict(corrected)
        session.emit(corrected)
    session.emit(events.StageEnded(stage.name, stage.kind, status, stage.decision or {},
                                   len((stage.decision or {}).get("eliminated", [])), session.time_left_s()))
    return state


def _corrected(session: Session, state: TuneState) -> events.Corrected:
    """After rung 0 (`state`: its conclusion): the estimate against what was measured, and what the time left
    holds."""
    plan, durations, stage = state.plan, state.durations, state.stages[0]
    situation = session.situation()
    references = situation.references
    measured = [n for n in stage.members if kind_of(n) is None and n not in state.not_measured]  # in running order
    run_s = [durations.of(n) for n in measured]
    time_left_s = state.budget_s - situation.elapsed_s
    # the finish's reserve as it stood while rung 0 ran, before its survivors were known (session.state is
    # still the state before this conclusion)
    reserve_s = policy.finish_reserve_s(session.state, situation)
    return events.Corrected(
        plan.n_candidates, len(stage.members) - len(references), len(measured), plan.run_s,
        budget.mean(run_s) if run_s else None, plan.references_s,
        sum(durations.runs[r][0] for r in references if durations.runs.get(r)),
        (stage.ended_s or 0.0) - (stage.started_s or 0.0),
        budget.rungs_left(durations, len(state.alive), time_left_s - reserve_s,
                          policy.final_references(state, situation), situation.metric), time_left_s)
