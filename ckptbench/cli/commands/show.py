"""`show RESULTS.json`: reprint the tables and redraw every figure of an existing results file.

Files written by older versions are upgraded on reading (results.upgrade), so a run from months ago can be redrawn with
today's figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ckptbench.cli.app import Command
from ckptbench.documents import results


class Show(Command):
    name = "show"

    summary = "Reprint the answer and tables and redraw every figure of a results.json (any version this tool wrote)."

    def add_arguments(self, parser: argparse.ArgumentParser, context) -> None:
        parser.add_argument("results", type=Path, metavar="RESULTS.json", help="a results file")
        parser.add_argument("--output-dir", type=Path,
                            help="draw the figures here (default: the folder of RESULTS.json)")
        parser.add_argument("--format", choices=("text", "markdown"), default="text", help="table format")
        parser.add_argument("--no-figures", action="store_true", help="print the tables only")
        parser.add_argument("--details", action="store_true",
                            help="print every table and warning, not only the answer, one table and the warnings "
                                 "that matter")

    def execute(self, args: argparse.Namespace, context) -> int:
        from ckptbench.figures.drawing import draw_all
        from ckptbench.reports.results import console, full_report

        loaded = results.read(args.results)
        print((full_report if args.details else console)(loaded.document, args.format))
        if not args.no_figures:
            folder = args.output_dir or args.results.resolve().parent
            folder.mkdir(parents=True, exist_ok=True)
            drawn = draw_all(loaded.document, folder)
            print("".join(f"\nPlot:    {p}" for p in drawn))
        return 0


COMMAND = Show()
