"""Tables and the cells every report writes: a figure as mean +- std, a change with its verdict and interval."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

NA = "-"


def markdown_cell(value: object) -> str:
    """A cell that cannot break a GitHub table: '|' would start a new cell, a newline a new row."""
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|") or " "


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], fmt: str = "text") -> str:
    """A left-aligned text table, or a GitHub markdown table."""
    if fmt == "markdown":
        def line(cells: Sequence[object]) -> str:
            return "| " + " | ".join(markdown_cell(c) for c in cells) + " |"
        return "\n".join([line(headers), "|" + "|".join("---" for _ in headers) + "|", *(line(r) for r in rows)])
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
    """The verdict, flagged when fewer than 5 runs on a side make the t-test weak.

    Flagged whatever the verdict: with few runs "no significant difference" may just
    be a test too weak to see one, and a significant one rests on little data.
    """
    text = comparison["verdict"]
    if comparison.get("weak_test") and text != "insufficient data":
        text += f" (weak: {n_runs} runs)" if n_runs is not None else " (weak: few runs)"
    return text


def ci_pct(comparison: Mapping[str, Any]) -> str:
    interval = comparison.get("change_ci95_pct")
    return NA if interval is None else f"[{interval[0]:+.1f}, {interval[1]:+.1f}]"
