"""Command line: run a suite from a config (the default), or compare two results files.

    python run_phase4_streamlined.py [--config FILE] [--model PRESET | --weights DIR] ...
    python run_phase4_streamlined.py compare A.json B.json

Order of work: validate everything (config, flags, output folder, weights) before
writing anything; then plan, run, aggregate, write results.json, draw, print.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from . import config as config_mod
from . import capacity, environment, interrupt, journal, measure, plot, report, results, sweep_plot, targets, weights, workspace
from .errors import UserError
from .progress import Progress

DEFAULT_CONFIG = Path("phase4_config.json")
BUILTIN_CONFIG = Path(__file__).with_name("phase4_default.json")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a UserError (one line, exit 2) instead of usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message}; see --help")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_parser(prog: str | None = None, default_config: Path | None = DEFAULT_CONFIG) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Benchmark saving and loading LLaMA weights as TensorStore zarr arrays. "
        "Subcommand: 'compare A.json B.json' compares two results files.",
    )
    parser.add_argument("--config", type=Path, default=default_config,
                        help="suite config JSON (default: %(default)s)")
    parser.add_argument("--output-dir", help="where results.json, the plot and run folders go")
    parser.add_argument("--runs", type=_positive_int, help="measured runs per test (overrides testing.num_runs)")
    parser.add_argument("--model", help="weight preset (see --list-models)")
    parser.add_argument("--weights", help="local Hugging Face checkpoint folder to benchmark instead of a preset")
    parser.add_argument("--dtype", choices=config_mod.DTYPES, help="dtype the weights are stored in")
    parser.add_argument("--tests", help="comma-separated subset of test names to run")
    parser.add_argument("--storage", help="where checkpoints are written: a folder, s3://BUCKET/PREFIX, "
                        "gs://BUCKET/PREFIX or memory:// (default: OUTPUT_DIR/runs)")
    parser.add_argument("--processes", help="worker processes per save and load, e.g. 4, or 1,2,4 to compare")
    parser.add_argument("--seed", type=int, help="seed of the per-round shuffle (default: random, recorded)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the last run's checkpoint of each test under OUTPUT_DIR/runs for inspection")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted suite in the same output folder, running only missing runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--list-models", action="store_true", help="list weight presets and exit")
    return parser


def main(argv: Sequence[str] | None = None, default_config: Path | None = DEFAULT_CONFIG,
         prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    targets.set_http_timeouts()
    try:
        if argv[:1] == ["compare"]:
            from . import compare

            return compare.main(argv[1:], _Parser)
        return _run(run_parser(prog, default_config).parse_args(argv))
    except UserError as exc:
        print("error: " + str(exc).replace("\n", "\\n"), file=sys.stderr)  # one line, whatever a path holds
        return UserError.exit_status


def _list_models() -> int:
    rows = []
    for name, preset in weights.PRESETS.items():
        n_params = sum(math.prod(shape) for _, shape in weights.preset_shapes(name))
        rows.append([name + (" (default)" if name == weights.DEFAULT_PRESET else ""), f"{n_params / 1e6:,.1f}M",
                     f"{n_params * 4 / 1e9:.2f} GB", f"{n_params * 2 / 1e9:.2f} GB", preset.origin])
    print(report.table(["preset", "params", "float32", "bfloat16", "hyperparameters of"], rows))
    return 0


def _load_config(args: argparse.Namespace) -> config_mod.SuiteConfig:
    path = args.config if args.config is not None else BUILTIN_CONFIG
    suite = config_mod.load(path)
    if args.config is None:  # the built-in suite writes where the user runs it
        suite = config_mod.with_overrides(suite, output_dir=config_mod.DEFAULT_OUTPUT_DIR)
    tests = [t.strip() for t in args.tests.split(",") if t.strip()] if args.tests is not None else None
    if tests is not None and not tests:
        raise UserError("--tests: no test names given; use --tests NAME[,NAME...]")
    return config_mod.finalize(config_mod.with_overrides(
        suite, output_dir=args.output_dir, num_runs=args.runs, model=args.model, weights=args.weights,
        dtype=args.dtype, tests=tests, seed=args.seed, storage=args.storage, processes=_processes(args.processes),
    ))


def _processes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or any(not 1 <= n <= 256 for n in counts):
        raise UserError(f"--processes: {text!r} is not a list of process counts from 1 to 256; use e.g. 4 or 1,2,4")
    return counts


def _run(args: argparse.Namespace) -> int:
    if args.list_models:
        return _list_models()
    if args.model is not None and args.model not in weights.PRESETS:
        raise UserError(f"--model: unknown preset {args.model!r}; run --list-models to see the presets")
    suite = _load_config(args)
    workspace.check_output_dir(suite.output_dir)
    target = targets.parse(suite.storage, suite.output_dir, suite.storage_options)
    target.check()  # a remote store: endpoint, credentials and bucket, before anything is written
    capacity.check_memory(weights.estimate_bytes(suite.model, suite.weights, suite.dtype))
    source = weights.load(suite.model, suite.weights, suite.dtype)  # converted once, before any timing
    if suite.weights is not None:
        for folder, what in ((suite.output_dir, "--output-dir"), (getattr(target, "output_dir", None), "--storage")):
            if folder is not None and folder.is_relative_to(suite.weights):
                raise UserError(f"{what}: {folder} is inside the weights folder; choose another folder")
    if target.kind == "local":
        capacity.check_disk(target.output_dir, _largest_run_bytes(suite, source), "one run of the largest test")

    fingerprint = journal.fingerprint(suite.to_json(), source.describe())
    log = journal.Journal(suite.output_dir / journal.JOURNAL_FILE)
    done: list[measure.RunRecord] = []
    if args.resume:
        header, done = log.read()
        differences = journal.differences(header, fingerprint)
        if differences:
            raise UserError(f"--resume: the suite differs from the interrupted one ({'; '.join(differences)}); "
                            "resume with the same config and weights, or start afresh without --resume")
        seed = header["seed"]
    else:
        seed = suite.seed if suite.seed is not None else measure.new_seed()

    output_dir = workspace.prepare_output_dir(suite.output_dir)  # the first write
    if not args.resume:
        log.start(fingerprint, seed)
    done = [r for r in done if r.ok]  # failed runs (a full disk, say) are run again
    finished = {(r.test, r.round) for r in done}
    runs = [r for r in measure.plan([t.name for t in suite.tests], suite.num_runs, suite.warmup_rounds, seed)
            if (r.test, r.round) not in finished]
    env = environment.capture(output_dir)
    progress = Progress(len(runs), suite.num_runs, not args.no_progress)
    progress.message(f"{report_source(source)}; {len(suite.tests)} tests x {suite.num_runs} runs"
                     f"{f' + {suite.warmup_rounds} warm-up rounds' if suite.warmup_rounds else ''}; seed {seed}"
                     f"{f'; resuming, {len(done)} runs already done' if args.resume else ''}")
    records = list(done)
    stopped: interrupt.Interrupted | None = None
    try:
        with interrupt.signals_raise():
            for record in measure.run_suite(runs, source.tensors, suite, _checked(progress.phase), keep=args.keep,
                                            target=target):
                log.append(record)
                records.append(record)
                progress.finished(record)
                interrupt.check()
    except interrupt.Interrupted as signal_received:
        stopped = signal_received
    finally:
        progress.close()
        target.finish()

    complete = stopped is None and len(records) == len(done) + len(runs)
    document = results.build(suite, source.describe(), records, env, seed, complete=complete,
                             storage=target.describe())
    results_path = results.write(document, output_dir)
    drawn = _draw_figures(document, output_dir)
    print(report.full_report(document))
    print(f"\nResults: {results_path}" + "".join(f"\nPlot:    {p}" for p in drawn))
    if stopped is not None:
        print(f"error: stopped by {stopped}; {len(records)} runs kept in {log.path}; "
              "continue with --resume", file=sys.stderr)
        return stopped.exit_status
    if not complete:
        print("error: the suite stopped early after a storage failure; see the warnings; "
              "continue with --resume once fixed", file=sys.stderr)
    failed = sum(t["failed_runs"] for t in document["tests"])
    return 1 if failed or not complete else 0


def _draw_figures(document: dict, output_dir: Path) -> list[Path]:
    """Every figure the document has data for (none when no run succeeded)."""
    if not any(r["error"] is None for t in document["tests"] for r in t["runs"]):
        return []
    figures = [plot.draw(document, output_dir / plot.PLOT_FILE),
               plot.draw_claims(document, output_dir / plot.CLAIMS_FILE),
               sweep_plot.draw_sweep(document, output_dir / sweep_plot.SWEEP_FILE),
               sweep_plot.draw_scaling(document, output_dir / sweep_plot.SCALING_FILE)]
    return [path for path in figures if path is not None]


def _checked(on_phase: measure.Phase) -> measure.Phase:
    """A phase callback that first stops the run if a stop signal's exception was lost."""
    def checked(run: measure.PlannedRun, phase: str) -> None:
        interrupt.check()
        on_phase(run, phase)
    return checked


def _largest_run_bytes(suite: config_mod.SuiteConfig, source: weights.Weights) -> int:
    shapes = [a.shape for a in source.tensors.values()]
    itemsize = weights.NUMPY_DTYPES[suite.dtype].itemsize
    return max(capacity.run_bytes_upper(t, shapes, itemsize) for t in suite.tests)


def report_source(source: weights.Weights) -> str:
    info = source.describe()
    return (f"weights: {info.get('name') or info.get('path')} ({info['n_params'] / 1e6:.1f}M params, "
            f"{info['size_bytes'] / 1e9:.2f} GB {info['dtype']})")
