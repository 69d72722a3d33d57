"""tuning.png: every measured candidate's save time against its load time (log axes), from a tuning document:
marker area by bytes on disk, eliminated candidates faded, the Pareto front a line, the reference rows dashed at
their save time and dotted at their load time, the winner, runner-up and t5x_full lettered and named in a key
under the plot. Drawing computes nothing: the front and the statuses come from tuning.json.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Mapping

from ckptbench.analysis.change import ratio_words
from ckptbench.core.units import human_bytes
from ckptbench.documents.store import weights_name
from ckptbench.figures.common import figure, save
from ckptbench.spec.references import REFERENCES, kind_of, label
from ckptbench.tune.report import VERBS, has_async
from ckptbench.tune.space import T5X

PLOT_FILE = "tuning.png"
STYLE = {  # status -> (colour, alpha)
    "winner": ("#d4a017", 1.0),
    "runner-up": ("#e76f51", 0.95),
    "finalist": ("#2a6f97", 0.9),
    "survivor": ("#2a6f97", 0.6),
    "not a finalist": ("#2a6f97", 0.45),
    "eliminated": ("#8d99ae", 0.2),
}
MIN_AREA, MAX_AREA = 25.0, 400.0


def draw(document: Mapping[str, Any], path: Path) -> Path | None:
    """Draw the figure; None when no candidate was measured."""
    points = {name: c for name, c in document["candidates"].items() if c["stats"]["save_s"]["n"]}
    if not points:
        return None
    fig, grid = figure(11, 8)
    ax = grid[0][0]
    largest = max(c["stats"]["size_bytes"]["mean"] or 0 for c in points.values()) or 1.0
    for status, (color, alpha) in STYLE.items():
        group = [(n, c) for n, c in points.items() if c["status"] == status]
        if not group:
            continue
        ax.scatter([c["stats"]["save_s"]["mean"] for _, c in group], [c["stats"]["load_s"]["mean"] for _, c in group],
                   s=[MIN_AREA + (MAX_AREA - MIN_AREA) * (c["stats"]["size_bytes"]["mean"] or 0) / largest
                      for _, c in group], color=color, alpha=alpha, edgecolors="black",
                   linewidths=0.4, label=f"{status} ({len(group)})", zorder=3 if status != "eliminated" else 2)
    front = [points[n] for n in document["pareto"] if n in points]
    if len(front) > 1:
        ax.step([c["stats"]["save_s"]["mean"] for c in front], [c["stats"]["load_s"]["mean"] for c in front],
                where="post", color="#2a6f97", linewidth=1.2, alpha=0.8, label="Pareto front (save, load)", zorder=2)
    for name, reference in document["references"].items():
        figures = reference["stats"]
        save_s, load_s = figures["save_s"]["mean"], figures["load_s"]["mean"]
        if save_s is None or load_s is None:
            continue
        kind = kind_of(name)
        color = REFERENCES[kind].colour if kind is not None else "black"
        ax.axvline(save_s, color=color, linestyle="--", linewidth=1,
                   label=f"{label(name)}: save {save_s:.2g} s | load {load_s:.2g} s")
        ax.axhline(load_s, color=color, linestyle=":", linewidth=1)
    _label(ax, document, points)
    ax.set_xscale("log")
    ax.set_yscale("log")
    lost = "; async: training time lost per checkpoint" if has_async(document) else ""
    ax.set_xlabel(f"save time, s (fsync'd{lost}; log scale)")
    ax.set_ylabel("load time, s (cold; log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", markerscale=0.5)
    weights = document["weights"]
    ax.set_title(f"every candidate measured, at the mean of its runs; marker area: bytes on disk (largest "
                 f"{human_bytes(largest)}); faded: eliminated\nreference rows and the device ceiling: dashed at their "
                 "save time, dotted at their load time", fontsize=9)
    import matplotlib.ticker

    for axis in (ax.xaxis, ax.yaxis):  # plain seconds (not 3 x 10^0); minor ticks labelled at 2, 3 and 5
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""))
    found = document.get("recommendation")
    headline = f"winner {found['test']}" if found else "no candidate measured"
    peer = ((found or {}).get("peers") or {}).get(document["metric"])
    title = (f"tune: {weights_name(weights)} ({human_bytes(weights['size_bytes'])} {weights['dtype']}), objective "
             f"{document['objective']}: {headline}")
    if peer is not None:
        title += (f"; TensorStore's best {VERBS[document['metric']]} "
                  + ratio_words(peer, f"{label(peer['test'])}, the fastest peer", document["metric"])
                  + (f", {peer['basis']}" if peer.get("basis") else ""))
    fig.suptitle("\n".join(textwrap.wrap(title, int(fig.get_figwidth() * 11))), fontsize=11)
    return save(fig, path)


SHORT_NAMES = {"winner": "W", "runner-up": "R", T5X: "T"}  # the points' labels; the key under the plot names them


def _label(ax, document: Mapping[str, Any], points: Mapping[str, Mapping[str, Any]]) -> None:
    """Letter the winner, the runner-up and t5x_full beside their points and name them in a key under the axes (a
    candidate's name runs to 100 characters: beside the point it would leave the plot)."""
    found = document.get("recommendation") or {}
    marks = {found.get("test"): "winner", (found.get("runner_up") or {}).get("test"): "runner-up", T5X: T5X}
    key = []
    for name, role in ((n, r) for n, r in marks.items() if isinstance(n, str) and n in points):
        stats = points[name]["stats"]
        short = SHORT_NAMES[role]
        ax.annotate(short, (stats["save_s"]["mean"], stats["load_s"]["mean"]), xytext=(7, 7),
                    textcoords="offset points", fontsize=9, fontweight="bold" if role == "winner" else "normal",
                    annotation_clip=True)
        words = "t5x_full, the T5X default" if role == T5X else f"{role}: {name}"
        key.append("\n      ".join(textwrap.wrap(f"{short} = {words}", KEY_WIDTH)))
    if key:
        ax.text(0.0, -0.09, "\n".join(key), transform=ax.transAxes, va="top", ha="left", fontsize=8,
                family="monospace")


KEY_WIDTH = 120  # characters of a line of the key under the plot
