"""The command line: a subcommand name (COMMANDS; none means run), then that subcommand's flags.

Each subcommand is one `Command` in its own module under `commands/`, imported only when named, so `--help`, `compare`
and `show` never import TensorStore, torch or transformers. Every command runs from Python too, with its flags' names as
keywords: `load_command("show").run(results="out/results.json", no_figures=True)`. A `UserError` anywhere is printed as
one line and exits with status 2 (as asv does).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Sequence

from ckptbench.core.errors import UserError

COMMANDS: dict[str, str] = {
    "run": "run a suite from a config (the default)",
    "compare": "compare two results files test by test",
    "show": "reprint the tables and redraw the figures of a results file",
    "list-models": "list the weight presets",
    "tune": "find the fastest TensorStore layout for a model on this disk, within a time budget",
}
DEFAULT_COMMAND = "run"
ONE_HOST = ("tune",)  # it plans suites from the results of earlier ones: not under a launcher


@dataclass(frozen=True)
class Context:
    """What an entry point tells the subcommands: its name and its default config file."""

    prog: str = "ckptbench"
    default_config: Path | None = None  # None: ./phase4_config.json, else the packaged default


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a UserError (one line, exit 2) instead of usage text."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see --help")


class Command:
    """One subcommand (asv's shape): its flags, and `execute` for parsed flags; `run` calls it from Python."""

    name = ""
    summary = ""  # what --help says first

    def add_arguments(self, parser: argparse.ArgumentParser, context: Context) -> None:
        pass

    def execute(self, args: argparse.Namespace, context: Context) -> int:
        """Do the command for parsed flags; the exit status."""
        raise NotImplementedError

    def parser(self, context: Context) -> Parser:
        prog = f"{context.prog} {self.name}" if self.name != DEFAULT_COMMAND else context.prog
        parser = Parser(prog=prog, description=self.summary)
        self.add_arguments(parser, context)
        return parser

    def run(self, context: Context | None = None, **options: Any) -> int:
        """The command from Python: each keyword is a flag's name (--output-dir: output_dir), its value what the flag
        would give. Prints what the command line prints and returns its exit status; bad input raises UserError."""
        context = context or Context()
        actions = {a.dest: a for a in self.parser(context)._actions if a.dest != "help"}
        unknown = sorted(set(options) - set(actions))
        if unknown:
            raise TypeError(f"{self.name}: no option {unknown[0]!r}; options: {', '.join(sorted(actions))}")
        missing = [dest for dest, a in actions.items() if a.required and dest not in options]
        if missing:
            raise TypeError(f"{self.name}: {missing[0]!r} is required")
        values = {dest: a.default for dest, a in actions.items()}
        return self.execute(argparse.Namespace(**{**values, **options}), context)


def main(argv: Sequence[str] | None = None, default_config: Path | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    context = Context(prog or "ckptbench", default_config)
    name = argv[0] if argv and argv[0] in COMMANDS else DEFAULT_COMMAND
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    try:
        if name in ONE_HOST:
            _refuse_launch(name)
        command = load_command(name)
        return command.execute(command.parser(context).parse_args(rest), context)
    except UserError as exc:
        print("error: " + str(exc).replace("\n", "\\n"), file=sys.stderr)  # one line, whatever a path holds
        return UserError.exit_status


def _refuse_launch(name: str) -> None:
    from ckptbench.parallel.launch import detect

    launch = detect()
    if launch is not None:
        raise UserError(f"{name}: runs on one host, and {launch.launcher} started {launch.world_size} ranks; start "
                        f"{name} without the launcher (run, the default subcommand, is the one that uses ranks)")


def load_command(name: str) -> Command:
    """The command object of a subcommand (its module's COMMAND), imported on demand."""
    return importlib.import_module(f".commands.{name.replace('-', '_')}", __package__).COMMAND


def subcommand_help() -> str:
    return "subcommands: " + "; ".join(f"{name}: {text}" for name, text in COMMANDS.items())
