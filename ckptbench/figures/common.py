"""What every figure shares: making and saving a Figure without pyplot, the reference rows' style, the title's source
line and whiskers from a summary.

Figures are matplotlib `Figure` objects saved explicitly: importing a figures module, or drawing, never touches pyplot
or the backend of a notebook that imports it. matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from ckptbench.core.errors import UserError

ERRORBAR_NOTE = "error bars: 95% CI of the mean, log scale (none with 2 runs or fewer)"
REFERENCE_COLOR = "#c8c8c8"
DPI = 100


def figure(width_in: float, height_in: float, rows: int = 1, cols: int = 1,
           layout: Literal["constrained", "tight"] | None = "constrained") -> tuple[Any, Any]:
    """A Figure and its axes without pyplot (nothing global changes); `layout=None`: the caller places the axes."""
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
