"""optimization_analysis.png, the 6-panel figure, drawn from a results document (it measures and computes nothing):
PHASE4_GUIDE.md's section 6 says what each panel shows. Whiskers are the tables' 95 % intervals on the log scale, so
none reaches below zero (a time or a size) or below -100 % (a change).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ckptbench.analysis.change import TOO_FEW, ratio_words
from ckptbench.analysis.samples import measured_runs
from ckptbench.figures.common import REFERENCE_COLOR, figure, mean_and_err, save, source_line
from ckptbench.spec.references import CEILING

PLOT_FILE = "optimization_analysis.png"
TIME_NOTE = "bars: mean; dots: runs; whiskers: 95% CI (log scale)"
FEW_NOTE = "bars: mean; dots: runs; whiskers: 95% CI, none: too few runs"  # TIME_NOTE with 2 runs or fewer
LABEL_LINE_CHARS = 24  # tick labels longer than this are wrapped at '_' boundaries
MANY_TESTS = 8  # beyond this, tick labels stand upright: slanted ones would overlap their neighbours
REFERENCE_GAP = 0.8  # extra space between the TensorStore tests and the reference rows
WINNER_EDGE = "#d4a017"


@dataclass(frozen=True)
class Panel:
    """One of the top row's bar panels: a metric, its unit and its words."""

    metric: str
    scale: float  # the metric's values are divided by this
    ylabel: str
    title: str
    color: str


BAR_PANELS = (Panel("save_s", 1.0, "seconds", f"Save time (lower is better)\n{TIME_NOTE}", "#457b9d"),
              Panel("load_s", 1.0, "seconds", f"Load time, cold (lower is better)\n{TIME_NOTE}", "#8ab17d"),
              Panel("size_bytes", 1e6, "MB on disk (file bytes)", "Checkpoint size", "#e9c46a"))


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
    title_in, axes_title_in, ylabel_in, colorbar_in = 0.25 + 0.2 * title_lines, 0.5, 0.85, 1.1
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
    x, gap_done = 0.0, False
    out: list[float] = []
    for test in tests:
        if test.get("kind") == "reference" and not gap_done and out:
            x += REFERENCE_GAP
            gap_done = True
        out.append(x)
        x += 1.0
    return np.array(out)


def _set_test_ticks(ax, tests: Sequence[Mapping[str, Any]], xs: np.ndarray) -> None:
    many = len(tests) > MANY_TESTS
    ax.set_xticks(xs, _labels([t["name"] for t in tests]), rotation=90 if many else 30,
                  ha="center" if many else "right", fontsize=7 if many else 8)


def _value_fontsize(n_tests: int) -> float:
    return 6 if n_tests > MANY_TESTS else 7


def _mark_missing(ax, xs, values: Iterable[float], text: str, n_tests: int, bottom: float = 0.0) -> None:
    """Write text where a bar is missing: bar_label skips NaN bars, and a gap alone reads as zero."""
    for x, value in zip(xs, values):
        if not np.isfinite(value):
            ax.text(x, bottom, text, rotation=90, ha="center", va="bottom", fontsize=_value_fontsize(n_tests) + 1,
                    color="#b00020")


def _value_label(mean: float, n: int) -> str:
    if not np.isfinite(mean):
        return ""
    return f"{mean:.3g}" + ("\nn=1" if n == 1 else "")  # a bar without a whisker needs saying why


def _run_values(test: Mapping[str, Any], metric: str) -> list[float]:
    return [float(r[metric]) for r in measured_runs(test["runs"]) if r.get(metric) is not None]


