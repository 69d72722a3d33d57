"""The console text of a tuning document (`details` adds the winner against every peer and every candidate
measured). It computes nothing: every comparison was made by analysis.compare."""

from __future__ import annotations

import json
from typing import Any, Mapping

from ckptbench.analysis.change import TOO_FEW, ratio_words
from ckptbench.core.units import duration_label, human_bytes
from ckptbench.documents import while_training
from ckptbench.documents.store import weights_name
from ckptbench.spec.references import CEILING, label
from ckptbench.tune.policy import compare_metric
from ckptbench.tune.space import T5X

OBJECTIVE_WORDS = {"save_s": "save seconds", "load_s": "cold-load seconds", "total_s": "save + load seconds",
                   "size_bytes": "bytes on disk"}
VERBS = {"save_s": "saves", "load_s": "loads", "total_s": "saves + loads"}
MAX_WARNING_LINES = 6
ASYNC_WORDS = ("an async save's save is the training time lost per checkpoint: blocked, plus the steps' extra time "
               "until durable")


def is_async(stats: Mapping[str, Any]) -> bool:
    """A row saved async (commit_s measured): its save_s is the training time lost per checkpoint (policy.gather)."""
    return bool((stats.get("commit_s") or {}).get("n"))


def has_async(document: Mapping[str, Any]) -> bool:
    return any(is_async(row["stats"]) for row in [*document["candidates"].values(), *document["references"].values()])


def value(metric: str, number: float | None) -> str:
    if number is None:
        return "?"
    return human_bytes(number) if metric == "size_bytes" else f"{number:.3g} s"


def with_ci(metric: str, summary: Mapping[str, Any]) -> str:
    """'1.41 s (95% CI 1.32-1.50 s, n=7)'; 'too few runs' under 3."""
    if not summary or not summary.get("n"):
        return "not measured"
    ci = summary.get("ci95")
    if ci is None:
        why = "too few runs for a CI" if summary["n"] <= 2 else "no CI"
        return f"{value(metric, summary['mean'])} (n={summary['n']}, {why})"
    if ci[0] == ci[1]:
        return f"{value(metric, summary['mean'])} (exact, n={summary['n']})"
    return f"{value(metric, summary['mean'])} (95% CI {value(metric, ci[0])}-{value(metric, ci[1])}, n={summary['n']})"


def change(comparison: Mapping[str, Any]) -> str:
    """'-53% (95% CI [-58%, -47%], p = 0.0001)'."""
    text = f"{comparison['change_pct']:+.1f}%"
    if comparison.get("change_ci95_pct"):
        lo, hi = comparison["change_ci95_pct"]
        text += f" (95% CI [{lo:+.1f}%, {hi:+.1f}%]"
    elif comparison.get("verdict") in (TOO_FEW, "insufficient data"):
        text += " (too few runs for a CI"
    else:
        text += " (no CI"
    if comparison.get("p_value") is not None:
        text += f", p = {comparison['p_value']:.2g}"
    return text + ")"


def text(document: Mapping[str, Any], details: bool = False) -> str:
    parts = [recommendation(document, details), "", table(document, details)]
    warnings = warning_lines(document)
    parts += ["", *warnings] if warnings else []
    parts += ["", paste(document), "", how(document)]
    return "\n".join(parts).rstrip() + "\n"


def peer_lines(found: Mapping[str, Any]) -> list[str]:
    """'TensorStore's best loads 1.2x slower than Run:ai streamer, the fastest peer (95% CI 1.1-1.3x)'."""
    return [f"TensorStore's best {VERBS[metric]} "
            + ratio_words(peer, f"{label(peer['test'])}, the fastest peer", metric)
            + (f"; {peer['basis']}" if peer.get("basis") else "")
            for metric, peer in (found.get("peers") or {}).items() if peer is not None]


