"""Confirmation rounds in a results document: what is measured again, and the answer from those runs alone.

Why and how: PHASE4_GUIDE.md, section 5, "Confirmation rounds". `finalists` says which tests (the suite asks it after
its rounds, `derive` again from the same runs); `derive` puts in the answer comparisons made from those runs only,
pooled over the blocks, with each block's comparison beside them and whether the blocks disagree. The confirmation
runs are kept apart (`confirmation.runs`), so that no per-test statistic mixes them in.
"""

from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

from ckptbench.analysis import change as analysis
from ckptbench.analysis.samples import measured_runs
from ckptbench.documents.findings import metric_runs
from ckptbench.spec.suite import SuiteConfig

ROLES = ("peer", "ceiling")  # the answer's comparisons measured again; the baseline's stays the rounds'


def raw(config: SuiteConfig, runs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The raw `confirmation` section of a suite's document (None when the suite asks for none)."""
    if not config.confirm_rounds:
        return None
    return {"rounds": config.confirm_rounds, "blocks": config.confirm_blocks, "pause_s": config.confirm_pause_s,
            "objectives": list(config.confirm_objectives), "runs": list(runs)}


def selected(best: Mapping[str, Any], objectives: Sequence[str]) -> dict[str, dict[str, str | None]]:
    """Per objective, the tests to measure again: TensorStore's best, the fastest peer and the device ceiling of `best`
    (from the suite's rounds); none for an objective without a peer or a ceiling to compare with."""
    out = {}
    for objective in objectives:
        entry = best.get(objective)
        if entry is None:
            continue
        against = entry.get("against") or {}
        others = {role: (against.get(role) or {}).get("test") for role in ROLES}
        if any(others.values()):
            out[objective] = {"tensorstore": entry["test"], **others}
    return out


def finalists(best: Mapping[str, Any], objectives: Sequence[str]) -> list[str]:
    """Every test to measure again, each once, in the order `selected` names them."""
    names = [name for chosen in selected(best, objectives).values() for name in chosen.values() if name]
    return list(dict.fromkeys(names))


def derive(document: dict[str, Any], noise_pct: float) -> None:
    """Put the confirmation runs' comparisons in the document's `best` (in place; see the module docstring)."""
    section = document.get("confirmation")
    if not section:
        return
    best = document["best"]
    section["selected"] = selected(best, section["objectives"])
    good = measured_runs(section["runs"])
    blocks = sorted({r["confirm_block"] for r in good})
    for objective, chosen in section["selected"].items():
        entry = best[objective]
        metric = entry["metric"]
        mine = [r for r in good if r["test"] == chosen["tensorstore"]]
        values = metric_runs(mine, metric)
        entry["confirmation"] = None
        if not values:
            continue
        entry["confirmation"] = {"test": chosen["tensorstore"], "mean": statistics.fmean(values), "n": len(values),
                                 "rounds": section["rounds"], "blocks": len(blocks)}
        for role in ROLES:
            theirs = [r for r in good if r["test"] == chosen[role]]  # none for a role without a test
            if metric_runs(theirs, metric):
                entry["against"][role] = _confirmed(mine, theirs, chosen[role], metric, blocks, noise_pct)


def _confirmed(mine: Sequence[Mapping[str, Any]], theirs: Sequence[Mapping[str, Any]], other: str, metric: str,
               blocks: Sequence[int], noise_pct: float) -> dict[str, Any]:
    """The winner against `other` over every confirmation run, and block by block."""
    def compared(block: int | None) -> dict[str, Any]:
        """Over every run (block None) or one block's; {} for a block without both sides."""
        a, b = (metric_runs([r for r in runs if block is None or r["confirm_block"] == block], metric)
                for runs in (mine, theirs))
        # every objective confirmed is a time
        return analysis.compare(a, b, metric="save_s", noise_pct=noise_pct) if a and b else {}

    per_block = [{"block": block, **pair} for block in blocks if (pair := compared(block))]
    ratios = [c["ratio"] for c in per_block if c["ratio"] is not None]
    return {"test": other, "mean": statistics.fmean(metric_runs(theirs, metric)),
            **compared(None), "runs": "confirmation", "blocks": per_block,
            "block_ratio_range": [min(ratios), max(ratios)] if len(ratios) > 1 else None,
            "blocks_disagree": analysis.blocks_disagree(per_block) if len(per_block) > 1 else None}
