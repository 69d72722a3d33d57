"""The command line: a subcommand name, then its flags (see main.py)."""

from ckptbench.cli.app import main

__all__ = ["main"]
