"""The Python API: run a suite on this host and read its results, tables and figures (the package's docstring has an
example). Every subcommand is also a Python call: `ckptbench.cli.commands.<name>.COMMAND.run(...)`. Under a launcher
(torchrun, srun, mpirun) the ranks are joined by the command line (`run_phase4_streamlined.py`), which chooses each
process's role once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckptbench.documents import results as results_doc
from ckptbench.spec.suite import SuiteConfig


class Results(results_doc.Results):
    """A results document with its console report and figures."""

    def report(self, fmt: str = "text") -> str:
        from ckptbench.reports import results as report

        return report.full_report(self.document, fmt)

    def draw(self, folder: Path | str) -> list[Path]:
        """Every figure the document has data for, as PNG files in folder."""
        from ckptbench.figures.drawing import draw_all

        return draw_all(self.document, Path(folder))


def run(config: SuiteConfig, **options: Any) -> Results:
    """Run a suite on this host; `options` are bench.context.RunContext's, or on_start, on_phase and on_record, an
    observer's three functions. Tests with several processes get workers spawned here."""
    from ckptbench.bench.context import Callbacks, RunContext
    from ckptbench.bench.suite import run_suite
    from ckptbench.parallel.spawned import LocalWriters

    told = {name: options.pop(f"on_{name}") for name in ("start", "phase", "record") if f"on_{name}" in options}
    if told:
        options["observer"] = Callbacks(**told)
    outcome = run_suite(RunContext(config, LocalWriters(), **options))
    return Results(outcome.document, outcome.path)


def read_results(path: Path | str) -> Results:
    """Read, upgrade and validate a results file of any version this tool has written."""
    outcome = results_doc.read(path)
    return Results(outcome.document, outcome.path)
