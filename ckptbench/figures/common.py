"""What every figure shares: making and saving a Figure without pyplot, the reference rows' style,
the title's source line, whiskers from a summary, and the claims' x axis.

Figures are matplotlib `Figure` objects saved explicitly: importing a figures module, or
drawing, never touches pyplot or the backend of a notebook that imports it. matplotlib is
imported only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from ckptbench.core.errors import UserError
from ckptbench.spec.references import CEILING

ERRORBAR_NOTE = "error bars: 95% CI of the mean, log scale (none with 2 runs or fewer)"
OUTCOME_COLORS = {"confirmed": "#2a9d8f", "contradicted": "#e63946", "consistent, not pinned down": "#f4a261",
                  "inconclusive": "#9a9a9a"}
REFERENCE_COLOR = "#c8c8c8"
DPI = 100
__all__ = ["CEILING", "DPI", "ERRORBAR_NOTE", "OUTCOME_COLORS", "REFERENCE_COLOR", "claims_x_scale", "figure",
           "mean_and_err", "save", "source_line"]


def figure(width_in: float, height_in: float, rows: int = 1, cols: int = 1,
           layout: Literal["constrained", "tight"] | None = "constrained") -> tuple[Any, Any]:
    """A Figure and its axes, without pyplot: nothing global changes, in a script or a notebook.
    `layout=None` leaves the axes to be placed by the caller."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("figures need matplotlib; install it with: pip install matplotlib") from None
    fig = Figure(figsize=(width_in, height_in), layout=layout)
    return fig, (fig.subplots(rows, cols, squeeze=False) if layout else None)


def save(fig, path: Path) -> Path:
    # zlib level 1: a tenth of the drawing time was PNG compression at the default level
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 1})
    return path


def mean_and_err(summary: Mapping[str, Any], scale: float = 1.0) -> tuple[float, list[float]]:
    """The mean and the distances to its CI's ends (a positive quantity's: on the log scale, never below zero)."""
    mean = summary.get("mean")
    if mean is None:
        return np.nan, [0.0, 0.0]
    ci = summary.get("ci95")
    if ci is None:
        return mean / scale, [0.0, 0.0]
    return mean / scale, [max(0.0, (mean - ci[0]) / scale), max(0.0, (ci[1] - mean) / scale)]


def source_line(document: Mapping[str, Any]) -> str:
    w, p, scale = document["weights"], document["protocol"], document.get("scale") or {}
    name = w.get("repo_id") or w.get("name") or Path(w.get("path", "?")).name
    text = (f"{name} ({w['n_params'] / 1e6:.0f}M params, {w['dtype']}, values {w.get('values', '?')}, "
            f"{w['size_bytes'] / 1e9:.2f} GB), {p['num_runs']} runs/test, loads {p['load_cache']}")
    if scale.get("model_pct_of_ram") is not None:
        text += (f"; {scale['model_pct_of_ram']:.1f}% of RAM, "
                 f"{'fits' if scale['fits_in_page_cache'] else 'does not fit'} in the page cache")
    if scale.get("ceiling_load_pattern"):
        text += f"; ceiling: write {scale['ceiling_save_pattern']}, read {scale['ceiling_load_pattern']}"
    return text


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
