"""The text of `compare A.json B.json` (what it holds, in order: PHASE4_GUIDE.md, section 8).

It reads the rows analysis.versus computed and the documents' own comparisons and formats them, pyperf style; it
computes nothing.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ckptbench.analysis import change as analysis
from ckptbench.analysis import stats
from ckptbench.analysis.busy import NOT_JUDGED
from ckptbench.analysis.versus import REGRESSION_WORDS, joined_answers, only_in
from ckptbench.documents.store import Document, weights_name
from ckptbench.reports import tables as report
from ckptbench.reports.results import OBJECTIVE_WORDS
from ckptbench.reports.tables import ratio_brief


def _unit(metric: str, magnitude: float) -> tuple[float, str]:
    """(divisor, unit) that shows magnitude with a few digits before the point."""
    if metric == "size_bytes":
        for divisor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if magnitude >= divisor:
                return divisor, unit
        return 1.0, "B"
    return (1.0, "s") if magnitude >= 1.0 else (1e-3, "ms")


def _decimals(value: float, significant: int = 3) -> int:
    if value == 0 or not math.isfinite(value):
        return 0
    return max(0, significant - 1 - math.floor(math.log10(abs(value))))


def quantity_pm(summary: Mapping[str, Any], divisor: float, unit: str) -> str:
    """'13.1 ms +- 0.4 ms' (pyperf style); '-' without runs, '+- ?' with one run."""
    mean, std = summary.get("mean"), summary.get("std")
    if mean is None:
        return report.NA
    digits = _decimals(mean / divisor)
    text = f"{mean / divisor:.{digits}f} {unit}"
    return text + (f" +- {std / divisor:.{digits}f} {unit}" if std is not None else " +- ?")


def _table_row(row: Mapping[str, Any]) -> list[str]:
    a, b, comparison = row["a"], row["b"], row["comparison"]
    # One unit per row so A and B read side by side.
    magnitude = max((abs(s["mean"]) for s in (a, b) if s["mean"] is not None), default=0.0)
    divisor, unit = _unit(row["metric"], magnitude)
    change = comparison.get("change_pct")
    p = comparison.get("p_value")
    return [
        row["test"], row["metric"],
        f"{quantity_pm(a, divisor, unit)} (n={a['n']})",
        f"{quantity_pm(b, divisor, unit)} (n={b['n']})",
        report.NA if change is None else f"{change:+.1f}%",
        report.ci_pct(comparison),
        report.NA if p is None else f"{p:.3g}",
        _verdict(comparison, min(a["n"], b["n"])),
    ]


def _verdict(comparison: Mapping[str, Any], n_runs: int) -> str:
    """The verdict, and why a busy machine leaves it unjudged (or, judged with --allow-busy, that it was busy)."""
    if comparison["verdict"] == NOT_JUDGED:
        return f"{NOT_JUDGED} ({comparison['busy']})"
    text = report.verdict(comparison, n_runs)
    return text + (f" [busy: {comparison['busy']}]" if comparison.get("busy") else "")


def _describe(results: Document) -> str:
    document = results.document
    w, p = document.get("weights") or {}, document.get("protocol") or {}
    when = (document.get("environment") or {}).get("timestamp", "?")
    return (f"{results.path}: {weights_name(w)}, {w.get('dtype')}, "
            f"{p.get('num_runs')} runs/test, loads {p.get('load_cache')}, {when}")


def answer_lines(rows: Sequence[Mapping[str, Any]], doc_b: Mapping[str, Any], which: str = "B") -> list[str]:
    """B against A in two lines, then B's TensorStore best beside its fastest peer for save, load and save + load."""
    verdicts = [r["comparison"]["verdict"] for r in rows]
    same = sum(v in (analysis.WITHIN_NOISE, analysis.NOT_SIGNIFICANT) for v in verdicts)
    few = sum(v in (analysis.TOO_FEW, analysis.INSUFFICIENT) for v in verdicts)
    busy = [r for r in rows if r["comparison"]["verdict"] == NOT_JUDGED]
    worse = [r for r in rows if r["comparison"]["verdict"] in REGRESSION_WORDS]
    better = len(verdicts) - same - few - len(worse) - len(busy)
    lines = [f"Answer: B against A, {len(rows)} figures: {better} better, {len(worse)} worse, {same} unchanged "
             f"(within noise or not significant), {few} with too few runs to tell"
             + (f", {len(busy)} not judged (the machine was busy)" if busy else "")]
    if busy:
        shown = "; ".join(f"{r['test']} {r['metric']} ({r['comparison']['busy']})" for r in busy[:3])
        lines.append(f"  not judged, the machine was busy during their runs: {shown}"
                     + (f" and {len(busy) - 3} more" if len(busy) > 3 else "")
                     + "; run again on a quiet machine, or --allow-busy to judge them anyway")
    if worse:
        top = max(worse, key=lambda r: r["comparison"]["change_pct"])
        lines.append(f"  largest regression: {top['test']} {top['metric']} "
                     + analysis.ratio_words(top["comparison"], "in A",
                                            "size_bytes" if top["metric"] == "size_bytes" else "save_s"))
    lines += peer_lines(doc_b, which)
    return lines