def recommendation(document: Mapping[str, Any], details: bool = False) -> str:
    metric = document["metric"]
    weights = document["weights"]
    head = (f"Recommendation for {weights_name(weights)} ({human_bytes(weights['size_bytes'])} {weights['dtype']}), "
            f"objective {document['objective']} ({OBJECTIVE_WORDS[metric]}"
            f"{'; ' + ASYNC_WORDS if has_async(document) else ''})")
    found = document["recommendation"]
    if found is None:
        return head + ":\n  none: no candidate was measured; give a larger --budget"
    others = [m for m in ("save_s", "load_s", "size_bytes") if m != metric]
    figures = found["figures"]
    lines = [head + ":", f"  {found['test']}", f"    {found['layout']}",
             f"    {OBJECTIVE_WORDS[metric]}: {with_ci(metric, found['objective'])}",
             "    " + "; ".join(f"{m.split('_')[0]} {with_ci(m, figures[m])}" for m in others),
             *([f"    saved async: blocked {with_ci('save_s', figures['blocked_s'])}, durable after "
                f"{with_ci('save_s', figures['commit_s'])}; {while_training.NOTE}"] if is_async(figures) else []),
             *(f"    {line}" for line in peer_lines(found))]
    ceiling = found.get("pct_of_ceiling") or {}
    if ceiling.get("save_gbps") is not None and ceiling.get("load_gbps") is not None:
        line = (f"    device ceiling: {ceiling['save_gbps']:.0f}% of its save throughput, "
                f"{ceiling['load_gbps']:.0f}% of its cold-load throughput")
        if ceiling.get(metric) is not None and metric == "total_s":
            line += f" ({ceiling[metric]:.0f}% of its save + load speed)"
        lines.append(line)
    peers = {(p or {}).get("test") for p in (found.get("peers") or {}).values()}
    for other, comparison in found["versus"].items():
        if other == T5X or details or (not found.get("peers") and other not in peers):
            who = f"{T5X} (the T5X default)" if other == T5X else label(other)
            lines.append(f"    against {who}: {ratio_words(comparison, 'it', compare_metric(metric))}")
    second = found.get("runner_up")
    lines += ["  runner-up: none measured"] if second is None else [
        f"  runner-up: {second['test']}: {with_ci(metric, second['objective'])}",
        f"    {runner_up_words(second, found.get('stopped_by'))}"]
    return "\n".join(lines)


def runner_up_judgement(second: Mapping[str, Any]) -> str:
    """The runner-up's judgement; a document from before "judgement" was written: by the same p-value."""
    if second.get("judgement"):
        return second["judgement"]
    if second["distinguishable"]:
        return "separated"
    return "not compared" if second["comparison"].get("p_value") is None else "not distinguishable"


def runner_up_words(second: Mapping[str, Any], stopped_by: str | None) -> str:
    """The runner-up against the winner: "tied" only when Welch's test ran and could not tell them apart."""
    comparison, verdict = second["comparison"], runner_up_judgement(second)
    if verdict == "separated":
        return f"distinguishable: {change(comparison)} against the winner: {comparison['verdict']}"
    cause = ("the budget ended before more runs could tell them apart" if stopped_by == "budget"
             else f"stopped: {stopped_by}")
    if verdict == "not compared":
        return (f"not compared with the winner: {comparison['change_pct']:+.1f}% on fewer than 2 runs a side, "
                f"where Welch's test is not defined; {cause}" if comparison.get("change_pct") is not None else
                f"not compared with the winner: fewer than 2 runs a side; {cause}")
    return (f"NOT distinguishable from the winner (Welch's test), so they are tied: {change(comparison)} against "
            f"the winner; {cause}; either will do")


def _interval(summary: Mapping[str, Any] | None, metric: str) -> str:
    if not summary or not summary.get("n"):
        return "-"
    mean, ci = summary["mean"], summary.get("ci95")
    scale = 1e6 if metric == "size_bytes" else 1.0
    text = f"{mean / scale:.3g}"
    if ci is None:
        return text + (", too few runs" if summary["n"] <= 2 else "")
    return text if ci[0] == ci[1] else f"{text} [{ci[0] / scale:.3g}-{ci[1] / scale:.3g}]"


