"""`explain`: which of the original harness's conditions produced each of its expectations.

It runs the claims' tests of the config (the baseline and every test with an
`expected` range) under the arms of ckptbench/explain.py, all interleaved in one suite
through `runner.run`, then writes OUTPUT_DIR/explain.json and explain.png beside the
suite's results.json and prints one line per claim.

The budget is a deadline: when it is spent, the suite stops after the run in progress
the way a stop signal stops it (the runs so far are kept and explained, `--resume`
continues). Size --runs so that it is not reached: progress lines give the pace.

Exit status: 0 explained in full; 1 stopped by the budget or some runs failed;
2 bad input; 130/143 stopped by Ctrl-C / SIGTERM (the runs so far are explained).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ckptbench.spec import config as config_mod
from ckptbench.core import interrupt
from ckptbench.cli.app import Context
from ckptbench.core.units import parse_duration
from ckptbench.cli.commands.run import add_weight_arguments, config_path, parse_tests, positive_int, weight_overrides

DEFAULT_BUDGET_S = 20 * 60.0  # a guard: the default model's explain took 12 min on a quiet 2-core machine
DEFAULT_RUNS = 3
OUTPUT_NAME = "explain"  # beside the config's output folder: saved_models/explain by default


def parse_conditions(text: str | None) -> list[str] | None:
    from ckptbench.explain import core as explain

    if text is None:
        return None
    if text.strip() == "all":
        return [c.name for c in explain.CONDITIONS]
    return [name.strip() for name in text.split(",") if name.strip()]


class BudgetSpent(interrupt.Interrupted):
    """The --budget ran out: the suite stops as on a stop signal, keeping its runs."""

    def __init__(self, budget_s: float) -> None:
        BaseException.__init__(self, f"the --budget of {budget_s / 60:.3g} min")
        self.signum = 0
        self.results: Any = None

    @property
    def exit_status(self) -> int:
        return 1


class Explain:
    def description(self, context: Context) -> str:
        return ("Measure the claims' tests under the original Phase 4 harness's conditions, one condition at a time "
                "(all arms interleaved in one suite), and say which condition produced each of its expectations.")

    def add_arguments(self, parser: argparse.ArgumentParser, context: Context) -> None:
        from ckptbench.explain import core as explain

        default = context.default_config or "./phase4_config.json, else the packaged default"
        parser.add_argument("--config", type=Path, help=f"the config whose claims are explained (default: {default})")
        parser.add_argument("--output-dir", help=f"where results.json, explain.json and explain.png go (default: "
                                                 f"{OUTPUT_NAME}/ beside the config's output folder)")
        parser.add_argument("--runs", type=positive_int, help=f"measured runs per test and arm (default {DEFAULT_RUNS})")
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

    def run(self, args: argparse.Namespace, context: Context) -> int:
        from ckptbench.explain import core as explain
        from ckptbench.bench import suite as runner
        from ckptbench.sources import weights
        from ckptbench.reports.progress import Progress

        budget_s = DEFAULT_BUDGET_S if args.budget is None else parse_duration(args.budget, "--budget")
        path, implied = config_path(args, context)
        user = config_mod.load(path, **{**implied, **weight_overrides(args), "seed": args.seed})
        output_dir = Path(args.output_dir).resolve() if args.output_dir else user.output_dir.parent / OUTPUT_NAME
        shapes = None if user.weights is not None else [s for _, s in weights.preset_shapes(user.model)]
        design = explain.design(explain.setup_of(user, parse_tests(args.tests), shapes), parse_conditions(args.conditions))
        suite = config_mod.from_dict(explain.suite_data(design, user, output_dir, args.runs or DEFAULT_RUNS),
                                     source="explain")
        progress = Progress(enabled=not args.no_progress)
        pace = _Pace(budget_s, progress)
        stopped: interrupt.Interrupted | None = None
        try:
            outcome = runner.run(suite, resume=args.resume, on_start=pace.start, on_phase=progress.phase,
                                 on_record=pace.finished)
        except interrupt.Interrupted as stop:
            stopped, outcome = stop, stop.results
        finally:
            progress.close()
        if outcome is None:  # stopped before any result was written
            return stopped.exit_status if stopped is not None else 1
        return _explain(design, outcome, stopped)


class _Pace:
    """Progress callbacks plus the budget: warns once when the pace will overrun it, stops when it is spent."""

    def __init__(self, budget_s: float, progress: Any) -> None:
        self.budget_s, self.progress = budget_s, progress
        self.started = time.monotonic()
        self.total = self.done = 0
        self.warned = False

    def start(self, start: Any) -> None:
        self.started = time.monotonic()
        self.total = start.total_runs
        self.progress.start(start)
        self.progress.message(f"explain: {start.n_tests} tests (arms x tests, shared ones measured once) x "
                              f"{start.num_runs} runs; budget {self.budget_s / 60:.3g} min")

    def finished(self, record: Any) -> None:
        self.progress.finished(record)
        self.done += 1
        elapsed = time.monotonic() - self.started
        if self.done >= self.total:
            return
        if elapsed > self.budget_s:
            raise BudgetSpent(self.budget_s)
        projected = elapsed / self.done * self.total
        if not self.warned and self.done >= max(3, self.total // 10) and projected > self.budget_s:
            self.warned = True
            self.progress.message(f"warning: at this pace the suite needs about {projected / 60:.0f} min, over the "
                                  f"budget of {self.budget_s / 60:.3g} min; it will stop at the budget (--resume "
                                  "continues), or use fewer --runs, --tests or --conditions")


def _explain(design: Any, outcome: Any, stopped: interrupt.Interrupted | None) -> int:
    """Judge, write explain.json and explain.png, print the answer; the exit status."""
    from ckptbench.bench import environment
    from ckptbench.explain import core as explain, plot as explain_plot
    from ckptbench.documents import results

    document = outcome.document
    data_bytes = int(document["weights"]["size_bytes"])
    samples = {t["name"]: results.samples(t["runs"], data_bytes) for t in document["tests"]}
    explained = explain.document(design, document, samples, tool=environment.tool_info())
    folder = outcome.path.parent
    written = explain.write(explained, folder)
    figure = explain_plot.draw(explained, folder / explain_plot.PLOT_FILE)
    print("\n".join(explain.answer(explained)))
    print(f"\nExplained: {written}\nPlot:      {figure}\nRuns:      {outcome.path}")
    if stopped is not None:
        print(f"error: stopped by {stopped} before every run; the claims above use the runs so far; "
              "continue with --resume (same flags)", file=sys.stderr)
        return stopped.exit_status
    if outcome.failed_runs:
        print(f"error: {outcome.failed_runs} run(s) failed; see {outcome.path}", file=sys.stderr)
        return 1
    return 0


COMMAND = Explain()