def _bars(ax, tests: Sequence[Mapping[str, Any]], panel: Panel, winner: str | None) -> None:
    from matplotlib.patches import Patch

    metric, scale = panel.metric, panel.scale
    xs = positions(tests)
    timed = metric in ("save_s", "load_s")
    means, errs = zip(*(mean_and_err(t["stats"][metric], scale) for t in tests))
    capsize = 2 if len(tests) > MANY_TESTS else 4
    colors = [REFERENCE_COLOR if t.get("kind") == "reference" else panel.color for t in tests]
    bars = ax.bar(xs, means, yerr=np.array(errs).T, capsize=capsize, color=colors, edgecolor="black", linewidth=0.5,
                  zorder=2)
    for bar, test in zip(bars, tests):
        if test.get("kind") == "reference":
            bar.set_hatch("..")
        if test["name"] == winner:
            bar.set_edgecolor(WINNER_EDGE)
            bar.set_linewidth(2.5)
    if timed:
        for x, test in zip(xs, tests):
            values = np.array(_run_values(test, metric)) / scale
            spread = np.linspace(-0.18, 0.18, values.size) if values.size > 1 else np.zeros(values.size)
            ax.scatter(np.full(values.size, x) + spread, values, s=9, color="black", zorder=3, linewidths=0)
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
        handles.append(Patch(facecolor=REFERENCE_COLOR, hatch="..", edgecolor="black",
                             label="reference rows (not TensorStore)"))
    if winner:
        handles.append(Patch(facecolor="white", edgecolor=WINNER_EDGE, linewidth=2.5, label="★ best TensorStore test"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=7)
    _set_test_ticks(ax, tests, xs)
    ax.set_ylabel(panel.ylabel)
    few = timed and any(0 < t["stats"][metric]["n"] <= 2 for t in tests)
    ax.set_title(panel.title.replace(TIME_NOTE, FEW_NOTE) if few else panel.title)
    ax.margins(x=0.01)


def _clip_axis(ax, xs, whisker_tops: Sequence[float], data_top: float) -> None:
    """Fit the axis (from 0) to the data, not to whiskers: a 95 % CI of 2 or 3 runs can be 100 times wider
    than the data. A whisker that leaves the axis ends in an arrow with its end value printed."""
    top = data_top + 0.3 * max(data_top, 1e-12)
    ax.set_ylim(0.0, top)
    for x, value in zip(xs, whisker_tops):
        if np.isfinite(value) and value > top:
            _arrow(ax, x, top, f"CI to {value:.3g}")


def _arrow(ax, x: float, edge: float, text: str, at_top: bool = True) -> None:
    """A whisker cut at the axis's edge: an arrow to it, with where the whisker ends."""
    ax.annotate(text, xy=(x, edge), xytext=(0, -2 if at_top else 2), textcoords="offset points", ha="center",
                va="top" if at_top else "bottom", fontsize=6, color="#555555",
                arrowprops={"arrowstyle": "-|>", "color": "#555555"})


def _ratio_text(ratio: float) -> str:
    """A ratio as a change in %: 0.5 -> '-50%', 3 -> '+200%', 0.001 -> '-99.9%': decimals enough that a change
    near -100 % never prints as -100 % (round(): never '-0%')."""
    if ratio >= 0.01:
        return f"{round(100 * (ratio - 1)):+d}%"
    decimals = min(6, math.ceil(-math.log10(ratio)) - 1) if ratio > 0 else 6
    return f"{100 * (ratio - 1):+.{decimals}f}%"


def _change_axis(ax, low: float, high: float) -> None:
    """A log axis of ratios labelled as changes in %: a change cannot reach -100 % on it, as it cannot in fact."""
    import matplotlib.ticker

    ax.set_yscale("log")
    ax.set_ylim(low, high)
    decades = math.log10(high / low)
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=subs))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: "0" if abs(v - 1) < 1e-9
                                                                 else _ratio_text(v)))