def table(document: Mapping[str, Any], details: bool = False) -> str:
    """The finalists beside the fastest peers, the device ceiling and t5x_full; with `details`, every row."""
    from ckptbench.reports.tables import table as render

    found = document.get("recommendation") or {}
    candidates, references = document["candidates"], document["references"]
    names = list(candidates) if details else [
        n for n in [found.get("test"), (found.get("runner_up") or {}).get("test"), *document["finalists"], T5X]
        if n in candidates]
    refs = list(references) if details else [p["test"] for p in (found.get("peers") or {}).values() if p] + [CEILING]
    shown = [(n, candidates[n]["status"], candidates[n]["stats"]) for n in dict.fromkeys(names)]
    shown += [(n, "reference", references[n]["stats"]) for n in dict.fromkeys(refs) if n in references]
    rows = [[name, status + (", async" if is_async(stats) else ""), str(stats["save_s"]["n"]),
             *(_interval(stats.get(m), m) for m in ("save_s", "load_s", "total_s", "size_bytes"))]
            for name, status, stats in shown]
    headers = ["test", "status", "runs", "save s [95% CI]", "load s [95% CI]", "save + load s", "size MB"]
    return render(headers, rows)


def warning_lines(document: Mapping[str, Any]) -> list[str]:
    """What threatens the recommendation, at most six lines."""
    found = document.get("recommendation")
    out = []
    block = document.get("paste")
    if block is not None and not block.get("verified"):
        out.append(f"the pasted spec could not read the tuned checkpoint back: {block.get('verify_error')}")
    if not document.get("complete", True):
        out.append("the tune was interrupted: continue with tune --resume")
    if found is not None:
        second = found.get("runner_up")
        verdict = runner_up_judgement(second) if second is not None else None
        if verdict == "not distinguishable" and found.get("stopped_by") == "budget":
            out.append(f"the winner and {second['test']} are tied: the budget ended first; a larger --budget may "
                       "separate them")
        elif verdict == "not compared":
            out.append(f"the winner and {second['test']} were not compared (fewer than 2 runs a side); a larger "
                       "--budget runs both again")
        few = sorted({label(p["test"]) for p in (found.get("peers") or {}).values()
                      if p and p.get("verdict") in (TOO_FEW, "insufficient data")})
        if few:
            out.append(f"{', '.join(few)} measured too few times for a CI against the winner; a larger --budget "
                       "measures the fastest peer again in the final")
        ceiling = (document.get("references") or {}).get(CEILING)
        if ceiling is not None and not ceiling["stats"]["load_s"]["n"]:
            out.append("the device ceiling was not measured: rung 0 ran out of budget before its grid (the "
                       "candidates come first); a larger --budget gives the winner's % of the ceiling")
    if not out:
        return []
    return ["Warnings:", *(f"  ! {line}" for line in out[:MAX_WARNING_LINES - 1])]


def paste(document: Mapping[str, Any]) -> str:
    block = document.get("paste")
    if block is None:
        return ""
    where = (f"the tuned checkpoint in {block['checkpoint']}" if block.get("checkpoint")
             else "CHECKPOINT_DIR (put your checkpoint's folder there)")
    lines = [f"TensorStore spec of one array ({block['example_array']}) of a checkpoint at {where}; every parameter is "
             "an array like it, its own name in the kvstore path; ts.open(spec, create=True, context=...) writes, "
             "open=True reads:",
             json.dumps(block["spec"], indent=1), "TensorStore context:", json.dumps(block["context"], indent=1),
             "Phase 4 test entry (for test_configurations in phase4_config.json):",
             json.dumps(block["test_entry"], indent=1),
             "(checked: the weights were written in this layout and read back bit for bit with exactly this spec and "
             "context)" if block.get("verified") else
             f"warning: the tuned checkpoint could not be read back with this spec: {block.get('verify_error')}"]
    return "\n".join(lines)


