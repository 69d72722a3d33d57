"""`run(config)`: the one function that runs a suite, for the command line and for Python.

    import ckptbench
    results = ckptbench.run(ckptbench.load_config("phase4_config.json", model="tiny", num_runs=2))
    print(results.best["load"]["test"])

Order of work: check everything that can be checked (output folder, storage, memory,
duration, disk, weights) before writing anything; then the journal, the plan, the
runs (each appended to the journal as it ends), and the results document, written to
OUTPUT_DIR/results.json. Figures and console tables are the caller's business
(`Results.draw`, `Results.report`).

A stop signal (Ctrl-C, SIGTERM) ends the suite within seconds: the results so far are
written (complete: false), then `interrupt.Interrupted` is raised with them attached as
`.results`, and `run(..., resume=True)` continues later.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ckptbench.bench import capacity, environment, measure, targets, workspace
from ckptbench.core import interrupt
from ckptbench.documents import journal, results
from ckptbench.parallel import ranks
from ckptbench.sources import weights
from ckptbench.spec.config import SuiteConfig
from ckptbench.core.errors import UserError
from ckptbench.core.records import Phase, Plan, PlannedRun, RunRecord, new_seed, plan

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


def _ignore(*_args: Any) -> None:
    pass


def run(
    config: SuiteConfig,
    *,
    resume: bool = False,
    keep: bool = False,
    source: weights.Weights | None = None,
    on_start: Callable[[Start], None] = _ignore,
    on_phase: Phase = _ignore,
    on_record: Callable[[RunRecord], None] = _ignore,
) -> results.Results | None:
    """Run a suite (a finished config from `config.load` or `config.from_dict`) and return its results.

    `source`: weights already in memory (they must match the config's model, dtype and values);
    by default they are made or read here. `keep` leaves each test's last checkpoint on disk.

    Started by torchrun, srun or mpirun, every rank calls this: rank 0 runs the suite and returns its
    results, the other ranks save and load their slices for it and return None (see ranks.py).
    """
    if ranks.launched():
        return ranks.run(config, run, resume=resume, keep=keep, source=source, on_start=on_start,
                         on_phase=on_phase, on_record=on_record)
    targets.set_http_timeouts()
    workspace.check_output_dir(config.output_dir)
    target = targets.parse(config.storage, config.output_dir, config.storage_options)
    target.check()  # a remote store: endpoint, credentials and bucket, before anything is written
    local_weights, origin = weights.resolve(config.weights)  # a hub id: from the cache, or downloaded
    model_bytes = (source.size_bytes if source is not None
                   else weights.estimate_bytes(config.model, local_weights, config.dtype))
    capacity.check_duration(len(config.tests) * (config.num_runs + config.warmup_rounds), model_bytes)
    other_values = sorted({config.values_for(t) for t in config.tests} - {config.values})  # tests' own `values`
    capacity.check_memory(config, model_bytes, extra_copies=len(other_values))
    if local_weights is not None:
        for folder, what in ((config.output_dir, "--output-dir"), (getattr(target, "output_dir", None), "--storage")):
            if folder is not None and Path(folder).is_relative_to(local_weights.resolve()):
                raise UserError(f"{what}: {folder} is inside the weights folder; choose another folder")
    if source is None:
        source = weights.load(config.model, local_weights, config.dtype, config.values)  # converted once, untimed
        source.source.update(origin)
    sources = {values: weights.from_preset(config.model, config.dtype, values).tensors for values in other_values}
    if target.kind == "local":
        capacity.check_disk(target.output_dir, _largest_run_bytes(config, source), "one run of the largest test")
    ranks.wait_ready(source.tensors)  # under a launcher: every rank has its weights and reaches the storage

    fingerprint = journal.fingerprint(config.to_json(), source.describe())
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
    if not resume:
        log.start(fingerprint, seed)
    done = [r for r in done if r.ok]  # failed runs (a full disk, say) are run again
    todo = plan([t.name for t in config.tests], config.num_runs, config.warmup_rounds, seed, config.order,
                done={(r.test, r.round) for r in done}, blocks=config.blocks)
    env = environment.capture(output_dir)
    world = ranks.current()
    if world is not None:
        env["launch"] = world.describe()  # world size, hosts and ranks per host
    scale = {"suggested_preset": capacity.suggest_preset(env.get("ram_bytes"), config.dtype, config)}
    on_start(Start(source.describe(), len(config.tests), config.num_runs, config.warmup_rounds, len(todo), seed,
                   len(done), scale))
    records = list(done)
    stopped: interrupt.Interrupted | None = None
    gc.freeze()  # the weights and every module stay for the whole suite: collections skip them (0.2 s -> 0)
    try:
        with interrupt.signals_raise():
            for record in measure.run_suite(todo, source.tensors, config, _checked(on_phase), keep=keep,
                                            target=target, sources=sources):
                log.append(record)
                records.append(record)
                on_record(record)
                interrupt.check()
    except interrupt.Interrupted as signal_received:
        stopped = signal_received
    finally:
        gc.unfreeze()
        target.finish()

    complete = stopped is None and len(records) == len(done) + len(todo)
    document = results.build(config, source.describe(), records, env, seed, complete=complete,
                             storage=target.describe(), scale=scale, tool=environment.tool_info())
    outcome = results.Results(document, results.write(document, output_dir))
    if stopped is not None:
        stopped.results = outcome
        raise stopped
    return outcome


def _checked(on_phase: Phase) -> Phase:
    """A phase callback that first stops the run if a stop signal's exception was lost."""
    def checked(planned: PlannedRun, phase: str) -> None:
        interrupt.check()
        on_phase(planned, phase)
    return checked


def _largest_run_bytes(config: SuiteConfig, source: weights.Weights) -> int:
    shapes = [a.shape for a in source.tensors.values()]
    itemsize = weights.NUMPY_DTYPES[config.dtype].itemsize
    return max(capacity.run_bytes_upper(t, shapes, itemsize) for t in config.tests)


__all__ = ["Plan", "Start", "run"]
