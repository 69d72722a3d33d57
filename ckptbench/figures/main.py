"""optimization_analysis.png, the 6-panel figure, drawn from a results document (it measures and computes
nothing).

Save time, load time and size (bars at the mean, each run a dot, whiskers the 95 % CI
computed on log values so no whisker reaches below zero); save and load improvement vs
baseline in % (bars with the 95 % CI of the change, hatched where the change is not
significant); and a heatmap of improvement per test and metric whose colour scale spans
the largest value, so nothing is clipped. Reference rows (safetensors, torch.save, the
device ceiling) stand apart after a gap, grey and hatched. The title says which layout
to use; the winners' bars are outlined in gold.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ckptbench.figures.common import CEILING, REFERENCE_COLOR, figure, mean_and_err, save, source_line

PLOT_FILE = "optimization_analysis.png"
TIME_NOTE = "bars: mean; dots: runs; whiskers: 95% CI (log scale)"
LABEL_LINE_CHARS = 24  # tick labels longer than this are wrapped at '_' boundaries
MANY_TESTS = 8  # beyond this, tick labels stand upright: slanted ones would overlap their neighbours
REFERENCE_GAP = 0.8  # extra space between the TensorStore tests and the reference rows
WINNER_EDGE = "#d4a017"


# The 6-panel figure is laid out by hand, in inches, from its labels' lengths: matplotlib's
# constrained layout measured every text twice and took 40 % of the drawing time.
_CHAR_IN = 0.6 / 72  # a character's width per point of font size (DejaVu Sans, on average)
_LINE_IN = 1.25 / 72  # a line's height per point of font size


def _tick_label_height_in(labels: Sequence[str], rotation: float, fontsize: float) -> float:
    """Height below the axes that rotated, possibly wrapped, tick labels need."""
    worst = 0.0
    for label in labels:
        lines = label.split("\n")
        width, height = max(map(len, lines)) * _CHAR_IN * fontsize, len(lines) * _LINE_IN * fontsize
        angle = math.radians(rotation)
        worst = max(worst, width * math.sin(angle) + height * math.cos(angle))
    return worst + 0.12


def _six_panels(fig, tests: Sequence[Mapping[str, Any]], title_lines: int) -> Any:
    """The 2 x 3 axes of the main figure, placed in inches (see the note above)."""
    width, height = fig.get_figwidth(), fig.get_figheight()
    names = [t["name"] for t in tests]
    many = len(names) > MANY_TESTS
    ticks_in = _tick_label_height_in(_labels(names), 90 if many else 30, 7 if many else 8)
    heat_names = [n + " (ref)" for n in names]
    heat_labels_in = max(map(len, heat_names)) * _CHAR_IN * (7 if many else 8) + 0.15
    title_in, axes_title_in, ylabel_in, colorbar_in = 0.25 + 0.2 * title_lines, 0.5, 0.75, 1.1
    row_in = (height - title_in - 2 * axes_title_in - 2 * ticks_in - 0.15) / 2
    bars_in = (width - 3 * ylabel_in - heat_labels_in - colorbar_in) / 2.4  # the heatmap gets 0.4 of a panel more
    heat_in = width - 2 * (ylabel_in + bars_in) - heat_labels_in - colorbar_in
    lefts = [ylabel_in, 2 * ylabel_in + bars_in, 2 * (ylabel_in + bars_in) + heat_labels_in]
    widths = [bars_in, bars_in, heat_in]
    axes = np.empty((2, 3), dtype=object)
    for row in range(2):
        top = title_in + axes_title_in + row * (row_in + ticks_in + axes_title_in)
        for col in range(3):
            left, span = lefts[col], widths[col]
            if (row, col) == (0, 2):  # the size panel has no heatmap labels beside it: as wide as the column
                left = lefts[1] + bars_in + ylabel_in
                span = width - left - 0.25
            axes[row, col] = fig.add_axes([left / width, 1 - (top + row_in) / height, span / width, row_in / height])
    return axes


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


def positions(tests: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """x of each test: TensorStore tests side by side, then a gap, then the reference rows."""
    x, out, gap_done = 0.0, [], False
    for test in tests:
        if test.get("kind") == "reference" and not gap_done and out:
            x += REFERENCE_GAP
            gap_done = True
        out.append(x)
        x += 1.0
    return np.array(out)


def _set_test_ticks(ax, names: Sequence[str], xs: np.ndarray) -> None:
    if len(names) > MANY_TESTS:
        ax.set_xticks(xs, _labels(names), rotation=90, ha="center", fontsize=7)
    else:
        ax.set_xticks(xs, _labels(names), rotation=30, ha="right", fontsize=8)


def _value_fontsize(n_tests: int) -> float:
    return 6 if n_tests > MANY_TESTS else 7


def _colors(tests: Sequence[Mapping[str, Any]], color: str) -> list[str]:
    return [REFERENCE_COLOR if t.get("kind") == "reference" else color for t in tests]


def _style_references(bars, tests: Sequence[Mapping[str, Any]]) -> None:
    for bar, test in zip(bars, tests):
        if test.get("kind") == "reference":
            bar.set_hatch("..")


def _mark_missing(ax, xs, values: Sequence[float], text: str, n_tests: int) -> None:
    """Write text where a bar is missing: bar_label skips NaN bars, and a gap alone reads as zero."""
    for x, value in zip(xs, values):
        if not np.isfinite(value):
            ax.text(x, 0, text, rotation=90, ha="center", va="bottom", fontsize=_value_fontsize(n_tests) + 1,
                    color="#b00020")


def _value_label(mean: float, n: int) -> str:
    if not np.isfinite(mean):
        return ""
    return f"{mean:.3g}" + ("\nn=1" if n == 1 else "")  # a bar without a whisker needs saying why


def _run_values(test: Mapping[str, Any], metric: str) -> list[float]:
    return [float(r[metric]) for r in test["runs"]
            if r["error"] is None and not r["warmup"] and r.get(metric) is not None]


def _bars(ax, document, tests, metric, scale, ylabel, title, color, winner: str | None) -> None:
    names = [t["name"] for t in tests]
    xs = positions(tests)
    timed = metric in ("save_s", "load_s")
    means, errs = zip(*(mean_and_err(t["stats"][metric], scale, log_ci=timed) for t in tests))
    capsize = 2 if len(tests) > MANY_TESTS else 4
    bars = ax.bar(xs, means, yerr=np.array(errs).T, capsize=capsize, color=_colors(tests, color),
                  edgecolor="black", linewidth=0.5, zorder=2)
    _style_references(bars, tests)
    for bar, name in zip(bars, names):
        if name == winner:
            bar.set_edgecolor(WINNER_EDGE)
            bar.set_linewidth(2.5)
    if timed:
        for x, test in zip(xs, tests):
            values = np.array(_run_values(test, metric)) / scale
            spread = np.linspace(-0.18, 0.18, values.size) if values.size > 1 else np.zeros(values.size)
            ax.scatter(np.full(values.size, x) + spread,
                       values, s=9, color="black", zorder=3, linewidths=0)
    labels = [_value_label(m, t["stats"][metric]["n"]) + (" ★" if t["name"] == winner else "")
              for m, t in zip(means, tests)]
    ax.bar_label(bars, labels=labels, padding=2, fontsize=_value_fontsize(len(tests)))
    tops = [m + e[1] for m, e in zip(means, errs)]
    runs_top = max([v for t in tests for v in _run_values(t, metric)] or [0.0]) / scale
    _clip_axis(ax, xs, tops, max([m for m in means if np.isfinite(m)] + [runs_top, 0.0]))
    _mark_missing(ax, xs, means, "failed: no runs", len(tests))
    ceiling = next((t for t in tests if t["name"] == CEILING), None)
    handles = []
    if timed and ceiling and ceiling["stats"][metric]["mean"] is not None:
        # What the disk itself needs for these bytes: a bar below this line read from a cache.
        handles.append(ax.axhline(ceiling["stats"][metric]["mean"], color="#c1121f", linestyle="--", linewidth=1,
                                  label="device ceiling (fastest access pattern)"))
    if any(t.get("kind") == "reference" for t in tests):
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor=REFERENCE_COLOR, hatch="..", edgecolor="black",
                             label="reference rows (not TensorStore)"))
    if winner:
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="white", edgecolor=WINNER_EDGE, linewidth=2.5, label="★ best TensorStore test"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=7)
    _set_test_ticks(ax, names, xs)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(x=0.01)


def _clip_axis(ax, xs, whisker_tops: Sequence[float], data_top: float, bottom: float | None = 0.0,
               whisker_bottoms: Sequence[float] = (), data_bottom: float = 0.0) -> None:
    """Fit the axis to the data, not to whiskers: a 95 % CI of 2 or 3 runs can be 100 times wider than
    the data. A whisker that leaves the axis ends in an arrow with its end value printed."""
    span = max(data_top - (data_bottom if bottom is None else 0.0), 1e-12)
    top = data_top + 0.3 * span
    low = bottom if bottom is not None else data_bottom - 0.3 * span
    ax.set_ylim(low, top)
    for x, value in zip(xs, whisker_tops):
        if np.isfinite(value) and value > top:
            ax.annotate(f"CI to {value:.3g}", xy=(x, top), xytext=(0, -2), textcoords="offset points", ha="center",
                        va="top", fontsize=6, color="#555555", arrowprops={"arrowstyle": "-|>", "color": "#555555"})
    for x, value in zip(xs, whisker_bottoms):
        if bottom is None and np.isfinite(value) and value < low:
            ax.annotate(f"CI to {value:.3g}", xy=(x, low), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=6, color="#555555", arrowprops={"arrowstyle": "-|>", "color": "#555555"})


def _improvement(ax, tests, baseline, metric, title) -> None:
    """Improvement = -change (positive is better), with the change's CI and significance."""
    names = [t["name"] for t in tests]
    xs = positions(tests)
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
    colors = [REFERENCE_COLOR if t.get("kind") == "reference" else ("#2a9d8f" if v >= 0 else "#e76f51")
              for t, v in zip(tests, np.nan_to_num(values))]
    capsize = 2 if len(tests) > MANY_TESTS else 4
    bars = ax.bar(xs, values, yerr=[lows, highs], capsize=capsize, color=colors, edgecolor="black", linewidth=0.5)
    for bar, hatch in zip(bars, hatches):
        bar.set_hatch(hatch)
    labels = []
    for t, v in zip(tests, values):
        comparison = t["vs_baseline"].get(metric) or {}
        mark = "*" if comparison.get("significant") else ""
        labels.append("base" if t["name"] == baseline else (_pct_text(v) + mark if np.isfinite(v) else ""))
    ax.bar_label(bars, labels=labels, padding=2, fontsize=_value_fontsize(len(tests)))
    _mark_missing(ax, xs, values, "n/a: no runs", len(tests))
    finite = [v for v in values if np.isfinite(v)] + [0.0]
    _clip_axis(ax, xs, [v + h for v, h in zip(values, highs)], max(finite), bottom=None,
               whisker_bottoms=[v - lo for v, lo in zip(values, lows)], data_bottom=min(finite))
    ax.axhline(0, color="black", linewidth=0.8)
    _set_test_ticks(ax, names, xs)
    ax.set_ylabel("improvement vs baseline (%)")
    ax.set_title(title + "\n(* significant, // not significant; bars: 95% CI; grey: reference rows)", fontsize=10)
    ax.margins(x=0.01)


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


