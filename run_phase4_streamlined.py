#!/usr/bin/env python3
"""Run the Phase 4 suite from phase4_config.json (next to this script), and the other subcommands.

    python run_phase4_streamlined.py            # six tests + references x 3 runs -> saved_models/phase4_tests/
    python run_phase4_streamlined.py --help
    python run_phase4_streamlined.py compare A.json B.json
    python run_phase4_streamlined.py show saved_models/phase4_tests/results.json
    python run_phase4_streamlined.py tune --budget 5m
"""

import sys
from pathlib import Path

from ckptbench.cli.app import main

if __name__ == "__main__":
    sys.exit(main(default_config=Path(__file__).resolve().with_name("phase4_config.json"),
                  prog="run_phase4_streamlined.py"))
