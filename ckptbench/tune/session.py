"""A tune from start to finish: `run` (fresh) and `resume` (an interrupted one), both within a budget.

A session makes the weights once, plans the budget (fresh) or reads the state back (resumed), runs the stages
(loop.run_stages), then finishes: the recommendation, the tuned checkpoint read back with the printed spec,
tuning.json and the figure (the caller's `draw`: the command renders; drawn here, as the budget reserves its
time). A stop saves everything and raises `Stopped` with the partial tuning as `.partial`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ckptbench.bench import capacity, preflight, workspace
from ckptbench.bench.context import Executor
from ckptbench.bench.suite import run_suite
from ckptbench.core import interrupt
from ckptbench.core import tune_events as events
from ckptbench.core.errors import Stopped, UserError
from ckptbench.core.records import new_seed
from ckptbench.documents import journal, results
from ckptbench.sources import weights
from ckptbench.spec import config as config_mod
from ckptbench.spec.fields import entry
from ckptbench.spec.presets import NUMPY_DTYPES
from ckptbench.spec.suite import SuiteConfig
from ckptbench.tune import budget, document, policy
from ckptbench.tune import state as tune_state
from ckptbench.tune.answer import describe_layout, recommend
from ckptbench.tune.checkpoint import write_tuned
from ckptbench.tune.document import TUNING_FILE, Tuning
from ckptbench.tune.loop import Event, Session, Stopwatch, run_stages
from ckptbench.tune.settings import Settings, check_settings
from ckptbench.tune.space import Universe, candidates, load_space, make_universe, rung0_order
from ckptbench.tune.state import STATE_FILE, TuneState

Draw = Callable[[Mapping[str, Any], Path], Path | None]  # (tuning document, folder) -> the figure's path
SOURCE_DIR = "source"  # the source weights every stage reads, removed when the tune ends


@dataclass(frozen=True)
class Hooks:
    """What the caller injects: `on_event(event)` hears the progress (core.tune_events), `clock` times the
    budget, `execute` runs each stage's suite (run_suite; a test injects made-up runs), `draw(document, folder)`
    draws the figure into folder (none without it)."""

    on_event: Event = lambda _event: None
    clock: Callable[[], float] = time.monotonic
    execute: Executor = run_suite
    draw: Draw | None = None


@dataclass(frozen=True)
class _Setup:
    """A tune's inputs, checked, before any weights are made: the settings (with the space's peer settings and
    the weights' folder resolved), the space, its candidates for the planned weights and their priors."""

    settings: Settings
    space: dict[str, Any]
    space_source: str
    base: SuiteConfig
    planned: weights.Planned
    universe: Universe
    priors_s: dict[str, float]

    def first_plan(self, setup_s: float) -> budget.Plan:
        return budget.first_plan(self.settings.budget_s, setup_s, self.planned.size_bytes, self.settings.references,
                                 len(self.universe.tests), budget.typical_prior_s(self.priors_s.values()))


def _setup(settings: Settings, space: dict[str, Any], space_source: str) -> _Setup:
    # the peers' settings, and every row's destination
    settings = dataclasses.replace(settings, reference_rows=space.get("references", {}),
                                   load_into=space.get("load_into", "new"))
    base = candidates(space, settings, space_source)  # the space and the settings checked before the weights
    settings = dataclasses.replace(settings, weights=base.weights)
    planned = weights.plan(base.model, base.weights, base.dtype, base.values)  # no weights made yet
    universe = make_universe(space, base, [shape for _, shape in planned.shapes])
    itemsize = NUMPY_DTYPES[base.dtype].itemsize
    priors_s = {name: capacity.prior_run_s(test, planned.size_bytes, itemsize) for name, test in universe.tests.items()}
    return _Setup(settings, space, space_source, base, planned, universe, priors_s)


def run(settings: Settings, hooks: Hooks = Hooks()) -> Tuning:
    """Tune (the package docstring); the document is also written to OUTPUT_DIR/tuning.json."""
    check_settings(settings)
    return _start(settings, None, hooks)