def _heatmap(fig, ax, tests) -> None:
    import matplotlib
    import matplotlib.colors

    names = [t["name"] + (" (ref)" if t.get("kind") == "reference" else "") for t in tests]
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
    fig.colorbar(image, ax=ax, label="improvement vs baseline (%)", fraction=0.08, pad=0.03)
    ax.set_title("Optimization impact, % improvement vs baseline\n(green = better; colour scale symmetric log)",
                 fontsize=10)


def _figure_size_in(n_tests: int) -> tuple[float, float]:
    """Wide enough for every bar and its label, tall enough for one heatmap row per test."""
    panel_width_in = max(5.0, 0.42 * n_tests + 1.2)
    return 3 * panel_width_in + 1.0, max(10.5, 0.5 * n_tests + 3.0)


def advice_line(document: Mapping[str, Any]) -> str:
    """The answer the figure exists for: which TensorStore layout to use."""
    best = document.get("best") or {}
    parts = []
    for objective, word in (("load", "fastest load"), ("save", "fastest save"), ("balanced", "best save + load"),
                            ("size", "smallest")):
        entry = best.get(objective)
        if entry:
            tied = not entry.get("distinguishable") and entry.get("runner_up")
            tie = f" (tied with {entry['runner_up']})" if tied else ""
            parts.append(f"{word}: {entry['test']}{tie}")
    return ("Use → " + ";  ".join(parts)) if parts else ""


