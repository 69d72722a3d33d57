"""scaling_analysis.png: aggregate save and load GB/s against the number of writers (processes, or the ranks of a
launch), from one results document or several launches' (`compare --scaling-plot`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ckptbench.figures.common import figure, source_line
from ckptbench.figures.sweep import PROCESSES, finish_axes, line, save_titled
from ckptbench.spec.references import CEILING

SCALING_FILE = "scaling_analysis.png"


def draw_scaling(document: Mapping[str, Any], path: Path) -> Path | None:
    """Aggregate save and load GB/s against the number of processes; None unless several counts ran."""
    scaled = [t for t in document["tests"] if PROCESSES in (t["settings"].get("sweep") or {})]
    if len({t["settings"]["processes"] for t in scaled}) < 2:
        return None
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for test in scaled:
        groups.setdefault(test["name"].rsplit("_procs=", 1)[0], []).append(test)
    counts = sorted({t["settings"]["processes"] for t in scaled})
    ceiling = next((t for t in document["tests"] if t["name"] == CEILING), None)
    fig, grid = figure(14, 6, 1, 2)
    axes = grid[0]
    for ax, metric, title in ((axes[0], "save_gbps", "Save: aggregate throughput"),
                              (axes[1], "load_gbps", "Load (cold): aggregate throughput")):
        for name, tests in groups.items():
            tests = sorted(tests, key=lambda t: t["settings"]["processes"])
            line(ax, [t["settings"]["processes"] for t in tests], tests, metric, name)
        ax.set_xticks(counts)
        ax.set_xlabel("writers: processes or ranks (each writes and reads whole chunk rows of every array)")
        finish_axes(ax, ceiling, metric, title, "GB/s (tensor bytes / slowest process time)")
    return save_titled(fig, f"Scaling: {source_line(document)}", path)


def scaling_document(documents: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One document for `draw_scaling` from results files of one suite run with different numbers of writers (launches
    of different world sizes, or --processes runs): each TensorStore test becomes `name_procs=N`; the first file's
    weights and protocol, and the device ceiling (one disk: any file's is the disk's)."""
    ceilings = [t for d in documents for t in d["tests"] if t["name"] == CEILING]
    tests = ceilings[:1]
    for document in documents:
        for test in document["tests"]:
            if test.get("kind", "tensorstore") != "tensorstore":
                continue
            settings = test["settings"]
            count = settings.get("processes") or 1
            swept = {**(settings.get("sweep") or {})}
            name = test["name"] if PROCESSES in swept else f"{test['name']}_procs={count}"
            swept.setdefault(PROCESSES, count)
            tests.append({**test, "name": name, "settings": {**settings, "sweep": swept}})
    return {**documents[0], "tests": tests}