def dry_run(settings: Settings) -> dict[str, Any]:
    """What a tune would do, written nowhere: the space, the budget's first plan (or why the budget cannot
    fit, with the budget that would), and the pre-check of its heaviest candidates' disk and memory."""
    check_settings(settings)
    workspace.check_output_dir(Path(settings.output_dir).resolve())
    setup = _setup(settings, load_space(settings.space_path), str(settings.space_path))
    universe, planned = setup.universe, setup.planned
    setup_s = capacity.PRIOR_SOURCE_S_PER_GB * planned.size_bytes / 1e9
    plan, n_listed, refusal = None, 0, None
    try:
        plan = setup.first_plan(setup_s)
        n_listed = budget.rung0_listed(plan, len(universe.tests))
    except UserError as exc:
        refusal = str(exc)
    checked = preflight.check(dataclasses.replace(setup.base, tests=tuple(universe.tests.values())), whole=False)
    return {"weights": planned.describe(), "budget_s": settings.budget_s, "objective": settings.objective,
            "n_candidates": len(universe.tests), "n_skipped": len(universe.skipped),
            "n_duplicates": len(universe.duplicates), "run_s": budget.typical_prior_s(setup.priors_s.values()),
            "setup_s": setup_s, "references": list(setup.settings.references),
            "plan": plan.to_json() if plan else None, "n_listed": n_listed, "preflight": checked.to_json(),
            "refusal": refusal or checked.refusal}


def resume(output_dir: Path | str, *, given: Mapping[str, Any] | None = None, budget_s: float | None = None,
           keep_checkpoint: bool | None = None, hooks: Hooks = Hooks()) -> Tuning:
    """Continue an interrupted tune in output_dir. `given`: settings stated again (e.g. on the command
    line), which must equal the interrupted tune's; `budget_s`: a new total budget (what was spent counts)."""
    output_dir = Path(output_dir).resolve()
    state = tune_state.load(output_dir)
    stored = state.settings
    differences = [f"{key}: was {stored.get(key)!r}, now {value!r}" for key, value in (given or {}).items()
                   if value is not None and key in stored and _normalized(key, value) != stored.get(key)]
    if differences:
        raise UserError(f"--resume: the tune differs from the interrupted one ({'; '.join(differences)}); resume "
                        "with the same settings, or start afresh without --resume")
    settings = Settings(output_dir=output_dir, **stored, seed=state.seed,
                        budget_s=float(budget_s if budget_s is not None else state.budget_s),
                        keep_checkpoint=bool(state.keep_checkpoint if keep_checkpoint is None else keep_checkpoint))
    check_settings(settings)
    return _start(settings, state, hooks)


def _normalized(key: str, value: Any) -> Any:
    """A setting as the state holds it: a weights folder given relative to here, as an absolute path."""
    if key == "weights" and value is not None:
        return config_mod.weights_source(str(value), Path.cwd())
    return value


def _start(settings: Settings, state: TuneState | None, hooks: Hooks) -> Tuning:
    """One session: fresh (`state` None) or resumed from the state an earlier session saved."""
    elapsed_s = Stopwatch(hooks.clock, state.spent_s if state is not None else 0.0)
    out = Path(settings.output_dir).resolve()
    if state is not None:
        state.budget_s, state.keep_checkpoint = settings.budget_s, settings.keep_checkpoint
        space, space_source = state.space, state.space_path
        if state.phase == "done" and (out / TUNING_FILE).is_file():
            return document.read(out / TUNING_FILE)
    else:
        workspace.check_output_dir(out)
        space, space_source = load_space(settings.space_path), str(settings.space_path)
    session = None
    source_dir: Path | None = None
    try:
        with interrupt.signals_raise():
            setup = _setup(settings, space, space_source)
            if state is not None:
                _check_resumed_weights(state, setup.planned)
            else:
                state = _plan(setup, elapsed_s)
            state.durations.prior_s = budget.typical_prior_s(setup.priors_s.values())
            # The weights every suite shares, made (or read) once into a source file, untimed by the suites.
            source_dir = workspace.new_owned_dir(out, SOURCE_DIR)
            source = setup.planned.to_file(source_dir)
            # the results of every stage that wrote them (an interrupted stage's are partial)
            documents = {stage.name: results.read(path).document for stage in state.stages
                         if (path := out / stage.name / results.RESULTS_FILE).is_file()}
            session = Session(setup.settings, out, setup.universe, source, state, documents, hooks.on_event, elapsed_s)
            if not state.stages:
                session.save()
                universe, resolved = setup.universe, setup.settings
                session.emit(events.Estimate(state.plan.to_json(), setup.planned.describe(), resolved.objective,
                                             resolved.budget_s, state.seed, state.setup_s or 0.0, len(universe.tests),
                                             len(universe.skipped), len(universe.duplicates), len(state.rung0_order),
                                             resolved.references))
            run_stages(session, hooks.execute)
            return _finish(session, setup.base, hooks.draw)
    except Stopped as stop:
        if session is not None:  # before that, nothing was written
            session.save()
            partial = document.build(session, complete=False)
            stop.partial = Tuning(partial, document.write(partial, session.out))
        raise
    finally:
        if source_dir is not None and source_dir.exists():
            workspace.remove_owned(source_dir)


