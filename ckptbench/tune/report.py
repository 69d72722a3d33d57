"""The console text of a tuning document: the recommendation first, then what to paste, then how it was
found. It reads tuning.json's figures and computes nothing."""

from __future__ import annotations

import json
from typing import Any, Mapping

from ckptbench.core.units import duration_label, human_bytes
from ckptbench.documents.store import weights_name
from ckptbench.spec.references import label
from ckptbench.tune.space import T5X

OBJECTIVE_WORDS = {"save_s": "save seconds", "load_s": "cold-load seconds", "total_s": "save + load seconds",
                   "size_bytes": "bytes on disk"}


def name_of(test: str) -> str:
    """A test the winner is compared with, in words: a reference row's label, or t5x_full said to be the
    T5X default."""
    return f"{T5X} (the T5X default)" if test == T5X else label(test)


def value(metric: str, number: float | None) -> str:
    if number is None:
        return "?"
    return human_bytes(number) if metric == "size_bytes" else f"{number:.3g} s"


def with_ci(metric: str, summary: Mapping[str, Any]) -> str:
    """'1.41 s (95% CI 1.32-1.50, n=7)'."""
    if not summary or not summary.get("n"):
        return "not measured"
    ci = summary.get("ci95")
    if ci is None:
        return f"{value(metric, summary['mean'])} (n={summary['n']}, no CI)"
    return f"{value(metric, summary['mean'])} (95% CI {value(metric, ci[0])}-{value(metric, ci[1])}, n={summary['n']})"


def change(comparison: Mapping[str, Any]) -> str:
    """'-53% (95% CI [-58%, -47%], p = 0.0001)'."""
    text = f"{comparison['change_pct']:+.1f}%"
    if comparison.get("change_ci95_pct"):
        lo, hi = comparison["change_ci95_pct"]
        text += f" (95% CI [{lo:+.1f}%, {hi:+.1f}%]"
    else:
        text += " (no finite CI"
    if comparison.get("p_value") is not None:
        text += f", p = {comparison['p_value']:.2g}"
    return text + ")"


def text(document: Mapping[str, Any]) -> str:
    return "\n".join([recommendation(document), "", paste(document), "", how(document)]).rstrip() + "\n"


def recommendation(document: Mapping[str, Any]) -> str:
    metric = document["metric"]
    weights = document["weights"]
    name = weights_name(weights)
    head = (f"Recommendation for {name} ({human_bytes(weights['size_bytes'])} {weights['dtype']}), objective "
            f"{document['objective']} ({OBJECTIVE_WORDS[metric]})")
    found = document["recommendation"]
    if found is None:
        return head + ":\n  none: no candidate was measured; give a larger --budget"
    figures = found["figures"]
    lines = [head + ":", f"  {found['test']}", f"    {found['layout']}",
             f"    {OBJECTIVE_WORDS[metric]}: {with_ci(metric, found['objective'])}"]
    others = [m for m in ("save_s", "load_s", "size_bytes") if m != metric]
    lines.append("    " + "; ".join(f"{m.split('_')[0]} {with_ci(m, figures[m])}" for m in others))
    ceiling = found.get("pct_of_ceiling") or {}
    if ceiling.get("save_gbps") is not None and ceiling.get("load_gbps") is not None:
        line = (f"    device ceiling: {ceiling['save_gbps']:.0f}% of its save throughput, "
                f"{ceiling['load_gbps']:.0f}% of its cold-load throughput")
        if ceiling.get(metric) is not None and metric == "total_s":
            line += f" ({ceiling[metric]:.0f}% of its save + load speed)"
        lines.append(line)
    for other, comparison in found["versus"].items():
        ratio = comparison.get("ratio")
        times = (f"{ratio:.2f}x its {OBJECTIVE_WORDS[metric]}" if ratio is not None else "?")
        if ratio and other == T5X and ratio < 1:
            times += f", {1 / ratio:.1f}x better"
        lines.append(f"    vs {name_of(other)}: {times}, {change(comparison)}: {comparison['verdict']}")
    second = found.get("runner_up")
    if second is None:
        lines.append("  runner-up: none measured")
    else:
        comparison = second["comparison"]
        lines.append(f"  runner-up: {second['test']}: {with_ci(metric, second['objective'])}")
        if second["distinguishable"]:
            lines.append(f"    distinguishable: {change(comparison)} against the winner: {comparison['verdict']}")
        else:
            cause = ("the budget ended before more runs could tell them apart" if found.get("stopped_by") == "budget"
                     else f"stopped: {found.get('stopped_by')}")
            lines.append(f"    NOT distinguishable from the winner, so they are tied: {change(comparison)} against the "
                         f"winner; {cause}; either will do")
    return "\n".join(lines)


def paste(document: Mapping[str, Any]) -> str:
    block = document.get("paste")
    if block is None:
        return ""
    where = (f"the tuned checkpoint in {block['checkpoint']}" if block.get("checkpoint")
             else "CHECKPOINT_DIR (put your checkpoint's folder there)")
    lines = [f"TensorStore spec of one array ({block['example_array']}) of a checkpoint at {where}; every parameter is "
             "an array like it, its own name in the kvstore path; ts.open(spec, create=True, context=...) writes, "
             "open=True reads:",
             json.dumps(block["spec"], indent=1),
             "TensorStore context:",
             json.dumps(block["context"], indent=1),
             "Phase 4 test entry (for test_configurations in phase4_config.json):",
             json.dumps(block["test_entry"], indent=1)]
    if block.get("verified"):
        lines.append("(checked: the weights were written in this layout and read back bit for bit with exactly this "
                     "spec and context)")
    else:
        lines.append("warning: the tuned checkpoint could not be read back with this spec: "
                     f"{block.get('verify_error')}")
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
    if eliminated:
        lines.append(f"{eliminated} candidates were eliminated; tuning.json holds every rung's figures and reasons.")
    return "\n".join(lines)
