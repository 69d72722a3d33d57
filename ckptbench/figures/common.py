"""What every figure shares: making and saving a Figure without pyplot, the reference rows' style,
the title's source line, whiskers from a summary, and the claims' x axis.

Figures are matplotlib `Figure` objects saved explicitly: importing a figures module, or
drawing, never touches pyplot or the backend of a notebook that imports it. matplotlib is
imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ckptbench.core.errors import UserError
from ckptbench.spec.references import CEILING

ERRORBAR_NOTE = "error bars: 95% CI of the mean"
OUTCOME_COLORS = {"confirmed": "#2a9d8f", "contradicted": "#e63946", "consistent, not pinned down": "#f4a261",
                  "inconclusive": "#9a9a9a"}
REFERENCE_COLOR = "#c8c8c8"
DPI = 100
__all__ = ["CEILING", "DPI", "ERRORBAR_NOTE", "OUTCOME_COLORS", "REFERENCE_COLOR", "claims_x_scale", "figure",
           "mean_and_err", "save", "source_line"]


def figure(width_in: float, height_in: float, rows: int = 1, cols: int = 1, layout: str | None = "constrained"
           ) -> tuple[Any, Any]:
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


def mean_and_err(summary: Mapping[str, Any], scale: float = 1.0, log_ci: bool = False) -> tuple[float, list[float]]:
    """The mean and the distances to its CI's ends (the log-scale CI where asked: never below zero)."""
    mean = summary.get("mean")
    if mean is None:
        return np.nan, [0.0, 0.0]
    ci = summary.get("ci95_log") if log_ci else summary.get("ci95")
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


def claims_x_scale(ax, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Linear, unless something passes +-100 %: then linear inside +-100 % and logarithmic beyond,
    so one huge CI (common with 3 noisy runs) cannot squash every claimed band into a sliver."""
    import matplotlib.ticker

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
