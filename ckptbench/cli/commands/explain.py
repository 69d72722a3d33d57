"""`explain`: which of the original harness's conditions produced each of its expectations.

The flags become `ckptbench.explain.Settings`, `explain.run` measures and writes
OUTPUT_DIR/explain.json beside the suite's results.json, and this command shows it: the
progress display while the suite runs, then explain.png and one line per claim.

The budget is a deadline: when it is spent, the suite stops after the run in progress
the way a stop signal stops it (the runs so far are kept and explained, `--resume`
continues). Size --runs so that it is not reached: progress lines give the pace.

Exit status: 0 explained in full; 1 stopped by the budget or some runs failed;
2 bad input; 130/143 stopped by Ctrl-C / SIGTERM (the runs so far are explained).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ckptbench.cli.app import Command, Context
from ckptbench.cli.commands.run import dry_run
from ckptbench.cli.options import add_weight_arguments, config_path, parse_tests, positive_int, weight_overrides
from ckptbench.core.errors import Stopped
from ckptbench.core.units import parse_duration

if TYPE_CHECKING:  # the package is imported when the command runs, not when the CLI starts
    from ckptbench.explain import Explanation, Settings


def parse_conditions(text: str | None) -> list[str] | None:
    """--conditions: names separated by commas, or 'all' (None: the defaults)."""
    from ckptbench.explain import CONDITIONS

    if text is None:
        return None
    if text.strip() == "all":
        return [c.name for c in CONDITIONS]
    return [name.strip() for name in text.split(",") if name.strip()]


class Explain(Command):
    name = "explain"

    summary = ("Measure the claims' tests under the original Phase 4 harness's conditions, one condition at a time "
               "(all arms interleaved in one suite), and say which condition produced each of its expectations.")

    def add_arguments(self, parser: argparse.ArgumentParser, context: Context) -> None:
        from ckptbench import explain

        default = context.default_config or "./phase4_config.json, else the packaged default"
        parser.add_argument("--config", type=Path, help=f"the config whose claims are explained (default: {default})")
        parser.add_argument("--output-dir", help=f"where results.json, explain.json and explain.png go (default: "
                                                 f"{explain.OUTPUT_NAME}/ beside the config's output folder)")
        parser.add_argument("--runs", type=positive_int,
                            help=f"measured runs per test and arm (default {explain.DEFAULT_RUNS})")
        add_weight_arguments(parser)
        parser.add_argument("--tests", help="comma-separated tests to explain (default: every test with an expected "
                                            "range); the baseline is always measured")
        parser.add_argument("--conditions", help="comma-separated conditions to switch, or 'all' (default: every "
                                                 "one but chunks64): " + ", ".join(c.name for c in explain.CONDITIONS))
        parser.add_argument("--budget", help="stop after this long, keeping and explaining the runs so far: 15m, "
                                              "900s, 1h (a bare number is seconds, as in tune; default 20m)")
        parser.add_argument("--seed", type=int, help="seed of the rounds' shuffles and the blocks' places "
                                                     "(default: random, recorded)")
        parser.add_argument("--resume", action="store_true",
                            help="continue an interrupted explain in the same output folder (same flags)")
        parser.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
        parser.add_argument("--details", action="store_true", help="a row per claim and arm, not only per claim")
        parser.add_argument("--dry-run", action="store_true",
                            help="print the plan (arms x tests x runs, estimated wall time, disk, peak memory) and the "
                                 "pre-check's verdict, and write nothing: exit 0, or 2 when it refuses")

    def execute(self, args: argparse.Namespace, context: Context) -> int:
        from ckptbench import explain
        from ckptbench.reports.progress import Progress

        settings = settings_of(args, context)
        if args.dry_run:
            design_, suite = explain.designed(settings)
            return dry_run(suite, f"explain's suite ({len(design_.arms)} arms x {len(design_.claims)} claims)")
        progress = Progress(enabled=not args.no_progress)
        stopped: Stopped | None = None
        try:
            explained = explain.run(settings, on_start=progress.start, on_phase=progress.phase,
                                    on_record=progress.record, on_message=progress.message)
        except Stopped as stop:
            stopped, explained = stop, stop.partial
        finally:
            progress.close()
        if explained is None:  # stopped before any result was written
            return stopped.exit_status if stopped is not None else 1
        return show(explained, stopped, args.details)


def settings_of(args: argparse.Namespace, context: Context) -> Settings:
    """explain.Settings from the flags (a bad --budget is refused here, before anything is read or written)."""
    from ckptbench import explain

    budget_s = explain.DEFAULT_BUDGET_S if args.budget is None else parse_duration(args.budget, "--budget")
    path, implied = config_path(args, context)
    tests, conditions = parse_tests(args.tests), parse_conditions(args.conditions)
    return explain.Settings(
        config=path, overrides={**implied, **weight_overrides(args), "seed": args.seed},
        output_dir=Path(args.output_dir) if args.output_dir else None, num_runs=args.runs or explain.DEFAULT_RUNS,
        tests=None if tests is None else tuple(tests), conditions=None if conditions is None else tuple(conditions),
        budget_s=budget_s, resume=args.resume)


def show(explained: Explanation, stopped: Stopped | None, details: bool = False) -> int:
    """Draw explain.png, print the answer, its table and warnings and where everything is; the exit status."""
    from ckptbench.explain import plot, words

    figure = plot.draw(explained.document, explained.path.parent / plot.PLOT_FILE)
    warnings = words.warnings(explained.document, explained.failed_runs)
    print("\n".join([*explained.answer(), "", words.table(explained.document, details),
                     *([""] + warnings if warnings else [])]))
    print(f"\nExplained: {explained.path}\nPlot:      {figure}\nRuns:      {explained.results.path}")
    if stopped is not None:
        print(f"error: stopped by {stopped} before every run; the claims above use the runs so far; "
              "continue with --resume (same flags)", file=sys.stderr)
        return stopped.exit_status
    if explained.failed_runs:
        print(f"error: {explained.failed_runs} run(s) failed; see {explained.results.path}", file=sys.stderr)
        return 1
    return 0


COMMAND = Explain()
