"""`run_suite(context)`: the one function that runs a suite, for every caller.

The command line, the Python API (`ckptbench.run`), `tune` and `explain` all call it with a `bench.context.RunContext`.
It knows nothing of launchers: who saves and loads the tests run by several processes is the context's `writers`
(bench.backend.Writers), chosen once by the caller.

Everything that can be checked (bench.preflight) is checked before anything is written; figures and console tables are
the caller's business (`Results.draw`, `Results.report`).

A stop (Ctrl-C, SIGTERM, a budget's `may_start`, a lost rank) ends the suite within seconds: the results so far are
written (complete: false), then `Stopped` is raised with them attached as `.partial`, and a context with `resume=True`
continues later.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ckptbench.bench import capacity, environment, measure, preflight, targets, workspace
from ckptbench.bench.context import Observer, RunContext, Start
from ckptbench.core import host, interrupt, system
from ckptbench.core.errors import RunSkipped, Skip, Stopped, UserError
from ckptbench.core.records import Phase, PlannedRun, RunRecord, new_seed, plan
from ckptbench.core.records import confirmation_plan as plan_confirmation
from ckptbench.documents import confirmation, journal, results
from ckptbench.sources import weights


def run_suite(context: RunContext) -> results.Results:
    """Run a suite (`context.config`: a finished config from `config.load` or `config.from_dict`) and return its results
    (bench.context.RunContext says what else the context holds)."""
    config, source = context.config, context.source
    checked = preflight.check(config, source)
    if checked.refusal is not None:
        raise UserError(checked.refusal)
    log = journal.Journal(config.output_dir / journal.JOURNAL_FILE)
    done: list[RunRecord] = []
    if context.resume:
        header, done = log.read()
        differences = journal.differences(header, journal.fingerprint(config.to_json(), checked.weights))
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
            assert checked.planned is not None  # preflight plans the weights a suite is not given
            source = checked.planned.to_file(_source_dir(output_dir, config.values, made))
        sources = {values: weights.plan(config.model, None, config.dtype, values).to_file(
                       _source_dir(output_dir, values, made)).tensors for values in checked.other_values}
        context.writers.ready(source.tensors)  # e.g. every rank of a launch has its weights and reaches the storage
        bench = measure.Bench(config, source.tensors, checked.target, sources, context.writers, context.keep)
        return _measure(_Suite(context, source, bench, seed, log, output_dir, checked.target), done)
    finally:
        context.writers.close()  # also on Ctrl-C: stop every worker process
        for folder in made:
            workspace.remove_owned(folder)


def _source_dir(output_dir: Path, values: str, made: list[Path]) -> Path:
    folder = workspace.new_owned_dir(output_dir, f"source-{values}")
    made.append(folder)
    return folder


@dataclass(frozen=True)
class _Suite:
    """A checked suite ready to measure: its context, its weights, what its runs measure with, its seed, journal."""

    context: RunContext
    source: weights.Weights
    bench: measure.Bench
    seed: int
    log: journal.Journal
    output_dir: Path
    target: targets.LocalTarget | targets.ObjectStoreTarget


def _measure(suite: _Suite, done: list[RunRecord]) -> results.Results:
    """The runs of a checked suite (`done`: a resumed journal's), each journaled as it ends, then the results."""
    context, config, target, seed = suite.context, suite.context.config, suite.target, suite.seed
    if not context.resume:
        suite.log.start(journal.fingerprint(config.to_json(), suite.source.describe()), seed)
    done = [r for r in done if r.ok]  # failed runs (a full disk, say) are run again
    todo = plan([t.name for t in config.tests], config.num_runs, config.warmup_rounds, seed, config.order,
                blocks=config.blocks).without({(r.test, r.round) for r in done})
    env = environment.capture(suite.output_dir)
    env["rss_anon_at_start_bytes"] = system.resident_bytes()[0]  # the fixed part: weights mapped, nothing loaded
    local_root = target.output_dir if isinstance(target, targets.LocalTarget) else None
    env["host_load"] = {"start": host.load_average(), "end": None,  # the disks each run's other bytes are read from
                        "devices": list(host.watch_for(local_root).devices)}
    launch = context.writers.describe()
    if launch is not None:
        env["launch"] = launch  # world size, hosts and ranks per host
    scale = {"suggested_preset": capacity.suggest_preset(env.get("ram_bytes"), config.dtype, config)}
    context.observer.start(Start(suite.source.describe(), len(config.tests), config.num_runs, config.warmup_rounds,
                                 len(todo), seed, len(done), capacity.confirmation_runs_upper(config)))
    records = list(done)
    stopped: Stopped | None = None
    complete = False
    gc.freeze()  # the weights and every module stay for the whole suite: collections skip them (0.2 s -> 0)
    try:
        with interrupt.signals_raise():
            ran = measure.run_plan(todo, suite.bench, _checked(context), earlier=[*context.history, *done])
            complete = _record(ran, suite.log, records, context.observer)
            if complete and config.confirm_rounds:
                complete = _confirm(suite, records)
    except Stopped as stop:
        stopped = stop
    finally:
        gc.unfreeze()
        target.finish()

    env["host_load"]["end"] = host.load_average()
    complete = stopped is None and complete
    origin = results.Origin(env, storage=target.describe(), scale=scale, tool=environment.tool_info())
    document = results.build(config, suite.source.describe(), records, origin, seed, complete=complete)
    outcome = results.Results(document, results.write(document, suite.output_dir))
    if stopped is not None:
        stopped.partial = outcome
        raise stopped
    return outcome


def _record(ran: Iterable[RunRecord], log: journal.Journal, records: list[RunRecord], observer: Observer) -> bool:
    """Journal and keep each run as it ends; False when a storage failure ended the runs early."""
    for record in ran:
        log.append(record)
        records.append(record)
        observer.record(record)
        interrupt.check()
        if record.fatal:
            return False
    return True


def _confirm(suite: _Suite, records: list[RunRecord]) -> bool:
    """The confirmation rounds (documents.confirmation): the finalists chosen from the suite's rounds measured again,
    block after block, `confirm_pause_s` apart; False when a storage failure ended them early."""
    config = suite.context.config
    main = [r for r in records if r.confirm_block is None]
    chosen = results.build(config, suite.source.describe(), main, {}, suite.seed, complete=True)["best"]
    names = confirmation.finalists(chosen, config.confirm_objectives)
    if not names:
        return True
    done = {(r.test, r.round) for r in records if r.confirm_block is not None and r.ok}
    blocks = plan_confirmation(names, config.confirm_rounds, config.confirm_blocks, config.num_runs, suite.seed,
                               done=done)
    confirming = dataclasses.replace(config, tests=tuple(config.test(name) for name in names))
    bench = dataclasses.replace(suite.bench, config=confirming, keep=False)
    for number, runs in enumerate(blocks):
        if not runs:
            continue  # a resumed suite's finished block
        if number and config.confirm_pause_s:
            time.sleep(config.confirm_pause_s)  # blocks apart in time: the machine's state may change between them
        ran = measure.run_plan(runs, bench, _checked(suite.context), earlier=[*suite.context.history, *records])
        if not _record(ran, suite.log, records, suite.context.observer):
            return False
    return True


def _checked(context: RunContext) -> Phase:
    """A phase callback that first stops the run if a stop signal's exception was lost, and before a run's save, if
    `may_start` gives a reason not to start it: a `Skip` drops that run, any other reason stops the suite; then tells
    the observer."""
    def checked(planned: PlannedRun, phase: str) -> None:
        interrupt.check()
        if phase == "save":
            reason = context.may_start(planned)
            if isinstance(reason, Skip):
                raise RunSkipped(reason)
            if reason is not None:
                raise Stopped.by_budget(reason)
        context.observer.phase(planned, phase)
    return checked
