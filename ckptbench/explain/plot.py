"""explain.png: each claim under each arm, drawn from explain.json (it measures and computes nothing).

One panel per claim: the claimed % range as a band (its noise widening lighter), and for
each arm (one row each: true, original, then one per condition) the measured change with
its 95 % CI, coloured by the claim's outcome under that arm. Arms where a switched
condition moves the change into the band are marked with a star.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Mapping

from ckptbench.figures import common as plot

PLOT_FILE = "explain.png"
PANEL_COLUMNS = 3
PANEL_WIDTH_IN = 5.6
ROW_HEIGHT_IN = 0.32


def draw(document: Mapping[str, Any], path: Path) -> Path:
    """Draw every claim of an explain document into path (PNG)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    claims = document["claims"] or []
    arms = [a["name"] for a in document["arms"]]
    columns = max(1, min(PANEL_COLUMNS, len(claims)))
    rows = max(1, math.ceil(len(claims) / columns))
    panel_height = 1.1 + ROW_HEIGHT_IN * len(arms)
    fig, axes = plot.figure(PANEL_WIDTH_IN * columns, 1.4 + panel_height * rows, rows=rows, cols=columns)
    for index, ax in enumerate(axes.flat):
        if index >= len(claims):
            ax.set_axis_off()
            continue
        _panel(ax, claims[index], arms, show_labels=index % columns == 0)
    handles = [Patch(facecolor="#bcd4e6", edgecolor="#5b8db8", label="claimed range"),
               Patch(facecolor="#e3edf5", label="widened by the noise threshold (times)")]
    handles += [Line2D([], [], marker="o", linestyle="", color=c, label=o) for o, c in plot.OUTCOME_COLORS.items()]
    handles.append(Line2D([], [], marker="*", linestyle="", color="black",
                          label="this arm's condition moves it into the band"))
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    title = (f"Why the original's expectations differ: {document.get('weights_label', '')}, "
             f"{document['num_runs']} runs per test and arm; rows: arms (true = your config, original = all of "
             "the original's conditions, then one condition each)")
    if not document.get("complete", True):
        title += "  [INCOMPLETE]"
    fig.suptitle("\n".join(textwrap.wrap(title, int(fig.get_figwidth() * 10))), fontsize=11)
    return plot.save(fig, path)


def _panel(ax, claim: Mapping[str, Any], arms: list[str], show_labels: bool) -> None:
    into = {e["arm"] for e in claim["effects"] if e["effect"] == "into"}
    rows = []
    lo, hi = claim["claimed_pct"]
    for y, name in enumerate(arms):
        outcome = claim["arms"][name]
        band_lo, band_hi = outcome.get("band_pct") or (lo, hi)
        if y == 0:
            if (band_lo, band_hi) != (lo, hi):
                ax.axvspan(band_lo, band_hi, color="#e3edf5", zorder=0)
            ax.axvspan(lo, hi if hi > lo else lo + 0.5, color="#bcd4e6", zorder=0)
        measured, ci = outcome.get("measured_pct"), outcome.get("ci_pct")
        color = plot.OUTCOME_COLORS.get(outcome["outcome"], "black")
        if measured is not None:
            xerr = None if ci is None else [[measured - ci[0]], [ci[1] - measured]]
            ax.errorbar(measured, y, xerr=xerr, fmt="*" if name in into else "o", color=color,
                        markersize=9 if name in into else 5, capsize=3, elinewidth=1.4, zorder=3)
            ax.annotate(f"{measured:+.0f}%", xy=(measured, y), xytext=(0, 5), textcoords="offset points",
                        ha="center", fontsize=6.5, color=color)
        rows.append((name, {"claimed_pct": claim["claimed_pct"], "ci_pct": ci, "measured_pct": measured}))
    ax.set_yticks(range(len(arms)), arms if show_labels else [""] * len(arms), fontsize=8)
    ax.set_ylim(len(arms) - 0.5, -0.7)
    ax.axvline(0, color="black", linewidth=0.8, zorder=2)
    ax.use_sticky_edges = False
    ax.margins(x=0.08)
    plot.claims_x_scale(ax, rows)
    ax.set_xlabel(ax.get_xlabel().split(";")[0].split("   ")[0], fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", color="#e0e0e0", zorder=0)
    ax.set_title("\n".join(textwrap.wrap(claim["label"], 48)), fontsize=9)