def how(document: Mapping[str, Any]) -> str:
    budget, space = document["budget"], document["space"]
    corrected = budget.get("corrected") or {}
    estimate = budget["estimate"]
    halving = sum(1 for s in document["stages"] if s["kind"] == "halving")
    finals = sum(1 for s in document["stages"] if s["kind"] == "final")
    lines = [f"Tuned in {duration_label(budget['spent_s'])} of a {duration_label(budget['budget_s'])} budget "
             f"(seed {document['seed']}): {space['n_candidates']:,} candidates in the space "
             f"({space['n_skipped']:,} invalid combinations skipped, {space['n_duplicates']:,} identical to another "
             "for this model)."]
    if corrected:
        measured_s = corrected.get("run_s_measured")
        lines.append(f"Rung 0 measured {corrected['measured']} of them (estimated before starting: "
                     f"{estimate['n_candidates']}; a run took {measured_s or 0:.1f} s, estimated "
                     f"{estimate['run_s']:.1f} s), then {halving - 1} more halving rung(s) and {finals} final "
                     f"round(s); stopped: {document['stopped_by']}.")
    eliminated = sum(1 for c in document["candidates"].values() if c["status"] == "eliminated")
    censored = [n for n, c in document["candidates"].items() if (c.get("eliminated") or {}).get("censored")]
    skipped = space.get("predicted_hopeless") or {}
    if censored:
        factor = document["candidates"][censored[0]]["eliminated"]["factor"]
        lines.append(f"{len(censored)} measured more than {factor:g}x slower than the best and were not run again "
                     "(their figures are of their runs; they were not timed out).")
    if skipped:
        factor = next(iter(skipped.values()))["factor"]
        lines.append(f"{len(skipped)} skipped before running: their compression, measured earlier in this tune, "
                     f"predicted them more than {factor:g}x slower than the best (no time is reported for them).")
    if eliminated:
        lines.append(f"{eliminated} candidates were eliminated; tuning.json holds every rung's figures and reasons.")
    return "\n".join(lines)


def dry_run_text(info: Mapping[str, Any]) -> str:
    """What a tune would do (tune.dry_run): nothing was measured or written."""
    weights, plan, checked = info["weights"], info["plan"], info["preflight"]
    lines = [f"dry run of tune: {weights_name(weights)} ({human_bytes(weights['size_bytes'])} {weights['dtype']}), "
             f"objective {info['objective']}, budget {duration_label(info['budget_s'])}; nothing is measured or "
             "written",
             f"space: {info['n_candidates']:,} candidates ({info['n_skipped']:,} invalid combinations skipped, "
             f"{info['n_duplicates']:,} identical in effect for this model)",
             f"estimate: making the weights about {info['setup_s']:.0f} s; a candidate's run about "
             f"{info['run_s']:.0f} s (the median of those rung 0 runs first); the reference rows "
             f"({', '.join(info['references']) or 'none'}) in rung 0 and the final"]
    if plan is not None:
        rungs = " -> ".join(str(n) for n in plan["rung_sizes"])
        lines.append(f"plan: rung 0 lists {info['n_listed']} candidates and measures them while the rest still fits, "
                     f"by the durations it measures; about {plan['n_candidates']} fit at the estimate (rungs {rungs}, "
                     f"then the final; {plan['final_reserve_s']:.0f} s kept for the final)")
    lines.append(f"disk: about {human_bytes(checked['disk_need_bytes'] or 0)} at once; memory: about "
                 f"{human_bytes(checked['memory_need_bytes'])} at the peak (candidate {checked['hungriest']!r})")
    lines.append("pre-check: passes" if info["refusal"] is None else f"pre-check: refused: {info['refusal']}")
    return "\n".join(lines)
