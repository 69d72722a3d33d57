"""Tables and the cells every report writes: a figure as mean +- std, a change with its verdict and interval."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ckptbench.analysis import change as analysis
from ckptbench.analysis.change import range_text, ratio_text, verdict_direction

NA = "-"
BRIEF = {analysis.WITHIN_NOISE: "same", analysis.NOT_SIGNIFICANT: "n.s."}  # the verdicts of no change, in a word


def markdown_cell(value: object) -> str:
    """A cell that cannot break a GitHub table: '|' would start a new cell, a newline a new row."""
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|") or " "


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], fmt: str = "text") -> str:
    """A left-aligned text table, or a GitHub markdown table."""
    if fmt == "markdown":
        def md_line(cells: Sequence[object]) -> str:
            return "| " + " | ".join(markdown_cell(c) for c in cells) + " |"
        return "\n".join([md_line(headers), "|" + "|".join("---" for _ in headers) + "|", *(md_line(r) for r in rows)])
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def mean_pm(summary: Mapping[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """'mean +- std' of a summary (std shown as '?' with one run)."""
    if not summary or summary.get("mean") is None:
        return NA
    mean = summary["mean"] / scale
    std = summary.get("std")
    return f"{mean:.{digits}f} +- {std / scale:.{digits}f}" if std is not None else f"{mean:.{digits}f} +- ?"


def change(comparison: Mapping[str, Any] | None) -> str:
    """'-39.9% faster' style change vs baseline, with its verdict."""
    if not comparison or comparison.get("change_pct") is None:
        return NA
    return f"{comparison['change_pct']:+.1f}% {comparison['verdict']}"


def verdict(comparison: Mapping[str, Any], n_runs: int | None = None) -> str:
    """The verdict, flagged when fewer than 5 runs on a side make the t-test weak, whatever the verdict: with few runs
    "no significant difference" may just be a test too weak to see one, and a significant one rests on little data."""
    text = comparison["verdict"]
    if comparison.get("weak_test") and text not in (analysis.INSUFFICIENT, analysis.TOO_FEW):
        text += f" (weak: {n_runs} runs)" if n_runs is not None else " (weak: few runs)"
    return text


def ci_pct(comparison: Mapping[str, Any]) -> str:
    """The change's 95 % interval in %, or why there is none ('too few runs' with 2 runs or fewer on a side)."""
    interval = comparison.get("change_ci95_pct")
    if interval is None:
        return _no_interval(comparison)
    return f"[{interval[0]:+.1f}, {interval[1]:+.1f}]"


def ratio_ci(comparison: Mapping[str, Any]) -> str:
    """'0.512 [0.401, 0.654]': the ratio of means and its 95 % interval; 'exact' without spread."""
    ratio, interval = comparison.get("ratio"), comparison.get("ratio_ci95")
    if ratio is None:
        return NA
    if interval is None:
        return f"{ratio:.3f} ({_no_interval(comparison)})"
    if interval[0] == interval[1]:
        return f"{ratio:.3f} (exact)"
    return f"{ratio:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _no_interval(comparison: Mapping[str, Any]) -> str:
    return analysis.TOO_FEW if comparison.get("verdict") in (analysis.TOO_FEW, analysis.INSUFFICIENT) else NA


def ratio_brief(comparison: Mapping[str, Any]) -> str:
    """A comparison without the other's name: '1.4x slower (1.3-1.5x)', '1.0x (0.70-1.5x, n.s.)'."""
    ratio, interval = comparison["ratio"], comparison.get("ratio_ci95")
    if ratio is None:
        return "no runs"
    direction = verdict_direction(comparison)
    flip = ratio < 1.0 and direction not in ("same", None)
    shown = 1 / ratio if flip else ratio
    word = "" if direction in ("same", None) else f" {direction}"
    if not interval:
        return f"{ratio_text(shown)}{word} (too few runs for a CI)"
    low, high = (1 / interval[1], 1 / interval[0]) if flip else interval
    return (f"{ratio_text(shown)}{word} ({range_text(low, high) or ratio_text(low)}"
            + (")" if word else f", {BRIEF[comparison['verdict']]})"))