def _change(ax, tests, baseline, metric, title) -> None:
    """Each test's mean against the baseline's as a ratio on a log axis, labelled as the change in % (below 1 is
    better), with the change's 95 % interval and significance: the very numbers the tables print."""
    xs = positions(tests)
    ratios, lows, highs, hatches = [], [], [], []
    for t in tests:
        comparison = t["vs_baseline"].get(metric) or {}
        ratio, interval = _ratio(t, metric), comparison.get("ratio_ci95")
        ratios.append(ratio)
        lows.append(ratio if interval is None else interval[0])
        highs.append(ratio if interval is None else interval[1])
        hatches.append("" if comparison.get("significant") or t["name"] == baseline else "//")
    ratios_arr = np.array(ratios, dtype=float)
    colors = [REFERENCE_COLOR if t.get("kind") == "reference" else ("#2a9d8f" if r <= 1 else "#e76f51")
              for t, r in zip(tests, np.nan_to_num(ratios_arr, nan=1.0))]
    finite = ratios_arr[np.isfinite(ratios_arr)]
    data_low, data_high = min([1.0, *finite]), max([1.0, *finite])
    low, high = data_low / 1.8, data_high * 1.8  # room for labels; whiskers beyond end in an arrow
    heights = np.where(np.isfinite(ratios_arr), ratios_arr - 1.0, 0.0)
    bars = ax.bar(xs, heights, bottom=1.0, color=colors, edgecolor="black", linewidth=0.5, zorder=2)
    for bar, hatch in zip(bars, hatches):
        bar.set_hatch(hatch)
    capsize = 2 if len(tests) > MANY_TESTS else 4
    shown = np.isfinite(ratios_arr)
    ax.errorbar(np.asarray(xs)[shown], ratios_arr[shown],
                yerr=[np.clip(ratios_arr[shown] - np.array(lows)[shown], 0, None),
                      np.clip(np.array(highs)[shown] - ratios_arr[shown], 0, None)],
                fmt="none", ecolor="black", elinewidth=1, capsize=capsize, zorder=3)
    _mark_missing(ax, xs, ratios_arr, "n/a: no runs", len(tests), 1.0)
    for x, t, r in zip(xs, tests, ratios_arr):
        if np.isfinite(r):
            starred = "*" if (t["vs_baseline"].get(metric) or {}).get("significant") else ""
            ax.annotate("base" if t["name"] == baseline else _ratio_text(r) + starred, (x, r),
                        xytext=(0, 2 if r >= 1 else -2), textcoords="offset points", ha="center",
                        va="bottom" if r >= 1 else "top", fontsize=_value_fontsize(len(tests)))
    _change_axis(ax, low, high)
    for x, lo, hi in zip(xs, lows, highs):
        if np.isfinite(hi) and hi > high:
            _arrow(ax, x, high, _ratio_text(hi))
        if np.isfinite(lo) and lo < low:
            _arrow(ax, x, low, _ratio_text(lo), at_top=False)
    ax.axhline(1.0, color="black", linewidth=0.8)
    _set_test_ticks(ax, tests, xs)
    ax.set_ylabel("change vs baseline (%)")
    few = any((t["vs_baseline"].get(metric) or {}).get("verdict") == TOO_FEW for t in tests)
    ax.set_title(title + "\n(* significant, // not; whiskers: 95% CI" + (", none: too few runs" if few else "")
                 + "; grey: references)", fontsize=10)
    ax.grid(axis="y", color="#e0e0e0", zorder=0)
    ax.margins(x=0.01)


def _ratio(test: Mapping[str, Any], metric: str) -> float:
    """The mean's ratio to the baseline's; 1 for the baseline, NaN when there is none (a failed test)."""
    comparison = test["vs_baseline"].get(metric)
    if comparison is None:
        return 1.0  # the baseline compares with nothing
    ratio = comparison.get("ratio")
    return np.nan if ratio is None else ratio


