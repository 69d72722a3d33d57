"""The figures, drawn from a results document (they measure and compute nothing).

The 6-panel figure: save time, load time and size (means with 95% CI error bars); save
and load improvement vs baseline in % (bars with the 95% CI of the change, hatched where
the change is not significant); and a heatmap of improvement per test and metric whose
colour scale spans the largest value, so nothing is clipped. It widens with the number
of tests and stands long tick labels upright, wrapped, so sweeps of 20+ tests stay legible.

The claims figure: each claimed % range as a band, the measured change and its 95% CI
over it, coloured by the claim's outcome.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import matplotlib.colors
import matplotlib.lines
import matplotlib.patches
import matplotlib.ticker

matplotlib.use("Agg")  # files only: no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PLOT_FILE = "optimization_analysis.png"
CLAIMS_FILE = "claims_check.png"
ERRORBAR_NOTE = "error bars: 95% CI of the mean"
LABEL_LINE_CHARS = 24  # tick labels longer than this are wrapped at '_' boundaries
MANY_TESTS = 8  # beyond this, tick labels stand upright: slanted ones would overlap their neighbours
CEILING = "device_ceiling"
OUTCOME_COLORS = {"confirmed": "#2a9d8f", "contradicted": "#e63946", "inconclusive": "#9a9a9a"}


def _wrap_name(name: str, width: int = LABEL_LINE_CHARS) -> str:
    """Wrap a long test name after '_' (kept at the line end, so the name can be read back exactly)."""
    lines, current = [], ""
    for part in name.split("_"):
        piece = part if not current else "_" + part
        if current and len(current) + len(piece) > width:
            lines.append(current + "_")
            current = part
        else:
            current += piece
    return "\n".join(lines + [current])


def _labels(names: Sequence[str]) -> list[str]:
    return [n if len(n) <= LABEL_LINE_CHARS else _wrap_name(n) for n in names]


def _set_test_ticks(ax, names: Sequence[str]) -> None:
    if len(names) > MANY_TESTS:
        ax.set_xticks(np.arange(len(names)), _labels(names), rotation=90, ha="center", fontsize=7)
    else:
        ax.set_xticks(np.arange(len(names)), _labels(names), rotation=30, ha="right", fontsize=8)


def _value_fontsize(n_tests: int) -> float:
    return 6 if n_tests > MANY_TESTS else 7


def _mean_and_err(summary: Mapping[str, Any], scale: float = 1.0) -> tuple[float, list[float]]:
    mean = summary.get("mean")
    if mean is None:
        return np.nan, [0.0, 0.0]
    ci = summary.get("ci95")
    if ci is None:
        return mean / scale, [0.0, 0.0]
    return mean / scale, [(mean - ci[0]) / scale, (ci[1] - mean) / scale]


def _mark_missing(ax, values: Sequence[float], text: str, n_tests: int) -> None:
    """Write text where a bar is missing: bar_label skips NaN bars, and a gap alone reads as zero."""
    for x, value in enumerate(values):
        if not np.isfinite(value):
            ax.text(x, 0, text, rotation=90, ha="center", va="bottom", fontsize=_value_fontsize(n_tests) + 1,
                    color="#b00020")


def _value_label(mean: float, n: int) -> str:
    if not np.isfinite(mean):
        return ""
    # A bar without an error bar needs saying why: one run has no CI.
    return f"{mean:.3g}" + ("\nn=1" if n == 1 else "")


def _bars(ax, names, tests, metric, scale, ylabel, title, color) -> None:
    means, errs = zip(*(_mean_and_err(t["stats"][metric], scale) for t in tests))
    x = np.arange(len(tests))
    capsize = 2 if len(tests) > MANY_TESTS else 4
    bars = ax.bar(x, means, yerr=np.array(errs).T, capsize=capsize, color=color, edgecolor="black", linewidth=0.5)
    labels = [_value_label(m, t["stats"][metric]["n"]) for m, t in zip(means, tests)]
    ax.bar_label(bars, labels=labels, padding=2, fontsize=_value_fontsize(len(tests)))
    _mark_missing(ax, means, "failed: no runs", len(tests))
    ceiling = next((t for t in tests if t["name"] == CEILING), None)
    if metric in ("save_s", "load_s") and ceiling and ceiling["stats"][metric]["mean"] is not None:
        # What the disk itself needs for these bytes: no bar can honestly go below this line.
        ax.axhline(ceiling["stats"][metric]["mean"], color="#c1121f", linestyle="--", linewidth=1,
                   label="device ceiling (1 MiB fsync'd writes / 8-stream cold reads)")
        ax.legend(loc="upper right", fontsize=8)
    _set_test_ticks(ax, names)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(x=0.01, y=0.15)


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
    capsize = 2 if len(tests) > MANY_TESTS else 4
    bars = ax.bar(x, values, yerr=[lows, highs], capsize=capsize, color=colors, edgecolor="black", linewidth=0.5)
    for bar, hatch in zip(bars, hatches):
        bar.set_hatch(hatch)
    labels = []
    for t, v in zip(tests, values):
        comparison = t["vs_baseline"].get(metric) or {}
        mark = "*" if comparison.get("significant") else ""
        labels.append("base" if t["name"] == baseline else (_pct_text(v) + mark if np.isfinite(v) else ""))
    ax.bar_label(bars, labels=labels, padding=2, fontsize=_value_fontsize(len(tests)))
    _mark_missing(ax, values, "n/a: no runs", len(tests))
    ax.axhline(0, color="black", linewidth=0.8)
    _set_test_ticks(ax, names)
    ax.set_ylabel("improvement vs baseline (%)")
    ax.set_title(title + "\n(* significant, // not significant; bars: 95% CI)", fontsize=10)
    ax.margins(x=0.01, y=0.2)


def _improvement_pct(test: Mapping[str, Any], metric: str) -> float:
    """-change_pct; NaN when there is no change to show (baseline rows are 0, failed tests NaN)."""
    comparison = test["vs_baseline"].get(metric)
    if comparison is None:
        return 0.0  # the baseline compares with nothing
    change = comparison.get("change_pct")
    return np.nan if change is None else -change


def _pct_text(value: float) -> str:
    # round() returns an int, so a change of -0.0001 % prints "+0%", not "-0%".
    return f"{round(value):+d}%"


def _heatmap(fig, ax, names, tests) -> None:
    metrics = [("save_s", "save"), ("load_s", "load"), ("size_bytes", "size")]
    grid = np.array([[_improvement_pct(t, m) for m, _ in metrics] for t in tests], dtype=float)
    finite = grid[np.isfinite(grid)]
    limit = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0  # symmetric, never clipped
    # Symmetric log scale: a -500 % gzip save does not wash out the +-20 % effects beside it.
    norm = matplotlib.colors.SymLogNorm(linthresh=10.0, vmin=-limit, vmax=limit, base=10)
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#d9d9d9")  # grey: nothing measured
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
    # Full names, never truncated: sweep names often differ only at the end.
    ax.set_yticks(range(len(tests)), names, fontsize=7 if len(tests) > MANY_TESTS else 8)
    for (row, col), value in np.ndenumerate(grid):
        if not np.isfinite(value):
            ax.text(col, row, "n/a", ha="center", va="center", fontsize=8)
            continue
        ax.text(col, row, _pct_text(value), ha="center", va="center", fontsize=8,
                color="white" if abs(norm(value) - 0.5) > 0.35 else "black")
    fig.colorbar(image, ax=ax, label="improvement vs baseline (%)")
    ax.set_title("Optimization impact, % improvement vs baseline\n(green = better; colour scale symmetric log)", fontsize=10)


def _figure_size_in(n_tests: int) -> tuple[float, float]:
    """Wide enough for every bar and its label, tall enough for one heatmap row per test."""
    panel_width_in = max(5.0, 0.42 * n_tests + 1.2)
    return 3 * panel_width_in + 1.0, max(10.5, 0.5 * n_tests + 3.0)


def _source(document: Mapping[str, Any]) -> str:
    w, p = document["weights"], document["protocol"]
    name = w.get("name") or Path(w.get("path", "?")).name
    return (f"{name} ({w['n_params'] / 1e6:.0f}M params, {w['dtype']}, {w['size_bytes'] / 1e9:.2f} GB), "
            f"{p['num_runs']} runs/test, loads {p['load_cache']}")


def draw(document: Mapping[str, Any], path: Path) -> Path:
    """Draw the 6-panel figure for a results document into path (PNG)."""
    tests = document["tests"]
    names = [t["name"] for t in tests]
    fig, axes = plt.subplots(2, 3, figsize=_figure_size_in(len(tests)), constrained_layout=True)
    _bars(axes[0, 0], names, tests, "save_s", 1.0, "seconds", f"Save time (lower is better)\n{ERRORBAR_NOTE}", "#457b9d")
    _bars(axes[0, 1], names, tests, "load_s", 1.0, "seconds", f"Load time, cold (lower is better)\n{ERRORBAR_NOTE}", "#8ab17d")
    _bars(axes[0, 2], names, tests, "size_bytes", 1e6, "MB on disk (file bytes)", f"Checkpoint size\n{ERRORBAR_NOTE}", "#e9c46a")
    _improvement(axes[1, 0], names, tests, document["baseline"], "save_s", "Save time improvement")
    _improvement(axes[1, 1], names, tests, document["baseline"], "load_s", "Load time improvement")
    _heatmap(fig, axes[1, 2], names, tests)
    title = f"TensorStore checkpoint benchmark: {_source(document)}"
    if not document.get("complete", True):
        title += "  [INCOMPLETE]"
    fig.suptitle(title, fontsize=13)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- claims figure -----------------------------------------------------------

def _claim_rows(document: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(f"{t['name']}: {c['metric']}", c) for t in document["tests"] for c in t.get("claims") or []]


def _claim_note(claim: Mapping[str, Any]) -> str:
    """The numbers behind a row, printed beside it (a CI may run off a compressed axis)."""
    measured, ci = claim.get("measured_pct"), claim.get("ci_pct")
    if measured is None:
        return f"not measured: {claim['outcome']}"
    text = f"{measured:+.1f}%"
    text += f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci is not None else " (no finite CI)"
    return f"{text} {claim['outcome']}"


def _claims_x_scale(ax, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Linear, unless something passes +-100 %: then linear inside +-100 % and logarithmic beyond,
    so one huge CI (common with 3 noisy runs) cannot squash every claimed band into a sliver."""
    values = [abs(v) for _, c in rows for v in [*c["claimed_pct"], *(c.get("ci_pct") or []), c.get("measured_pct")]
              if v is not None]
    label = "change vs baseline (%)   (negative = less time or size)"
    if max(values, default=0.0) > 100.0:
        ax.set_xscale("symlog", linthresh=100.0, linscale=1.0)
        ax.set_xticks(_pct_ticks(*ax.get_xlim()))
        label += ";  linear within +-100%, logarithmic beyond"
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:+g}%" if v else "0"))
    ax.set_xlabel(label)


