"""ckptbench: honest save/load benchmarks of LLM checkpoints stored with TensorStore.

    import ckptbench
    suite = ckptbench.load_config("phase4_config.json", model="tiny", num_runs=2)
    results = ckptbench.run(suite)          # also writes OUTPUT_DIR/results.json
    print(results.report())
    results.draw(suite.output_dir)          # the PNG figures

Importing the package imports nothing heavy: TensorStore, torch and matplotlib load only when a suite runs or a figure
is drawn.
"""

from __future__ import annotations

from typing import Any

from ckptbench.core.errors import UserError

__all__ = ["UserError", "load_config", "read_results", "run", "Results", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("run", "read_results", "Results"):
        from ckptbench import api

        return getattr(api, name)
    if name == "load_config":
        from ckptbench.spec.config import load

        return load
    if name == "__version__":
        from ckptbench.bench.environment import tool_version

        return tool_version()
    raise AttributeError(f"module 'ckptbench' has no attribute {name!r}")
