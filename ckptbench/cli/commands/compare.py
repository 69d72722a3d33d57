"""`compare A.json B.json`: B against A, test by test (analysis.versus judges, reports.compare writes)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ckptbench.analysis import versus as compare
from ckptbench.cli.app import Command
from ckptbench.core.errors import UserError
from ckptbench.documents import results
from ckptbench.reports import compare as compare_report
from ckptbench.spec.references import CEILING


def non_negative_pct(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a percentage >= 0, got {text}")
    return value


class Compare(Command):
    name = "compare"

    summary = "Compare two results.json files test by test: B versus A, with Welch's t-test on the runs."

    def add_arguments(self, parser: argparse.ArgumentParser, context) -> None:
        parser.add_argument("a", type=Path, metavar="A.json", help="the reference results file")
        parser.add_argument("b", type=Path, nargs="+", metavar="B.json",
                            help="the results file judged against A (several: each judged against A)")
        parser.add_argument("--format", choices=("text", "markdown"), default="text",
                            help="table format (markdown renders on GitHub)")
        parser.add_argument("--fail-on-regression", type=non_negative_pct, metavar="PCT",
                            help="exit with status 1 when any metric is significantly slower or larger by more "
                                 "than PCT %%")
        parser.add_argument("--noise-pct", type=non_negative_pct, metavar="N",
                            help="changes under N %% are 'within noise' (default: A's noise_pct, else 5)")
        parser.add_argument("--details", action="store_true", help="also A's answer and B's warnings in full")
        parser.add_argument("--allow-busy", action="store_true",
                            help="judge times whose runs found the machine busy (other processes' CPU or disk "
                                 "bytes during a timed save or load); by default their differences are reported "
                                 "but not called significant")
        parser.add_argument("--scaling-plot", type=Path, metavar="PNG",
                            help="also draw GB/s against the number of writers (processes or ranks) of every "
                                 "file given: one launch per world size")

    def execute(self, args: argparse.Namespace, context) -> int:
        a = results.read(args.a)
        doc_a = a.document
        others = [results.read(path) for path in args.b]
        noise_pct = args.noise_pct if args.noise_pct is not None else compare.recorded_noise_pct(doc_a)
        compared = [(b, compare.compare_documents(doc_a, b.document, noise_pct, args.allow_busy)) for b in others]
        for b, rows in compared:
            if not rows:
                raise UserError(f"{args.a} and {b.path} have no test in common; nothing to compare")
        scaling = _scaling(args.scaling_plot, [doc_a, *(b.document for b in others)])
        bad = []
        for index, (b, rows) in enumerate(compared):
            for warning in compare.mismatch_warnings(doc_a, b.document):
                print(f"warning: {warning}", file=sys.stderr)
            text = compare_report.render(a, b, rows, noise_pct, args.format, args.details)
            print(("\n" if index else "") + text)
            if args.fail_on_regression is not None:
                bad += compare.regressions(rows, args.fail_on_regression)
        if scaling is not None:
            from ckptbench.figures.scaling import draw_scaling

            print(f"\nPlot:    {draw_scaling(scaling, args.scaling_plot)}")
        if bad:
            print(f"\nRegressions beyond {args.fail_on_regression:g}% (--fail-on-regression):")
            print("\n".join(f"  {r['test']} {r['metric']}: {r['comparison']['change_pct']:+.1f}% "
                            f"{r['comparison']['verdict']}" for r in bad))
            return 1
        return 0


def _scaling(path: Path | None, documents: list) -> dict | None:
    """The document --scaling-plot draws, checked before anything is printed or written."""
    if path is None:
        return None
    from ckptbench.figures.scaling import scaling_document
    from ckptbench.figures.sweep import PROCESSES

    document = scaling_document(documents)
    counts = sorted({t["settings"]["sweep"][PROCESSES] for t in document["tests"] if t["name"] != CEILING})
    if len(counts) < 2:
        raise UserError(f"--scaling-plot: every file was run with {counts[0] if counts else 'no'} writer(s); give "
                        "results of launches with different world sizes (or --processes counts)")
    return document


COMMAND = Compare()
