"""explain's words: a claim's label, its one-sentence summary, the console's short answer, its table and
its warnings.

The sentences are built from a judged claim (judge.py) alone, so explain.json holds each summary
beside the figures it states and the console prints the same words. A summary answers the question a
reader brings: where does the claim hold, which condition makes it hold, and if none, why not.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ckptbench.analysis import change as analysis
from ckptbench.explain.conditions import (
    AWAY,
    BY_NAME,
    INTO,
    LEFT_OUT,
    NO_MOVE,
    NOT_SWITCHABLE,
    ORIGINAL,
    OUT_OF,
    SHARED,
    TOWARD,
    TRUE,
)
from ckptbench.explain.design import Claim, outside_pp

_MOVES = {INTO: "into the band", OUT_OF: "out of the band", TOWARD: "toward the band", AWAY: "away from the band"}
_OPS = {"save_s": ("save", "faster", "slower"), "load_s": ("load", "faster", "slower"),
        "size_bytes": ("size", "smaller", "larger")}


def claim_label(claim: Claim) -> str:
    """'chunks_1mb load +20..+30 % slower'."""
    op, less, more = _OPS[claim.metric]
    lo, hi = sorted(claim.claimed_pct)
    word = f" {more}" if lo >= 0 else f" {less}" if hi <= 0 else ""
    return f"{claim.test} {op} {lo:+g}..{hi:+g} %{word}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0f} %" if abs(value) >= 10 else f"{value:+.1f} %"


def _undecided(arm: Mapping[str, Any]) -> bool:
    return arm["outcome"] in (analysis.NOT_PINNED, analysis.INCONCLUSIVE)


def summary(entry: Mapping[str, Any], preset_values: bool = True) -> str:
    """One sentence per judged claim: where it holds, which condition makes it hold, or why it does not.

    `preset_values`: the weights are a preset's synthetic values, so a size claim that fails everywhere
    is pointed at a real checkpoint rather than at the harness."""
    label, arms, effects = entry["label"], entry["arms"], entry["effects"]
    true, original = arms[TRUE], arms.get(ORIGINAL)
    if true["n"] < 2 or true["n_baseline"] < 2:
        return f"{label}: not measured (fewer than 2 runs)"
    if true["outcome"] == analysis.CONFIRMED:
        out = [e for e in effects if e["effect"] == OUT_OF]
        tail = (f"; {_titles(out)} would break it ({_pair(out[0])})" if out else "")
        return f"{label}: holds as measured ({_pct(true['measured_pct'])}){tail}"
    into = [e for e in effects if e["effect"] == INTO]
    if into:
        first = BY_NAME[into[0]["condition"]]
        together = ("" if original is None or original["outcome"] == analysis.CONFIRMED else
                    f" (though not with all the original's conditions together: {_pct(original['measured_pct'])})")
        return f"{label}: reproduced only with {_titles(into)} ({_pair(into[0])}){together}; {first.consequence}"
    real = [e for e in effects if e["effect"] != NO_MOVE and e["shift_pp"] is not None]
    biggest = max(real, key=lambda e: abs(e["shift_pp"]), default=None)
    moved = (f"; {BY_NAME[biggest['condition']].title} moves it most, {_MOVES[biggest['effect']]} "
             f"({_pair(biggest)})" if biggest is not None else "")
    if original is None:
        return (f"{label}: {_outcome_words(true)} as measured ({_pct(true['measured_pct'])}), and your config "
                f"shares every condition of the original, so its harness does not explain it")
    if original["outcome"] == analysis.CONFIRMED:
        return (f"{label}: reproduced only with the original's conditions together ({_pct(true['measured_pct'])} "
                f"as measured vs {_pct(original['measured_pct'])}); no single condition does it{moved}")
    if _undecided(original):
        return (f"{label}: undecided under the original's conditions ({_pct(original['measured_pct'])}, "
                f"{original['n']} runs); more --runs would decide{moved}")
    points_out = (outside_pp(original["measured_pct"], original["band_pct"])
               if original["measured_pct"] is not None else 0)
    return (f"{label}: not reproduced even under the original's conditions ({_pct(original['measured_pct'])} there, "
            f"{points_out:.1f} points outside the band; {_pct(true['measured_pct'])} as measured){moved}; "
            f"{_why_still(entry, preset_values)}")


def _outcome_words(arm: Mapping[str, Any]) -> str:
    return "contradicted" if arm["outcome"] == analysis.CONTRADICTED else "undecided"


def _titles(effects: Sequence[Mapping[str, Any]]) -> str:
    titles = [BY_NAME[e["condition"]].title for e in effects]
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " or " + titles[-1]


def _pair(effect: Mapping[str, Any]) -> str:
    """'-61 % cold vs +18 % warm'."""
    condition = BY_NAME[effect["condition"]]
    return f"{_pct(effect['base_pct'])} {condition.yours} vs {_pct(effect['switched_pct'])} {condition.theirs}"


def _why_still(entry: Mapping[str, Any], preset_values: bool) -> str:
    """Why a claim can fail under every condition of the original's that can be reproduced."""
    if entry["metric"] == "size_bytes":
        if preset_values:
            return ("sizes depend only on the layout and the values, and the preset's values are synthetic "
                    "(normal, std 0.02), not open_llama_3b's; measure a real checkpoint with --weights")
        return "sizes depend only on the layout and the values: your checkpoint's values are not the original's"
    return ("the summary's expectations were written from Phase 3, not measured by Phase 4, and this machine's "
            "disk and CPU set the times")