def _pct_ticks(lo: float, hi: float) -> list[float]:
    """Every 50 % inside the linear +-100 % region; beyond it 200 and 500 when the axis ends before
    1000 %, else only powers of ten (closer ticks would print on top of each other)."""
    log_decades = math.log10(max(abs(lo), abs(hi), 100.0) / 100.0)
    multiples = (2, 5) if log_decades <= 0.8 else (10,)
    ticks = [float(v) for v in range(-100, 101, 50)]
    ticks += [sign * m * 10.0**k for k in range(2, 7) for m in multiples for sign in (-1, 1)]
    return sorted(v for v in ticks if lo <= v <= hi)


def draw_claims(document: Mapping[str, Any], path: Path) -> Path | None:
    """Draw each claim's range against the measured change and its 95% CI; None when there are no claims."""
    rows = _claim_rows(document)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(12.0, 1.8 + 0.45 * len(rows)), constrained_layout=True)
    for y, (_, claim) in enumerate(rows):
        lo, hi = claim["claimed_pct"]
        # Zero-width claims (a single value) still get a visible band.
        ax.barh(y, max(hi - lo, 0.5), left=lo if hi > lo else lo - 0.25, height=0.6,
                color="#bcd4e6", edgecolor="#5b8db8", linewidth=0.8, zorder=1)
        measured, ci = claim.get("measured_pct"), claim.get("ci_pct")
        color = OUTCOME_COLORS.get(claim["outcome"], "black")
        if measured is not None:
            xerr = None if ci is None else [[measured - ci[0]], [ci[1] - measured]]
            ax.errorbar(measured, y, xerr=xerr, fmt="o" if ci is not None else "D", color=color,
                        markersize=6, capsize=4, elinewidth=1.6, zorder=3)
        ax.annotate(_claim_note(claim), xy=(1.01, y), xycoords=("axes fraction", "data"),
                    va="center", fontsize=8, color=color)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first claim on top, in document order
    ax.axvline(0, color="black", linewidth=0.8, zorder=2)
    ax.use_sticky_edges = False  # bands must not touch the frame
    ax.margins(x=0.05)
    _claims_x_scale(ax, rows)
    ax.grid(axis="x", color="#e0e0e0", zorder=0)
    handles = [matplotlib.patches.Patch(facecolor="#bcd4e6", edgecolor="#5b8db8", label="claimed range")]
    handles += [matplotlib.lines.Line2D([], [], marker="o", linestyle="", color=c, label=f"measured: {o}")
                for o, c in OUTCOME_COLORS.items()]
    handles.append(matplotlib.lines.Line2D([], [], marker="D", linestyle="", color="#555555",
                                           label="measured, no finite CI"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    ax.set_title(f"Claims check: claimed % change (band) vs measured change (point) with its 95% CI (bar)\n"
                 f"{_source(document)}", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