def joined_lines(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any]) -> list[str]:
    """A and B as two blocks of one measurement (analysis.versus.joined_answers): each file's ratio of the same
    winner to the same peer or ceiling, and whether the two agree."""
    joined = joined_answers(doc_a, doc_b)
    if not joined:
        return []
    lines = ["A and B as two blocks (the same winner against the same peer or ceiling in both; each file's ratio "
             "from its confirmation rounds where it has them):"]
    for item in joined:
        a, b = item["a"], item["b"]
        head = (f"  {OBJECTIVE_WORDS[item['objective']]}: {item['test']} against {item['other']}"
                + (" (peer)" if item["role"] == "peer" else "") + f": A {ratio_brief(a)}{_source(a)}, "
                f"B {ratio_brief(b)}{_source(b)}")
        if item["disagree"]:
            lines.append(f"{head}: the files disagree ({item['disagree']}): no one verdict")
        else:
            low, high = item["ratio_range"]
            spread = analysis.range_text(*((1 / high, 1 / low) if high < 1.0 else (low, high)))  # as the words read
            lines.append(f"{head}: they agree" + (f" [ratios {spread}]" if spread else ""))
    return lines


def _source(comparison: Mapping[str, Any]) -> str:
    return "" if comparison.get("runs") == "confirmation" else " [best of K, selected from these runs]"


def peer_lines(document: Mapping[str, Any], which: str) -> list[str]:
    """A file's TensorStore best beside its fastest peer, for save, load and save + load (its `best`)."""
    out = []
    for objective, verb in (("save", "saves"), ("load", "loads"), ("balanced", "saves + loads")):
        entry = (document.get("best") or {}).get(objective) or {}
        peer = (entry.get("against") or {}).get("peer")
        if peer is not None and peer.get("blocks_disagree"):  # confirmation blocks that give no one verdict
            out.append(f"  {which}: TensorStore's best {verb} ({entry['test']}) against {peer['test']}, the fastest "
                       "peer: its confirmation blocks disagree, "
                       + ", ".join(f"block {c['block']} {ratio_brief(c)}" for c in peer["blocks"]))
        elif peer is not None:
            out.append(f"  {which}: TensorStore's best {verb} ({entry['test']}) "
                       + analysis.ratio_words(peer, f"{peer['test']}, the fastest peer"))
    return out


def unwatched_lines(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any]) -> list[str]:
    """A line for a file whose timed operations were not watched for other processes (no /proc, or a file written
    before the harness watched them): its differences are judged, but it may have run on a busy machine."""
    # no figures for some timed operations (busy None: a file of before), and none of the others busy
    sides = [side for side, busy in (("A", doc_a.get("busy")), ("B", doc_b.get("busy")))
             if busy is None or (busy["not_measured"] > 0 and busy["operations"] == 0)]
    if not sides:
        return []
    return [f"  {' and '.join(sides)}: other processes were not watched during {'their' if len(sides) > 1 else 'its'} "
            "timed operations (no /proc, or a file written before ckptbench watched them); a busy machine cannot "
            "be ruled out"]


def render(a: Document, b: Document, rows: Sequence[Mapping[str, Any]], noise_pct: float, fmt: str = "text",
           details: bool = False) -> str:
    """The whole comparison of B against A: what A and B are, the answer, the table, the tests only one has."""
    headers = ["test", "metric", "A: mean +- std", "B: mean +- std", "change (B vs A)", "95% CI %", "p",
               "verdict"]
    bullet = "- " if fmt == "markdown" else ""
    doc_a, doc_b = a.document, b.document
    lines = [f"{bullet}A = {_describe(a)}", f"{bullet}B = {_describe(b)}", "",
             *answer_lines(rows, doc_b), *joined_lines(doc_a, doc_b), *unwatched_lines(doc_a, doc_b), "",
             f"Ratio of means on the log scale, Welch-Satterthwaite t, alpha {stats.ALPHA:g}; changes under "
             f"{noise_pct:g}% are within noise; no interval with 2 runs or fewer.",
             "", report.table(headers, [_table_row(r) for r in rows], fmt)]
    only = [f"{bullet}Only in {side}, not compared: {', '.join(names)}"
            for side, names in zip("AB", only_in(doc_a, doc_b)) if names]
    lines += ["", *only] if only else []
    if details:
        lines += ["", "A's own answer:", *peer_lines(doc_a, "A")]
        warnings = doc_b.get("warnings") or []
        if warnings:
            lines += ["", "B's warnings:", *(f"  ! {w}" for w in warnings)]
    return "\n".join(lines)
