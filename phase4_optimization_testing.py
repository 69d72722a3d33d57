#!/usr/bin/env python3
"""The Phase 4 framework as a library: the six tests of phase4_config.json, from Python.

    import ckptbench
    suite = ckptbench.load_config("phase4_config.json", model="tiny", num_runs=2, output_dir="saved_models/demo")
    results = ckptbench.run(suite)          # saves, loads cold, verifies; writes results.json
    print(results.report())                 # the console tables
    results.draw(suite.output_dir)          # optimization_analysis.png and the other figures

Run as a script it does what run_phase4_streamlined.py does, with the same flags:

    python phase4_optimization_testing.py [--model PRESET] [--runs N] ...
"""

import sys
from pathlib import Path

from ckptbench import load_config, read_results, run
from ckptbench.cli.app import main
from ckptbench.core.errors import UserError

CONFIG = Path(__file__).resolve().with_name("phase4_config.json")  # the one default config

__all__ = ["CONFIG", "UserError", "load_config", "main", "read_results", "run"]

if __name__ == "__main__":
    sys.exit(main(default_config=CONFIG, prog="phase4_optimization_testing.py"))
