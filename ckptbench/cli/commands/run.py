"""`run` (the default subcommand): run a suite from a config file, print its tables, draw its figures.

Exit status: 0 all runs succeeded; 1 some runs failed or the suite stopped after a storage failure; 2 bad input (one
line, nothing written); 130/143 stopped by Ctrl-C / SIGTERM (the results so far are kept; --resume continues).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ckptbench.cli import options
from ckptbench.cli.app import Command, Context, subcommand_help
from ckptbench.spec import config as config_mod


class Run(Command):
    name = "run"

    summary = ("Benchmark saving and loading LLaMA weights as TensorStore zarr arrays: every test of the config, "
               "with cold loads, bit-exact verification and interleaved rounds. " + subcommand_help())

    def add_arguments(self, parser: argparse.ArgumentParser, context: Context) -> None:
        default = context.default_config or f"./{options.CONFIG_NAME}, else the packaged default"
        parser.add_argument("--config", type=Path, help=f"suite config JSON (default: {default})")
        parser.add_argument("--output-dir", help="where results.json, the figures and run folders go")
        parser.add_argument("--runs", type=options.positive_int,
                            help="measured runs per test (overrides testing.num_runs)")
        parser.add_argument("--confirm-rounds", type=int, metavar="N",
                            help="after the rounds, measure the answer's finalists again in N fresh rounds per block "
                                 "(overrides testing.confirm_rounds; 0: off)")
        options.add_weight_arguments(parser)
        parser.add_argument("--tests", help="comma-separated subset of test names to run")
        parser.add_argument("--processes", help="worker processes per save and load, e.g. 4, or 1,2,4 to compare")
        parser.add_argument("--tp", help="tensor-parallel load: N readers together, each reading only its slice of "
                                         "every tensor (Megatron's split; norms whole), for every test and reference "
                                         "row; N must divide the model's heads and kv heads (with tp_aligned "
                                         "chunks, every split dimension); loads are evicted with fadvise unless "
                                         "--cache-eviction names a method")
        parser.add_argument("--seed", type=int, help="seed of the per-round shuffle (default: random, recorded)")
        parser.add_argument("--order", choices=("interleaved", "blocked"),
                            help="interleaved rounds (default) or each test's runs back to back, as the original")
        parser.add_argument("--cache-eviction", choices=config_mod.CACHE_EVICTION,
                            help="how loads are made cold (default: auto; none leaves them warm, as the original)")
        parser.add_argument("--load-into", choices=config_mod.LOAD_INTO,
                            help="where every row's load puts what it reads: new (memory allocated inside the "
                                 "clock) or preallocated (arrays allocated before it, filled in place); default: "
                                 "the config's testing.load_into, else new")
        parser.add_argument("--keep", action="store_true",
                            help="keep the last run's checkpoint of each test under OUTPUT_DIR/runs for inspection")
        options.add_output_arguments(parser)
        parser.add_argument("--list-models", action="store_true", help="list weight presets and exit")
        parser.add_argument("--details", action="store_true",
                            help="print every table and warning (the cost, the ceiling's patterns, every comparison "
                                 "and claim), not only the answer, one table and the warnings that matter")
        parser.add_argument("--dry-run", action="store_true",
                            help="print the plan (tests x runs, estimated wall time, disk, peak memory) and the "
                                 "pre-check's verdict, and write nothing: exit 0, or 2 when the pre-check refuses")

    def execute(self, args: argparse.Namespace, context: Context) -> int:
        if args.list_models:
            from ckptbench.cli.commands.list_models import COMMAND as list_models

            return list_models.execute(args, context)
        path, implied = options.config_path(args, context)
        from ckptbench.parallel.launch import detect

        launch = detect()  # the process's role, chosen once: a run on this host, or a rank of a launch
        suite = config_mod.load(path, **{**implied, **_overrides(args)})
        if args.dry_run:
            return dry_run(suite)
        from ckptbench.bench.context import RunContext
        from ckptbench.bench.suite import run_suite
        from ckptbench.core.errors import Stopped
        from ckptbench.parallel.spawned import LocalWriters
        from ckptbench.reports.progress import Progress

        progress = Progress(enabled=not args.no_progress)
        # on this host, workers spawned here; under a launcher, Session.run puts the launch's ranks in their place
        run = RunContext(suite, LocalWriters(), progress, resume=args.resume, keep=args.keep)
        try:
            if launch is None:
                results = run_suite(run)
            else:
                from ckptbench.parallel.session import Session

                with Session(launch) as session:
                    session.check_same_suite(suite)
                    if not session.is_rank0:  # it serves rank 0, which reports
                        status = session.serve(suite)
                        if status:
                            raise SystemExit(status)  # rank 0 said why
                        return 0
                    results = session.run(run, run_suite)
        except Stopped as stop:
            progress.close()
            show(stop.partial, args.details)
            print(f"error: stopped by {stop}; the runs so far are kept in "
                  f"{suite.output_dir / 'journal.jsonl'}; continue with --resume", file=sys.stderr)
            return stop.exit_status
        progress.close()
        show(results, args.details)
        if not results.complete:
            print("error: the suite stopped early after a storage failure; see the warnings; "
                  "continue with --resume once fixed", file=sys.stderr)
        return 1 if results.failed_runs or not results.complete else 0


def _overrides(args: argparse.Namespace) -> dict:
    return {"output_dir": args.output_dir, "num_runs": args.runs, "confirm_rounds": args.confirm_rounds,
            "tests": options.parse_tests(args.tests), "seed": args.seed, "storage": args.storage,
            "processes": options.parse_processes(args.processes),
            "tp": None if args.tp is None else options.parse_tp(args.tp),
            "order": args.order, "cache_eviction": args.cache_eviction, "load_into": args.load_into,
            **options.weight_overrides(args)}


def show(results, details: bool = False) -> None:
    """The console (every table with `details`), then the figures beside results.json."""
    from ckptbench.figures.drawing import draw_all
    from ckptbench.reports.results import console, full_report

    drawn = draw_all(results.document, results.path.parent) if results.path is not None else []
    print((full_report if details else console)(results.document))
    print(f"\nResults: {results.path}" + "".join(f"\nPlot:    {p}" for p in drawn))


COMMAND = Run()


def dry_run(suite: config_mod.SuiteConfig, what: str = "the suite") -> int:
    """Print a suite's plan and the pre-check's verdict, writing nothing; the exit status (2: refused)."""
    from ckptbench.bench import preflight
    from ckptbench.reports import plan

    checked = preflight.check(suite)
    print(plan.text(checked.to_json(), what))
    return 0 if checked.refusal is None else 2