def answer(document: Mapping[str, Any]) -> list[str]:
    """The console's short answer to an explain.json: what was compared, then one line per claim."""
    shared = [c["title"] for c in document["conditions"] if c["status"] == SHARED]
    lines = [f"explain: {len(document['arms'])} arms x {document['n_user_tests']} tests x "
             f"{document['num_runs']} runs on {document['weights_label']}, one interleaved suite"
             + ("" if document["complete"] else " (incomplete: stopped early)")]
    if shared:
        lines.append(f"shared with the original (no arm): {', '.join(shared)}")
    for status in (NOT_SWITCHABLE, LEFT_OUT):
        by_reason: dict[str, list[str]] = {}
        for c in document["conditions"]:
            if c["status"] == status:
                by_reason.setdefault(c["reason"], []).append(c["title"])
        if by_reason:
            lines.append(f"{status}: " + "; ".join(f"{', '.join(t)} ({r})" for r, t in by_reason.items()))
    lines += [claim["summary"] for claim in document["claims"]]
    return lines


def _change(arm: Mapping[str, Any] | None) -> str:
    """'-27 % [-29, -25] confirmed': an arm's change with its interval (none: too few runs) and outcome."""
    if arm is None:
        return "-"
    if arm["measured_pct"] is None:
        return f"not measured: {arm['outcome']}"
    ci = arm.get("ci_pct")
    few = arm.get("reason", "").startswith(analysis.TOO_FEW)
    interval = (f" [{ci[0]:+.0f}, {ci[1]:+.0f}]" if ci is not None and ci[0] != ci[1] else
                "" if ci is not None else " (too few runs)" if few else "")
    words = {analysis.NOT_PINNED: "not pinned"}
    return f"{_pct(arm['measured_pct'])}{interval} {words.get(arm['outcome'], arm['outcome'])}"


def table(document: Mapping[str, Any], details: bool = False) -> str:
    """One row per claim: as measured (the true arm), under all of the original's conditions, and the condition
    that moves it most; with `details`, a row per claim and arm."""
    from ckptbench.reports.tables import table as render

    rows = []
    if details:
        for claim in document["claims"]:
            for name, arm in claim["arms"].items():
                rows.append([claim["label"], name, _change(arm), str(arm["n"]), arm.get("reason", "")])
        return render(["claim", "arm", "change % [95% CI] outcome", "runs", "why"], rows)
    for claim in document["claims"]:
        real = [e for e in claim["effects"] if e["effect"] != NO_MOVE and e["shift_pp"] is not None]
        biggest = max(real, key=lambda e: abs(e["shift_pp"]), default=None)
        moves = "-" if biggest is None else f"{BY_NAME[biggest['condition']].title}: {_MOVES[biggest['effect']]}"
        rows.append([claim["label"], _change(claim["arms"].get(TRUE)), _change(claim["arms"].get(ORIGINAL)), moves])
    return render(["claim", "as measured (95% CI)", "under the original's conditions", "moved most by"], rows)


def warnings(document: Mapping[str, Any], failed_runs: int = 0, most: int = 6) -> list[str]:
    """What threatens the answer, at most `most` lines: an explain stopped early, failed runs, claims judged on
    too few runs."""
    out = []
    if not document.get("complete", True):
        out.append("stopped early: the claims use the runs so far; continue with --resume (same flags)")
    if failed_runs:
        out.append(f"{failed_runs} run(s) failed and are left out")
    few = [c["label"] for c in document["claims"]
           if any(a["outcome"] == analysis.INCONCLUSIVE and a.get("reason", "").startswith(analysis.TOO_FEW)
                  for a in c["arms"].values())]
    if few:
        out.append(f"{len(few)} claim(s) have arms with too few runs for an interval (3 or more each): use --runs 3 "
                   "or more")
    undecided = [c["label"] for c in document["claims"] if _undecided(c["arms"][TRUE])]
    if undecided:
        out.append(f"{len(undecided)} claim(s) undecided as measured: more --runs would decide")
    if not out:
        return []
    return ["Warnings:", *(f"  ! {line}" for line in out[:most - 1])]
