"""`run_suite(config, writers)`: the one function that runs a suite, for every caller.

The command line, the Python API (`ckptbench.run`), `tune` and `explain` all call it. It
knows nothing of launchers: who saves and loads the tests run by several processes is
the `writers` it is given (bench.backend.Writers), chosen once by the caller.

Order of work: check everything that can be checked (output folder, storage, memory,
duration, disk, weights) before writing anything; then the journal, the plan, the
runs (each appended to the journal as it ends), and the results document, written to
OUTPUT_DIR/results.json. Figures and console tables are the caller's business
(`Results.draw`, `Results.report`).

A stop (Ctrl-C, SIGTERM, a budget's `may_start`, a lost rank) ends the suite within
seconds: the results so far are written (complete: false), then `Stopped` is raised with
them attached as `.partial`, and `run_suite(..., resume=True)` continues later.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ckptbench.bench import capacity, environment, measure, preflight, targets, workspace
from ckptbench.bench.backend import ThisProcess, Writers
from ckptbench.core import host, interrupt, system
from ckptbench.core.errors import RunSkipped, Skip, Stopped, UserError
from ckptbench.core.records import Phase, Plan, PlannedRun, RunRecord, new_seed, plan
from ckptbench.core.records import confirmation_plan as plan_confirmation
from ckptbench.documents import confirmation, journal, results
from ckptbench.sources import weights
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
    scale: dict[str, Any]
    confirmation_runs: int = 0  # at most this many after the rounds (the finalists are known only then)


def _ignore(*_args: Any) -> None:
    pass


def _always(_planned: PlannedRun) -> str | None:
    return None


def run_suite(
    config: SuiteConfig,
    writers: Writers = ThisProcess(),
    *,
    resume: bool = False,
    keep: bool = False,
    source: weights.Weights | None = None,
    on_start: Callable[[Start], None] = _ignore,
    on_phase: Phase = _ignore,
    on_record: Callable[[RunRecord], None] = _ignore,
    may_start: Callable[[PlannedRun], str | None] = _always,
    history: Sequence[RunRecord] = (),
) -> results.Results:
    """Run a suite (a finished config from `config.load` or `config.from_dict`) and return its results.

    `writers`: who runs the tests with processes > 1 (the suite stops them at its end). `source`: weights
    already in memory (they must match the config's model, dtype and values); by default they are made or
    read here. `keep` leaves each test's last checkpoint on disk. `may_start(run)` is asked before each
    run: a reason (a spent budget) stops the suite there, as a stop signal does; a `core.errors.Skip` reason
    skips that run alone (not measured, not recorded; the suite goes on). `history`: runs of earlier
    suites whose back ends' choices carry over (tune's stages: the device ceiling's fastest patterns).
    """
    checked = preflight.check(config, source)
    if checked.refusal is not None:
        raise UserError(checked.refusal)
    target, planned, other_values = checked.target, checked.planned, checked.other_values
    fingerprint = journal.fingerprint(config.to_json(), checked.weights)
    log = journal.Journal(config.output_dir / journal.JOURNAL_FILE)
    done: list[RunRecord] = []
    if resume:
        header, done = log.read()
        differences = journal.differences(header, fingerprint)
        if differences:
            raise UserError(f"--resume: the suite differs from the interrupted one ({'; '.join(differences)}); "
                            "resume with the same config and weights, or start afresh without --resume")
        seed = header["seed"]
    else:
        seed = config.seed if config.seed is not None else new_seed()

    output_dir = workspace.prepare_output_dir(config.output_dir)  # the first write
    made: list[Path] = []  # source folders this suite makes, and removes at its end
    try:
        if source is None:  # converted once, untimed, written one tensor at a time into a file and mapped
            source = planned.to_file(_source_dir(output_dir, config.values, made))
        sources = {values: weights.plan(config.model, None, config.dtype, values).to_file(
                       _source_dir(output_dir, values, made)).tensors for values in other_values}
        writers.ready(source.tensors)  # e.g. every rank of a launch has its weights and reaches the storage
        return _measure(config, writers, source, sources, log, done, seed, resume, keep, target, output_dir,
                        on_start, on_phase, on_record, may_start, history)
    finally:
        writers.close()  # also on Ctrl-C: stop every worker process
        for folder in made:
            workspace.remove_owned(folder)


def _source_dir(output_dir: Path, values: str, made: list[Path]) -> Path:
    folder = workspace.new_owned_dir(output_dir, f"source-{values}")
    made.append(folder)
    return folder


def _measure(config: SuiteConfig, writers: Writers, source: weights.Weights, sources: dict[str, Any],
             log: journal.Journal, done: list[RunRecord], seed: int, resume: bool, keep: bool,
             target: targets.LocalTarget | targets.ObjectStoreTarget, output_dir: Path,
             on_start: Callable[[Start], None], on_phase: Phase, on_record: Callable[[RunRecord], None],
             may_start: Callable[[PlannedRun], str | None], history: Sequence[RunRecord]) -> results.Results:
    """The runs of a checked suite, each appended to the journal as it ends, then the results document."""
    if not resume:
        log.start(journal.fingerprint(config.to_json(), source.describe()), seed)
    done = [r for r in done if r.ok]  # failed runs (a full disk, say) are run again
    todo = plan([t.name for t in config.tests], config.num_runs, config.warmup_rounds, seed, config.order,
                done={(r.test, r.round) for r in done}, blocks=config.blocks)
    env = environment.capture(output_dir)
    env["rss_anon_at_start_bytes"] = system.resident_bytes()[0]  # the fixed part: weights mapped, nothing loaded
    local_root = target.output_dir if isinstance(target, targets.LocalTarget) else None
    env["host_load"] = {"start": host.load_average(), "end": None,  # the disks each run's other bytes are read from
                        "devices": list(host.watch_for(local_root).devices)}
    launch = writers.describe()
    if launch is not None:
        env["launch"] = launch  # world size, hosts and ranks per host
    scale = {"suggested_preset": capacity.suggest_preset(env.get("ram_bytes"), config.dtype, config)}
    on_start(Start(source.describe(), len(config.tests), config.num_runs, config.warmup_rounds, len(todo), seed,
                   len(done), scale, capacity.confirmation_runs_upper(config)))
    records = list(done)
    skipped: list[PlannedRun] = []
    stopped: Stopped | None = None
    complete = False
    gc.freeze()  # the weights and every module stay for the whole suite: collections skip them (0.2 s -> 0)
    try:
        with interrupt.signals_raise():
            ran = measure.run_plan(todo, source.tensors, config, _checked(on_phase, may_start, skipped), keep=keep,
                                   target=target, sources=sources, writers=writers, earlier=[*history, *done])
            complete = _record(ran, log, records, on_record)
            if complete and config.confirm_rounds:
                complete = _confirm(config, Context(source, sources, target, writers, seed, history),
                                    records, log, _checked(on_phase, may_start, skipped), on_record)
    except Stopped as stop:
        stopped = stop
    finally:
        gc.unfreeze()
        target.finish()

    env["host_load"]["end"] = host.load_average()
    complete = stopped is None and complete
    document = results.build(config, source.describe(), records, env, seed, complete=complete,
                             storage=target.describe(), scale=scale, tool=environment.tool_info())
    outcome = results.Results(document, results.write(document, output_dir))
    if stopped is not None:
        stopped.partial = outcome
        raise stopped
    return outcome


@dataclass(frozen=True)
class Context:
    """What every run of a suite measures with: the weights, the target, the writers, the seed, the runs before."""

    source: weights.Weights
    sources: dict[str, Any]
    target: targets.LocalTarget | targets.ObjectStoreTarget
    writers: Writers
    seed: int
    history: Sequence[RunRecord] = ()  # runs before this suite's (a resumed journal's, an earlier suite's)


def _record(ran: Iterable[RunRecord], log: journal.Journal, records: list[RunRecord],
            on_record: Callable[[RunRecord], None]) -> bool:
    """Journal and keep each run as it ends; False when a storage failure ended the runs early."""
    for record in ran:
        log.append(record)
        records.append(record)
        on_record(record)
        interrupt.check()
        if record.fatal:
            return False
    return True


def _confirm(config: SuiteConfig, context: Context, records: list[RunRecord], log: journal.Journal,
             on_phase: Phase, on_record: Callable[[RunRecord], None]) -> bool:
    """The confirmation rounds (documents.confirmation): the finalists chosen from the suite's rounds measured
    again, block after block, `confirm_pause_s` apart; False when a storage failure ended them early."""
    main = [r for r in records if r.confirm_block is None]
    chosen = results.build(config, context.source.describe(), main, {}, context.seed, complete=True)["best"]
    names = confirmation.finalists(chosen, config.confirm_objectives)
    if not names:
        return True
    done = {(r.test, r.round) for r in records if r.confirm_block is not None and r.ok}
    blocks = plan_confirmation(names, config.confirm_rounds, config.confirm_blocks, config.num_runs, context.seed,
                               done=done)
    confirming = dataclasses.replace(config, tests=tuple(config.test(name) for name in names))
    for number, runs in enumerate(blocks):
        if not runs:
            continue  # a resumed suite's finished block
        if number and config.confirm_pause_s:
            time.sleep(config.confirm_pause_s)  # blocks apart in time: the machine's state may change between them
        ran = measure.run_plan(runs, context.source.tensors, confirming, on_phase, target=context.target,
                               sources=context.sources, writers=context.writers, earlier=[*context.history, *records])
        if not _record(ran, log, records, on_record):
            return False
    return True


def _checked(on_phase: Phase, may_start: Callable[[PlannedRun], str | None], skipped: list[PlannedRun]) -> Phase:
    """A phase callback that first stops the run if a stop signal's exception was lost, and before a run's
    save, if `may_start` gives a reason not to start it: a `Skip` drops that run (noted in `skipped`), any
    other reason stops the suite."""
    def checked(planned: PlannedRun, phase: str) -> None:
        interrupt.check()
        if phase == "save":
            reason = may_start(planned)
            if isinstance(reason, Skip):
                skipped.append(planned)
                raise RunSkipped(reason)
            if reason is not None:
                raise Stopped.by_budget(reason)
        on_phase(planned, phase)
    return checked


__all__ = ["Plan", "Start", "run_suite"]
