#!/usr/bin/env python3
"""The Phase 4 framework's front: run the six built-in tests without a config file.

    python phase4_optimization_testing.py [--model PRESET] [--runs N] ...

Importable too: the names below are the framework's public pieces.
"""

import sys

from ckptbench import config, measure, plot, report, results, storage, weights
from ckptbench.cli import BUILTIN_CONFIG, main
from ckptbench.errors import UserError

__all__ = ["BUILTIN_CONFIG", "UserError", "config", "main", "measure", "plot", "report", "results",
           "storage", "weights"]

if __name__ == "__main__":
    sys.exit(main(default_config=None, prog="phase4_optimization_testing.py"))