def _heatmap(fig, ax, tests) -> None:
    import matplotlib
    import matplotlib.colors
    import matplotlib.ticker

    names = [t["name"] + (" (ref)" if t.get("kind") == "reference" else "") for t in tests]
    metrics = [("save_s", "save"), ("load_s", "load"), ("size_bytes", "size")]
    grid = np.array([[_ratio(t, m) for m, _ in metrics] for t in tests], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(grid)
    finite = logs[np.isfinite(logs)]
    limit = max(math.log10(1.1), float(np.max(np.abs(finite)))) if finite.size else 1.0  # symmetric, never clipped
    # Colour by log ratio: halving and doubling are equally strong, and -100 % lies at infinity, as in the tables.
    norm = matplotlib.colors.Normalize(vmin=-limit, vmax=limit)
    cmap = matplotlib.colormaps["RdYlGn_r"].with_extremes(bad="#d9d9d9")  # green: less time or size; grey: n/a
    image = ax.imshow(np.ma.masked_invalid(logs), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(metrics)), [label for _, label in metrics])
    # Full names, never truncated: sweep names often differ only at the end.
    ax.set_yticks(range(len(tests)), names, fontsize=7 if len(tests) > MANY_TESTS else 8)
    for (row, col), value in np.ndenumerate(logs):
        if not np.isfinite(value):
            ax.text(col, row, "n/a", ha="center", va="center", fontsize=8)
            continue
        ax.text(col, row, _ratio_text(float(grid[row, col])), ha="center", va="center", fontsize=8,
                color="white" if abs(norm(value) - 0.5) > 0.35 else "black")
    bar = fig.colorbar(image, ax=ax, label="change vs baseline (%, log scale)", fraction=0.08, pad=0.03)
    steps = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0) if limit > 1.0 else (0.1, 0.5, 0.8, 1.0, 1.25, 2.0, 10.0)
    nice = [r for r in steps if abs(math.log10(r)) <= limit]
    bar.set_ticks([math.log10(r) for r in nice], labels=[_ratio_text(r) for r in nice])
    ax.set_title("Change vs baseline, %\n(green = less time or size; colour: log of the ratio)", fontsize=10)


def advice_lines(document: Mapping[str, Any]) -> list[str]:
    """The answer the figure exists for: TensorStore's best layout per objective, beside the fastest peer as a ratio
    with its 95 % CI and verdict. TensorStore is never called the fastest: a peer may be faster."""
    best = document.get("best") or {}
    out = []
    for objective, word in (("save", "save"), ("load", "load"), ("balanced", "save + load"), ("size", "size")):
        entry = best.get(objective)
        if not entry:
            continue
        tied = not entry.get("distinguishable") and entry.get("runner_up")
        text = f"TensorStore's best {word}: {entry['test']}" + (f" (tied with {entry['runner_up']})" if tied else "")
        peer = (entry.get("against") or {}).get("peer")
        if peer is not None and peer.get("blocks_disagree"):  # confirmation blocks that give no one verdict
            text += f"; against {peer['test']}, the fastest peer, its confirmation blocks disagree"
        elif peer is not None:
            metric = "size_bytes" if objective == "size" else "save_s"
            text += "; it is " + ratio_words(peer, f"{peer['test']}, the fastest peer", metric)
        out.append(text)
    return out


def draw(document: Mapping[str, Any], path: Path) -> Path:
    """Draw the 6-panel figure for a results document into path (PNG)."""
    tests = document["tests"]
    best = document.get("best") or {}
    winner = {metric: (best.get(objective) or {}).get("test")
              for objective, metric in (("save", "save_s"), ("load", "load_s"), ("size", "size_bytes"))}
    title = f"TensorStore checkpoint benchmark: {source_line(document)}"
    if not document.get("complete", True):
        title += "  [INCOMPLETE]"
    # wide enough for every bar and its label, tall enough for one heatmap row per test
    panel_width_in = max(5.0, 0.42 * len(tests) + 1.2)
    fig, _ = figure(3 * panel_width_in + 1.0, max(10.5, 0.5 * len(tests) + 3.0), layout=None)
    width_chars = int(fig.get_figwidth() * 10)
    lines = textwrap.wrap(title, width_chars) + [wrapped for line in advice_lines(document)
                                                 for wrapped in textwrap.wrap(line, width_chars)]
    fig.suptitle("\n".join(lines), fontsize=12, y=1 - 0.1 / fig.get_figheight(), va="top")
    axes = _six_panels(fig, tests, len(lines))
    for ax, panel in zip(axes[0], BAR_PANELS):
        _bars(ax, tests, panel, winner[panel.metric])
    _change(axes[1, 0], tests, document["baseline"], "save_s", "Save time vs baseline (lower is better)")
    _change(axes[1, 1], tests, document["baseline"], "load_s", "Load time vs baseline (lower is better)")
    _heatmap(fig, axes[1, 2], tests)
    return save(fig, path)
