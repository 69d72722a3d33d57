"""tensor_parallel_analysis.png: tensor-parallel loads, from a results document with tp > 1 tests (PHASE4_GUIDE.md,
section 4.11): load seconds against tp per format, labelled with each point's read amplification, the ceiling's N-stream
read dashed; beside it, what the readers' read calls returned over their slices (rchar).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ckptbench.figures.common import ERRORBAR_NOTE, figure, source_line
from ckptbench.figures.sweep import line, save_titled
from ckptbench.spec.references import CEILING

TENSOR_PARALLEL_FILE = "tensor_parallel_analysis.png"
_SUFFIX = "_tp="


def _tp(test: Mapping[str, Any]) -> int:
    return int(test["settings"].get("tp") or 1)


def groups(document: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    """Tests by format (the name without its `_tp=N`), each group ordered by tp; only formats with a tp > 1 point."""
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for test in document["tests"]:
        if test["stats"]["load_s"]["mean"] is None:
            continue
        by_name.setdefault(test["name"].split(_SUFFIX, 1)[0], []).append(test)
    return {name: sorted(tests, key=_tp) for name, tests in by_name.items() if any(_tp(t) > 1 for t in tests)}


def amplification_label(test: Mapping[str, Any]) -> str:
    """A point's device read amplification: O_DIRECT rows say so (their readers share no page cache), and a sum
    below 1 is not a figure but a gap in the accounting (results.tensor_parallel)."""
    parallel = test.get("tensor_parallel") or {}
    amplification = parallel.get("read_amplification")
    if amplification is None:
        return ""
    text = f"x{amplification:.2f}" + (" O_DIRECT" if parallel.get("reads") == "O_DIRECT" else "")
    return text + " (bytes unaccounted)" if parallel.get("unaccounted_bytes") else text


def draw_tensor_parallel(document: Mapping[str, Any], path: Path) -> Path | None:
    """Draw the figure; None unless some test loaded tensor-parallel."""
    grouped = groups(document)
    if not grouped:
        return None
    fig, grid = figure(15, 6.5, 1, 2)
    seconds_ax, rchar_ax = grid[0]
    for name, tests in grouped.items():
        xs = [_tp(t) for t in tests]
        ceiling = name == CEILING
        style = {"color": "#c1121f", "linestyle": "--"} if ceiling else {}
        line(seconds_ax, xs, tests, "load_s", "device ceiling: N streams, 1/N of the bytes each" if ceiling else name,
             **style)
        for x, test in zip(xs, tests):
            text = amplification_label(test)
            if text:
                seconds_ax.annotate(text, (x, test["stats"]["load_s"]["mean"]), textcoords="offset points",
                                    xytext=(4, 4), fontsize=7)
        rchar = [(x, (t.get("tensor_parallel") or {}).get("rchar_amplification")) for x, t in zip(xs, tests)]
        rchar = [(x, a) for x, a in rchar if a and a > 0.05]  # ~0: a loader reading through a memory map
        if rchar and not ceiling:
            rchar_ax.plot([x for x, _ in rchar], [a for _, a in rchar], marker="o", label=name)
    ticks = sorted({_tp(t) for tests in grouped.values() for t in tests})
    for ax in (seconds_ax, rchar_ax):
        ax.set_xticks(ticks)
        ax.set_xlabel("tp: reader processes, each reading its tensor-parallel slice")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    seconds_ax.set_ylim(bottom=0)
    seconds_ax.set_ylabel("load s (common start to the slowest reader)")
    seconds_ax.set_title("Load (cold) by tp readers; labels: device read amplification\n"
                         "(sum of read_bytes / sum of slice bytes; O_DIRECT rows share no page cache; below 1: "
                         "bytes unaccounted)")
    seconds_ax.text(0.01, -0.14, ERRORBAR_NOTE, transform=seconds_ax.transAxes, fontsize=7)
    rchar_ax.axhline(1.0, color="grey", linewidth=0.8)
    rchar_ax.set_ylabel("bytes returned by read calls / slice bytes (rchar)")
    rchar_ax.set_title("What each format makes its readers read\n(mmap readers, such as safetensors, count 0: "
                       "not drawn)")
    return save_titled(fig, f"Tensor-parallel loads: {source_line(document)}", path)