def _plan(setup: _Setup, elapsed_s: Stopwatch) -> TuneState:
    """Estimate what fits the budget, then write the first state (the tune's first write)."""
    settings, model_bytes = setup.settings, setup.planned.size_bytes
    out = Path(settings.output_dir).resolve()
    # The setup: what is spent, and making the weights, still to come (they are made once the budget is known
    # to fit, so a budget that cannot fit is refused before they are made).
    setup_s = elapsed_s() + capacity.PRIOR_SOURCE_S_PER_GB * model_bytes / 1e9
    plan = setup.first_plan(setup_s)
    workspace.prepare_output_dir(out)
    _remove_earlier_tune(out)
    n_listed = budget.rung0_listed(plan, len(setup.universe.tests))
    seed = new_seed() if settings.seed is None else settings.seed
    state = TuneState(settings=settings.fingerprint(), seed=seed, budget_s=settings.budget_s, spent_s=0.0,
                      setup_s=setup_s, keep_checkpoint=settings.keep_checkpoint, space_path=setup.space_source,
                      space=setup.space, weights=json.loads(json.dumps(setup.planned.describe())), plan=plan,
                      rung0_order=rung0_order(setup.universe, n_listed, seed, setup.priors_s),
                      durations=budget.Durations(model_bytes))
    state.spent_s = elapsed_s()
    tune_state.save(state, out)
    return state


def _remove_earlier_tune(out: Path) -> None:
    """A fresh tune in an earlier one's folder: the earlier stages go (those carrying our marker)."""
    for folder in sorted(out.glob("rung-*")) + sorted(out.glob("final-*")):
        if (folder / workspace.RUN_MARKER).is_file():
            workspace.remove_owned(folder)
    for name in (TUNING_FILE, STATE_FILE):
        (out / name).unlink(missing_ok=True)


def _check_resumed_weights(state: TuneState, planned: weights.Planned) -> None:
    now = json.loads(json.dumps(planned.describe()))
    differences = journal.differences({"weights": state.weights}, {"weights": now})
    if differences:
        raise UserError(f"--resume: the weights differ from the interrupted tune's ({'; '.join(differences)}); "
                        "resume with the same weights, or start afresh without --resume")


def _finish(session: Session, base: SuiteConfig, draw: Draw | None) -> Tuning:
    """The answer: the recommendation among the finalists, the tuned checkpoint, tuning.json, the figure."""
    state, settings, universe = session.state, session.settings, session.universe
    state.phase = "finishing"
    session.save()
    session.emit(events.Finishing(session.time_left_s()))
    samples = policy.gather(session.documents.values())
    finalists = state.finalists or policy.ranked(state.alive, samples, settings.metric)[:budget.FINALISTS]
    # the final rounds' runs: the winner's runs after it was chosen, what the answer against the peer stands on
    finals = [session.documents[stage.name] for stage in state.stages
              if stage.kind == tune_state.FINAL and stage.name in session.documents]
    recommendation = recommend(samples, finalists, settings.metric, settings.noise_pct, policy.gather(finals),
                               session.documents.values())
    paste = None
    if recommendation is not None:
        test = universe.tests[recommendation["test"]]
        recommendation |= {"stopped_by": state.stopped_by, "layout": describe_layout(test), "settings": entry(test)}
        paste = write_tuned(test, settings, session.source.tensors, session.out, base.max_inflight_bytes)
    tuning = Tuning(document.build(session, recommendation, paste))
    if draw is not None:
        tuning.plot_path = draw(tuning.document, session.out)
    tuning.document["budget"]["spent_s"] = session.elapsed_s()  # the figure's time counts too
    tuning.path = document.write(tuning.document, session.out)
    state.phase = "done"
    session.save()
    return tuning
