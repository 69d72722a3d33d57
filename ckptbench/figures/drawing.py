"""Every figure of a results document, drawn in one call (the command line's `run` and `show`, and the Python API's
Results.draw)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from ckptbench.figures import claims, main, scaling, sweep, tensor_parallel


def draw_all(document: Mapping[str, Any], folder: Path) -> list[Path]:
    """Every figure the document has data for (none when no run succeeded). Where it is safe to fork (no TensorStore
    threads in this process, as in `show`), the other figures are drawn by a child process while this one draws the main
    figure: on two cores that halves the wait. A child that fails leaves its figures to be drawn here."""
    if not any(r["error"] is None for t in document["tests"] for r in t["runs"]):
        return []
    others = [(claims.draw_claims, claims.CLAIMS_FILE), (sweep.draw_sweep, sweep.SWEEP_FILE),
              (scaling.draw_scaling, scaling.SCALING_FILE),
              (tensor_parallel.draw_tensor_parallel, tensor_parallel.TENSOR_PARALLEL_FILE)]
    # TensorStore aborts a process that forks after its threads started (as in `run`)
    can_fork = hasattr(os, "fork") and "tensorstore" not in sys.modules and (os.cpu_count() or 1) > 1
    child = _fork_drawing(document, folder, others) if can_fork else None
    drawn: list[Path | None] = [main.draw(document, folder / main.PLOT_FILE)]
    if child is not None and os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0:
        drawn += [folder / name for _, name in others if (folder / name).is_file()]
    else:
        drawn += [function(document, folder / name) for function, name in others]
    return [path for path in drawn if path is not None]


def _fork_drawing(document: Mapping[str, Any], folder: Path, jobs: Sequence[tuple[Any, str]]) -> int | None:
    for _, name in jobs:  # what the child does not draw must not be taken for its work
        (folder / name).unlink(missing_ok=True)
    try:
        pid = os.fork()
    except OSError:
        return None
    if pid == 0:  # the child: draw, and leave at once without running the parent's cleanups
        status = 0
        try:
            for function, name in jobs:
                function(document, folder / name)
        except BaseException:  # noqa: BLE001 - the parent draws them instead
            status = 1
        os._exit(status)
    return pid
