"""A tune from start to finish: `run` (fresh) and `resume` (an interrupted one), both within a budget.

A session makes the weights once, builds the space's candidates for them, plans the budget
(fresh) or reads the state back (resumed), runs the stages (loop.run_stages), then finishes:
the recommendation, the tuned checkpoint written and read back with the printed spec,
tuning.json and, when the caller asks for it, the figure. A stop signal saves everything
and raises `Stopped` with the partial tuning attached as `.partial`; `resume` continues it.

The figure is the caller's to draw (`draw`): tune computes and the command renders, so
report.py and plot.py are imported by the command alone. It is drawn here, before the
time spent is recorded, because the budget reserves its time (budget.FINISH_FIXED_S).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ckptbench.bench import capacity, preflight, workspace
from ckptbench.bench.context import Executor
from ckptbench.bench.suite import run_suite
from ckptbench.core import interrupt
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


def _ignore(_kind: str, _data: dict[str, Any]) -> None:
    pass


def run(settings: Settings, *, on_event: Event = _ignore, clock: Callable[[], float] = time.monotonic,
        execute: Executor = run_suite, draw: Draw | None = None) -> Tuning:
    """Tune (the package docstring); the document is also written to OUTPUT_DIR/tuning.json.

    on_event(kind, data) reports progress: "estimate", "stage", "phase", "run", "stage_end", "corrected",
    "finishing". `execute` runs each stage's suite (run_suite; a test injects made-up runs). `draw(document,
    folder)` draws the figure into folder (none without it)."""
    check_settings(settings)
    return _start(settings, None, on_event, clock, execute, draw)


def dry_run(settings: Settings) -> dict[str, Any]:
    """What a tune would do, written nowhere: the space, the budget's first plan (or why the budget cannot
    fit, with the budget that would), and the pre-check of its heaviest candidates' disk and memory."""
    check_settings(settings)
    workspace.check_output_dir(Path(settings.output_dir).resolve())
    space = load_space(settings.space_path)
    settings = dataclasses.replace(settings, reference_rows=space.get("references", {}))
    base = candidates(space, settings, str(settings.space_path))
    planned = weights.plan(base.model, base.weights, base.dtype, base.values)
    universe = make_universe(space, base, [shape for _, shape in planned.shapes])
    itemsize = NUMPY_DTYPES[base.dtype].itemsize
    prior_s = budget.prior_candidate_s(universe.tests.values(), planned.size_bytes, itemsize)
    setup_s = capacity.PRIOR_SOURCE_S_PER_GB * planned.size_bytes / 1e9
    plan, refusal = None, None
    try:
        plan = budget.first_plan(settings.budget_s, setup_s, planned.size_bytes, settings.references,
                                 len(universe.tests), prior_s).to_json()
    except UserError as exc:
        refusal = str(exc)
    suite = dataclasses.replace(base, tests=tuple(universe.tests.values()))
    checked = preflight.check(suite, whole=False)
    return {"weights": planned.describe(), "budget_s": settings.budget_s, "objective": settings.objective,
            "n_candidates": len(universe.tests), "n_skipped": len(universe.skipped),
            "n_duplicates": len(universe.duplicates), "run_s": prior_s, "setup_s": setup_s,
            "references": list(settings.references), "plan": plan, "preflight": checked.to_json(),
            "refusal": refusal or checked.refusal}


def resume(output_dir: Path | str, *, given: Mapping[str, Any] | None = None, budget_s: float | None = None,
           keep_checkpoint: bool | None = None, on_event: Event = _ignore,
           clock: Callable[[], float] = time.monotonic, execute: Executor = run_suite,
           draw: Draw | None = None) -> Tuning:
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
    return _start(settings, state, on_event, clock, execute, draw)


def _normalized(key: str, value: Any) -> Any:
    """A setting as the state holds it: a weights folder given relative to here, as an absolute path."""
    if key == "weights" and value is not None:
        return config_mod.weights_source(str(value), Path.cwd())
    return value


def _start(settings: Settings, state: TuneState | None, emit: Event, clock: Callable[[], float],
           execute: Executor, draw: Draw | None) -> Tuning:
    """One session: fresh (`state` None) or resumed from the state an earlier session saved."""
    elapsed_s = Stopwatch(clock, state.spent_s if state is not None else 0.0)
    out = Path(settings.output_dir).resolve()
    if state is not None:
        state.budget_s, state.keep_checkpoint = settings.budget_s, settings.keep_checkpoint
        space, space_source = state.space, state.space_path
    else:
        workspace.check_output_dir(out)
        space, space_source = load_space(settings.space_path), str(settings.space_path)
        if settings.seed is None:
            settings = dataclasses.replace(settings, seed=new_seed())
    settings = dataclasses.replace(settings, reference_rows=space.get("references", {}))  # the peers' settings
    # The space and the settings are checked, and the weights' folder resolved, before the weights are made.
    base = candidates(space, settings, space_source)
    settings = dataclasses.replace(settings, weights=base.weights)
    if state is not None and state.phase == "done" and (out / TUNING_FILE).is_file():
        return document.read(out / TUNING_FILE)
    session = None
    source_dir: Path | None = None
    try:
        with interrupt.signals_raise():
            planned = weights.plan(base.model, base.weights, base.dtype, base.values)  # no weights made yet
            universe = make_universe(space, base, [shape for _, shape in planned.shapes])
            itemsize = NUMPY_DTYPES[base.dtype].itemsize
            priors_s = budget.candidate_priors_s(universe.tests, planned.size_bytes, itemsize)
            prior_s = budget.typical_prior_s(priors_s.values())
            if state is not None:
                _check_resumed_weights(state, planned)
            else:
                state = _plan(settings, out, universe, planned, space, space_source, elapsed_s, priors_s)
            state.durations.prior_s = prior_s
            # The weights every suite shares, made (or read) once into a source file, untimed by the suites.
            source_dir = workspace.new_owned_dir(out, SOURCE_DIR)
            source = planned.to_file(source_dir)
            session = Session(settings, out, universe, source, state, _load_documents(out, state), emit, elapsed_s)
            if not state.stages:
                session.save()
                _say_estimate(session, universe, planned)
            run_stages(session, execute)
            return _finish(session, base, draw)
    except Stopped as stop:
        if session is not None:  # before that, nothing was written
            session.save()
            stop.partial = _write_partial(session)
        raise
    finally:
        if source_dir is not None and source_dir.exists():
            workspace.remove_owned(source_dir)


def _plan(settings: Settings, out: Path, universe: Universe, planned: weights.Planned, space: dict[str, Any],
          space_source: str, elapsed_s: Stopwatch, priors_s: Mapping[str, float]) -> TuneState:
    """Estimate what fits the budget (a budget that cannot fit is refused before any weights are made), then
    write the first state (the tune's first write)."""
    model_bytes, prior_s = planned.size_bytes, budget.typical_prior_s(priors_s.values())
    # The setup: what is spent, and making the weights, still to come (they are made once the budget is known
    # to fit, so a budget that cannot fit is refused before they are made).
    setup_s = elapsed_s() + capacity.PRIOR_SOURCE_S_PER_GB * model_bytes / 1e9
    plan = budget.first_plan(settings.budget_s, setup_s, model_bytes, settings.references, len(universe.tests),
                             prior_s)
    workspace.prepare_output_dir(out)
    _remove_earlier_tune(out)
    n_listed = min(len(universe.tests), max(budget.OVERPLAN * plan.n_candidates, budget.RUNG0_MIN_LISTED))
    state = TuneState(settings=settings.fingerprint(), seed=settings.seed, budget_s=settings.budget_s, spent_s=0.0,
                      setup_s=setup_s, keep_checkpoint=settings.keep_checkpoint, space_path=space_source, space=space,
                      weights=json.loads(json.dumps(planned.describe())), plan=plan,
                      rung0_order=rung0_order(universe, n_listed, settings.seed, priors_s),
                      durations=budget.Durations(model_bytes, prior_s=prior_s))
    state.spent_s = elapsed_s()
    tune_state.save(state, out)
    return state


def _say_estimate(session: Session, universe: Universe, planned: weights.Planned) -> None:
    state, settings = session.state, session.settings
    session.emit("estimate", {"plan": state.plan.to_json(), "setup_s": state.setup_s, "budget_s": settings.budget_s,
                              "n_candidates": len(universe.tests), "n_skipped": len(universe.skipped),
                              "n_duplicates": len(universe.duplicates),
                              "n_listed": len(state.rung0_order),
                              "model_bytes": planned.size_bytes, "weights": planned.describe(),
                              "objective": settings.objective, "seed": settings.seed,
                              "references": settings.references})


SOURCE_DIR = "source"  # the source weights every stage reads, removed when the tune ends


def _remove_earlier_tune(out: Path) -> None:
    """A fresh tune in an earlier one's folder: the earlier stages go (each folder carries our marker)."""
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


def _load_documents(out: Path, state: TuneState) -> dict[str, dict[str, Any]]:
    """The results of every stage that wrote them (an interrupted stage's are partial)."""
    documents = {}
    for name in state.stage_names():
        path = out / name / results.RESULTS_FILE
        if path.is_file():
            documents[name] = results.read(path).document
    return documents


def _finish(session: Session, base: SuiteConfig, draw: Draw | None) -> Tuning:
    """The answer: the recommendation among the finalists, the tuned checkpoint, tuning.json, the figure."""
    state, settings, universe = session.state, session.settings, session.universe
    state.phase = "finishing"
    session.save()
    session.emit("finishing", {"time_left_s": session.time_left_s()})
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
        recommendation["stopped_by"] = state.stopped_by
        recommendation["layout"] = describe_layout(test)
        recommendation["settings"] = entry(test)
        paste = write_tuned(test, settings, session.source.tensors, session.out, base.max_inflight_bytes)
    tuning = Tuning(document.build(state, session.documents, universe, settings, complete=True,
                                   recommendation=recommendation, paste=paste))
    if draw is not None:
        tuning.plot_path = draw(tuning.document, session.out)
    tuning.document["budget"]["spent_s"] = session.elapsed_s()  # the figure's time counts too
    tuning.path = document.write(tuning.document, session.out)
    state.phase = "done"
    session.save()
    return tuning


def _write_partial(session: Session) -> Tuning:
    """tuning.json of an interrupted tune: every stage and candidate so far, no recommendation."""
    partial = document.build(session.state, session.documents, session.universe, session.settings, complete=False,
                             recommendation=None, paste=None)
    return Tuning(partial, document.write(partial, session.out))
