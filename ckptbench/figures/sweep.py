"""sweep_analysis.png: save and load throughput against the swept setting, from a results document (PHASE4_GUIDE.md,
section 6). Error bars are the mean's 95% CI on the log scale (none with 2 runs or fewer); the distance to the dashed
device ceiling is what a configuration leaves on the table.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Mapping

from ckptbench.core.units import size_label
from ckptbench.figures.common import ERRORBAR_NOTE, figure, mean_and_err, save, source_line
from ckptbench.spec.fields import SWEEP_FIELDS
from ckptbench.spec.references import CEILING

SWEEP_FILE = "sweep_analysis.png"
PROCESSES = "processes"
_CHUNK_FIELDS = ("chunk_bytes", "chunk_size_elements")


def _chunk_bytes(settings: Mapping[str, Any], itemsize: int) -> int:
    if settings.get("chunk_bytes") is not None:
        return settings["chunk_bytes"]
    return settings["chunk_size_elements"] * itemsize


def _label(field: str, settings: Mapping[str, Any]) -> str:
    value = settings["compression_label"] if field == "compression" else settings.get(field)
    return f"{SWEEP_FIELDS.get(field, field)}={value}"


def draw_sweep(document: Mapping[str, Any], path: Path) -> Path | None:
    """Draw sweep_analysis.png for the swept tests of a document; None when nothing was swept."""
    swept = [t for t in document["tests"] if set(t["settings"].get("sweep") or {}) - {PROCESSES}]
    if not swept:
        return None
    itemsize = max(1, round(document["weights"]["size_bytes"] / max(1, document["weights"]["n_params"])))
    fields = list(dict.fromkeys(f for t in swept for f in t["settings"]["sweep"] if f != PROCESSES))
    x_field = next((f for f in fields if f in _CHUNK_FIELDS), fields[0])
    series_fields = [f for f in fields if f != x_field] + ([PROCESSES] if any(
        PROCESSES in t["settings"]["sweep"] for t in swept) else [])

    def x_of(test: Mapping[str, Any]) -> Any:
        if x_field in _CHUNK_FIELDS:
            return _chunk_bytes(test["settings"], itemsize)
        return _label(x_field, test["settings"]).split("=", 1)[1]

    groups: dict[str, list[Mapping[str, Any]]] = {}
    for test in swept:
        key = ", ".join(_label(f, test["settings"]) for f in series_fields) or "all"
        groups.setdefault(key, []).append(test)
    categories = list(dict.fromkeys(x_of(t) for t in swept))
    ceiling = next((t for t in document["tests"] if t["name"] == CEILING), None)

    fig, grid = figure(15, 6.5, 1, 2)
    axes = grid[0]
    panels = ((axes[0], "save_gbps", "Save throughput"), (axes[1], "load_gbps", "Load throughput (cold)"))
    for ax, metric, title in panels:
        for key, tests in groups.items():
            tests = sorted(tests, key=lambda t: categories.index(x_of(t)))
            xs = [x_of(t) if x_field in _CHUNK_FIELDS else categories.index(x_of(t)) for t in tests]
            line(ax, xs, tests, metric, key)
        if x_field in _CHUNK_FIELDS:
            ax.set_xscale("log", base=2)
            ticks = sorted({x_of(t) for t in swept})
            ax.set_xticks(ticks, [size_label(b) for b in ticks], rotation=30)
            ax.set_xlabel("chunk size (bytes, log scale)")
        else:
            ax.set_xticks(range(len(categories)), categories, rotation=30)
            ax.set_xlabel(SWEEP_FIELDS[x_field])
        finish_axes(ax, ceiling, metric, title, "GB/s (tensor bytes / time)")
    return save_titled(fig, f"Sweep: {source_line(document)}", path)


def line(ax, xs: list, tests: list[Mapping[str, Any]], metric: str, label: str, **style: Any) -> None:
    """One series: means with their 95% CI (no bar where a point has one run)."""
    points = [mean_and_err(t["stats"][metric]) for t in tests]
    ax.errorbar(xs, [mean for mean, _ in points], yerr=list(zip(*(err for _, err in points))),
                marker="o", capsize=3, label=label, **style)


def finish_axes(ax, ceiling: Mapping[str, Any] | None, metric: str, title: str, ylabel: str) -> None:
    if ceiling and ceiling["stats"][metric]["mean"]:
        ax.axhline(ceiling["stats"][metric]["mean"], color="#c1121f", linestyle="--",
                   label=f"device ceiling {ceiling['stats'][metric]['mean']:.2f} GB/s")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(f"{title}\n{ERRORBAR_NOTE}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def save_titled(fig, title: str, path: Path) -> Path:
    """Save with the title wrapped to the figure's width (a long model name must not run off its edges)."""
    fig.suptitle("\n".join(textwrap.wrap(title, int(fig.get_figwidth() * 9))), fontsize=12)
    return save(fig, path)