def draw(document: Mapping[str, Any], path: Path) -> Path:
    """Draw the 6-panel figure for a results document into path (PNG)."""
    tests = document["tests"]
    best = document.get("best") or {}
    winner = {metric: (best.get(objective) or {}).get("test")
              for objective, metric in (("save", "save_s"), ("load", "load_s"), ("size", "size_bytes"))}
    title = f"TensorStore checkpoint benchmark: {source_line(document)}"
    if not document.get("complete", True):
        title += "  [INCOMPLETE]"
    advice = advice_line(document)
    fig, _ = figure(*_figure_size_in(len(tests)), layout=None)
    width_chars = int(fig.get_figwidth() * 10)
    lines = textwrap.wrap(title, width_chars) + (textwrap.wrap(advice, width_chars) if advice else [])
    fig.suptitle("\n".join(lines), fontsize=12, y=1 - 0.1 / fig.get_figheight(), va="top")
    axes = _six_panels(fig, tests, len(lines))
    _bars(axes[0, 0], document, tests, "save_s", 1.0, "seconds", f"Save time (lower is better)\n{TIME_NOTE}",
          "#457b9d", winner["save_s"])
    _bars(axes[0, 1], document, tests, "load_s", 1.0, "seconds", f"Load time, cold (lower is better)\n{TIME_NOTE}",
          "#8ab17d", winner["load_s"])
    _bars(axes[0, 2], document, tests, "size_bytes", 1e6, "MB on disk (file bytes)", "Checkpoint size", "#e9c46a",
          winner["size_bytes"])
    _improvement(axes[1, 0], tests, document["baseline"], "save_s", "Save time improvement")
    _improvement(axes[1, 1], tests, document["baseline"], "load_s", "Load time improvement")
    _heatmap(fig, axes[1, 2], tests)
    return save(fig, path)
