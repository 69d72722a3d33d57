"""The 6-panel figure, drawn from a results document (it measures and computes nothing).

Panels: save time, load time and size (means with 95% CI error bars); save and load
improvement vs baseline in % (bars with the 95% CI of the change, hatched where the
change is not significant); and a heatmap of improvement per test and metric whose
colour scale spans the largest value, so nothing is clipped.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import matplotlib.colors

matplotlib.use("Agg")  # files only: no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PLOT_FILE = "optimization_analysis.png"
ERRORBAR_NOTE = "error bars: 95% CI of the mean"


def _labels(names: Sequence[str]) -> list[str]:
    # Rotated labels fit ~28 characters; longer (sweep) names are wrapped at '_' boundaries.
    return [n if len(n) <= 28 else "\n".join(textwrap.wrap(n.replace("_", " "), 28)).replace(" ", "_") for n in names]


def _mean_and_err(summary: Mapping[str, Any], scale: float = 1.0) -> tuple[float, list[float]]:
    mean = summary.get("mean")
    if mean is None:
        return np.nan, [0.0, 0.0]
    ci = summary.get("ci95")
    if ci is None:
        return mean / scale, [0.0, 0.0]
    return mean / scale, [(mean - ci[0]) / scale, (ci[1] - mean) / scale]


def _bars(ax, names, tests, metric, scale, ylabel, title, color) -> None:
    means, errs = zip(*(_mean_and_err(t["stats"][metric], scale) for t in tests))
    x = np.arange(len(tests))
    bars = ax.bar(x, means, yerr=np.array(errs).T, capsize=4, color=color, edgecolor="black", linewidth=0.5)
    ax.bar_label(bars, labels=[f"{m:.3g}" if np.isfinite(m) else "failed" for m in means], padding=2, fontsize=7)
    ax.set_xticks(x, _labels(names), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.15)


def _improvement(ax, names, tests, baseline, metric, title) -> None:
    """Improvement = -change (positive is better), with the change's CI and significance."""
    x = np.arange(len(tests))
    values, lows, highs, hatches = [], [], [], []
    for t in tests:
        comparison = t["vs_baseline"].get(metric) or {}
        change = comparison.get("change_pct")
        ci = comparison.get("change_ci95_pct")
        value = np.nan if change is None else -change
        values.append(0.0 if t["name"] == baseline else value)
        lows.append(0.0 if ci is None or change is None else value - (-ci[1]))
        highs.append(0.0 if ci is None or change is None else (-ci[0]) - value)
        hatches.append("" if comparison.get("significant") or t["name"] == baseline else "//")
    colors = ["#2a9d8f" if v >= 0 else "#e76f51" for v in np.nan_to_num(values)]
    bars = ax.bar(x, values, yerr=[lows, highs], capsize=4, color=colors, edgecolor="black", linewidth=0.5)
    for bar, hatch in zip(bars, hatches):
        bar.set_hatch(hatch)
    labels = []
    for t, v in zip(tests, values):
        comparison = t["vs_baseline"].get(metric) or {}
        mark = "*" if comparison.get("significant") else ""
        labels.append("base" if t["name"] == baseline else (f"{v:+.0f}%{mark}" if np.isfinite(v) else "n/a"))
    ax.bar_label(bars, labels=labels, padding=2, fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, _labels(names), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("improvement vs baseline (%)")
    ax.set_title(title + "\n(* significant, // not significant; bars: 95% CI)", fontsize=10)
    ax.margins(y=0.2)


def _heatmap(fig, ax, names, tests) -> None:
    metrics = [("save_s", "save"), ("load_s", "load"), ("size_bytes", "size")]
    grid = np.array([[-(t["vs_baseline"].get(m) or {}).get("change_pct", 0.0) or 0.0 for m, _ in metrics]
                     for t in tests])
    limit = max(1.0, float(np.nanmax(np.abs(grid)))) if grid.size else 1.0  # symmetric, never clipped
    # Symmetric log scale: a -500 % gzip save does not wash out the +-20 % effects beside it.
    norm = matplotlib.colors.SymLogNorm(linthresh=10.0, vmin=-limit, vmax=limit, base=10)
    image = ax.imshow(grid, cmap="RdYlGn", norm=norm, aspect="auto")
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
    ax.set_yticks(range(len(tests)), [n if len(n) <= 22 else n[:21] + "\u2026" for n in names], fontsize=8)
    for (row, col), value in np.ndenumerate(grid):
        ax.text(col, row, f"{value:+.0f}%", ha="center", va="center", fontsize=8,
                color="white" if abs(norm(value) - 0.5) > 0.35 else "black")
    fig.colorbar(image, ax=ax, label="improvement vs baseline (%)")
    ax.set_title("Optimization impact, % improvement vs baseline\n(green = better; colour scale symmetric log)", fontsize=10)


def draw(document: Mapping[str, Any], path: Path) -> Path:
    """Draw the 6-panel figure for a results document into path (PNG)."""
    tests = document["tests"]
    names = [t["name"] for t in tests]
    width = max(16.0, 1.1 * len(tests) * 3)
    fig, axes = plt.subplots(2, 3, figsize=(width, 10.5), constrained_layout=True)
    _bars(axes[0, 0], names, tests, "save_s", 1.0, "seconds", f"Save time (lower is better)\n{ERRORBAR_NOTE}", "#457b9d")
    _bars(axes[0, 1], names, tests, "load_s", 1.0, "seconds", f"Load time, cold (lower is better)\n{ERRORBAR_NOTE}", "#8ab17d")
    _bars(axes[0, 2], names, tests, "size_bytes", 1e6, "MB on disk (file bytes)", f"Checkpoint size\n{ERRORBAR_NOTE}", "#e9c46a")
    _improvement(axes[1, 0], names, tests, document["baseline"], "save_s", "Save time improvement")
    _improvement(axes[1, 1], names, tests, document["baseline"], "load_s", "Load time improvement")
    _heatmap(fig, axes[1, 2], names, tests)
    w, p = document["weights"], document["protocol"]
    source = w.get("name") or Path(w.get("path", "?")).name
    title = (f"TensorStore checkpoint benchmark: {source} ({w['n_params'] / 1e6:.0f}M params, {w['dtype']}, "
             f"{w['size_bytes'] / 1e9:.2f} GB), {p['num_runs']} runs/test, loads {p['load_cache']}")
    if not document.get("complete", True):
        title += "  [INCOMPLETE]"
    fig.suptitle(title, fontsize=13)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
