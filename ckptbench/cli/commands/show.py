"""`show RESULTS.json`: reprint the tables and redraw every figure of an existing results file.

Files written by older versions are upgraded on reading (results.upgrade), so a run
from months ago can be redrawn with today's figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ckptbench.documents import results


class Show:
    def description(self, context) -> str:
        return "Reprint the tables and redraw every figure of a results.json (any version this tool wrote)."

    def add_arguments(self, parser: argparse.ArgumentParser, context) -> None:
        parser.add_argument("results", type=Path, metavar="RESULTS.json", help="a results file")
        parser.add_argument("--output-dir", type=Path,
                            help="draw the figures here (default: the folder of RESULTS.json)")
        parser.add_argument("--format", choices=("text", "markdown"), default="text", help="table format")
        parser.add_argument("--no-figures", action="store_true", help="print the tables only")

    def run(self, args: argparse.Namespace, context) -> int:
        loaded = results.read(args.results)
        print(loaded.report(args.format))
        if not args.no_figures:
            folder = args.output_dir or args.results.resolve().parent
            folder.mkdir(parents=True, exist_ok=True)
            drawn = loaded.draw(folder)
            print("".join(f"\nPlot:    {p}" for p in drawn))
        return 0


COMMAND = Show()
