"""claims_check.png: each claimed % range as a band, the measured change and its 95 % CI over it, coloured by the
claim's outcome (drawn from a results document; it measures and computes nothing)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ckptbench.figures.common import figure, save, source_line

CLAIMS_FILE = "claims_check.png"
OUTCOME_COLORS = {"confirmed": "#2a9d8f", "contradicted": "#e63946", "consistent, not pinned down": "#f4a261",
                  "inconclusive": "#9a9a9a"}


def _claim_note(claim: Mapping[str, Any]) -> str:
    """The numbers behind a row, printed beside it (a CI may run off a compressed axis)."""
    measured, ci = claim.get("measured_pct"), claim.get("ci_pct")
    if measured is None:
        return f"not measured: {claim['outcome']}"
    text = f"{measured:+.1f}%"
    if ci is not None:
        text += f" [{ci[0]:+.1f}, {ci[1]:+.1f}]"
    else:
        text += " (too few runs)" if claim.get("reason", "").startswith("too few runs") else " (no CI)"
    return f"{text} {claim['outcome']}"


def draw_claims(document: Mapping[str, Any], path: Path) -> Path | None:
    """Draw each claim's range against the measured change and its 95% CI; None when there are no claims."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [(f"{t['name']}: {c['metric']}", c) for t in document["tests"] for c in t.get("claims") or []]
    if not rows:
        return None
    fig, axes = figure(12.0, 1.8 + 0.45 * len(rows))
    ax = axes[0, 0]
    for y, (_, claim) in enumerate(rows):
        lo, hi = claim["claimed_pct"]
        band_lo, band_hi = claim.get("band_pct") or claim["claimed_pct"]
        if (band_lo, band_hi) != (lo, hi):  # the noise threshold's widening, lighter
            ax.barh(y, band_hi - band_lo, left=band_lo, height=0.6, color="#e3edf5", edgecolor="none", zorder=1)
        # Zero-width claims (a single value) still get a visible band.
        ax.barh(y, max(hi - lo, 0.5), left=lo if hi > lo else lo - 0.25, height=0.6,
                color="#bcd4e6", edgecolor="#5b8db8", linewidth=0.8, zorder=1)
        measured, ci = claim.get("measured_pct"), claim.get("ci_pct")
        color = OUTCOME_COLORS.get(claim["outcome"], "black")
        if measured is not None:
            xerr = None if ci is None else [[measured - ci[0]], [ci[1] - measured]]
            ax.errorbar(measured, y, xerr=xerr, fmt="o" if ci is not None else "D", color=color,
                        markersize=6, capsize=4, elinewidth=1.6, zorder=3)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first claim on top, in document order
    notes = ax.twinx()  # the numbers as tick labels on the right: the layout makes room for them
    notes.set_ylim(ax.get_ylim())
    notes.set_yticks(range(len(rows)), [_claim_note(claim) for _, claim in rows], fontsize=8)
    for tick, (_, claim) in zip(notes.get_yticklabels(), rows):
        tick.set_color(OUTCOME_COLORS.get(claim["outcome"], "black"))
    notes.tick_params(axis="y", length=0)
    ax.axvline(0, color="black", linewidth=0.8, zorder=2)
    claims_x_scale(ax, rows)
    ax.grid(axis="x", color="#e0e0e0", zorder=0)
    handles: list[Patch | Line2D] = [Patch(facecolor="#bcd4e6", edgecolor="#5b8db8", label="claimed range"),
                                     Patch(facecolor="#e3edf5", label="widened by the noise threshold (times)")]
    handles += [Line2D([], [], marker="o", linestyle="", color=c, label=o) for o, c in OUTCOME_COLORS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    title = ("Claims check: claimed % change (band) vs measured change (point) with its 95% CI (bar)\n"
             + "\n".join(textwrap.wrap(source_line(document), int(fig.get_figwidth() * 11))))
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


# A change of a positive quantity lies in (-100 %, +inf): the claims' axis is the log of the ratio, labelled in %.
_PCT_TICKS = (-99.9, -99.0, -95.0, -90.0, -80.0, -50.0, -25.0, -10.0, 0.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0,
              1e3, 2e3, 5e3, 1e4, 1e5, 1e6)
_SMALLEST_RATIO = 1e-6  # where a band widened past -100 % is drawn


def pct_to_log(pct):
    """A change in % to the log of its ratio (the claims' axis); -100 % and below to the axis's far left."""
    return np.log(np.maximum(1.0 + np.asarray(pct, dtype=float) / 100.0, _SMALLEST_RATIO))


def log_to_pct(value):
    return 100.0 * np.expm1(np.asarray(value, dtype=float))


def claims_x_scale(ax, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """The log of the ratio, labelled as the change in %: every change's interval is made on that scale
    (analysis.change.ratio_interval), so halving and doubling lie equally far from 0 and no interval can reach
    -100 %. Ticks are thinned to about ten."""
    import matplotlib.ticker

    ax.set_xscale("function", functions=(pct_to_log, log_to_pct))
    values = [v for _, c in rows for v in [*c["claimed_pct"], *(c.get("band_pct") or []), *(c.get("ci_pct") or []),
                                           c.get("measured_pct")] if v is not None] + [0.0]
    low, high = float(pct_to_log(min(values))), float(pct_to_log(max(values)))
    pad = 0.08 * max(high - low, 0.1)
    ax.set_xlim(float(log_to_pct(low - pad)), float(log_to_pct(high + pad)))
    ax.set_xticks(_pct_ticks(*ax.get_xlim()))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:+g}%" if v else "0"))
    ax.set_xlabel("change vs baseline (%, log scale of the ratio); negative = less time or size")


def _pct_ticks(lo: float, hi: float) -> list[float]:
    """The candidate ticks inside [lo, hi], no two closer than a tenth of the axis (on its log scale)."""
    span = float(pct_to_log(hi) - pct_to_log(lo))
    ticks: list[float] = []
    for tick in (t for t in _PCT_TICKS if lo <= t <= hi):
        if not ticks or float(pct_to_log(tick) - pct_to_log(ticks[-1])) >= span / 10 or tick == 0.0:
            if ticks and tick == 0.0 and float(pct_to_log(0.0) - pct_to_log(ticks[-1])) < span / 10:
                ticks.pop()  # 0 is always shown
            ticks.append(tick)
    return ticks
