"""The judgement: each claim under each arm, and what switching each condition does to it.

Each arm's outcome comes from `analysis.compare`, the one path every report judges a claimed change
by, so explain cannot disagree with `run` or `compare` about what the same runs say. A condition is
then credited with what switching it does to the claim, comparing the arm that switches it with the
arm that switches only what it needs (``true``, or e.g. the fp16 arm for timed conversions):

- into the band: confirmed with the condition, not without it;
- out of the band: confirmed without it, contradicted with it;
- toward / away from the band: the change's distance to the band shrinks or grows by more than the
  noise threshold (SIZE_MOVE_PP for sizes), and the two arms' 95 % intervals do not overlap, so a move
  the runs cannot tell from noise is not credited.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ckptbench.analysis import change as analysis
from ckptbench.explain.conditions import AWAY, BY_NAME, INTO, NO_MOVE, OUT_OF, TOWARD
from ckptbench.explain.design import Arm, Claim, Design, outside_pp
from ckptbench.explain.words import claim_label, summary

# Sizes have no run-to-run noise, so a size moves when its distance to the band changes by this many points.
SIZE_MOVE_PP = 0.5

Samples = Mapping[str, Mapping[str, Sequence[float]]]  # per suite test, per metric, the measured runs


def judge(design_: Design, samples: Samples, noise_pct: float, preset_values: bool = True) -> list[dict[str, Any]]:
    """Each claim's outcome under each arm, what each switched condition does to it, and a summary.

    `samples`: per suite test, per metric, the measured runs (analysis.samples). `preset_values`: the
    weights are a preset's synthetic values (their sizes then say nothing of a real checkpoint's)."""
    out = []
    for claim in design_.claims:
        arms = {arm.name: _arm_outcome(arm, claim, design_.baseline, samples, noise_pct) for arm in design_.arms}
        effects = [_effect(name, claim, design_, arms, noise_pct) for name in design_.switched]
        entry = {"test": claim.test, "metric": claim.metric, "claimed_pct": list(claim.claimed_pct),
                 "label": claim_label(claim), "arms": arms, "effects": [e for e in effects if e is not None]}
        entry["summary"] = summary(entry, preset_values)
        out.append(entry)
    return out


def _arm_outcome(arm: Arm, claim: Claim, baseline: str, samples: Samples, noise_pct: float) -> dict[str, Any]:
    """The claim judged on one arm's runs: the arm's test against the arm's baseline."""
    values = list((samples.get(arm.tests[claim.test]) or {}).get(arm.metric(claim.test, claim.metric), []))
    base = list((samples.get(arm.tests[baseline]) or {}).get(arm.metric(baseline, claim.metric), []))
    comparison = analysis.compare(values, base, metric=claim.metric, noise_pct=noise_pct,
                                  claimed_pct=claim.claimed_pct)
    judged = comparison["claim"]
    return {"conditions": list(arm.conditions), "test": arm.tests[claim.test], "baseline": arm.tests[baseline],
            "figure": arm.metric(claim.test, claim.metric),
            "outcome": judged["outcome"], "measured_pct": comparison["change_pct"],
            "ci_pct": comparison["change_ci95_pct"], "band_pct": judged["band_pct"], "verdict": comparison["verdict"],
            "n": len(values), "n_baseline": len(base), "reason": judged["reason"]}


def _apart(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two arms measured clearly different changes: their 95 % intervals do not overlap
    (conservative: a move the runs cannot separate from noise is not credited to a condition)."""
    if a["ci_pct"] is None or b["ci_pct"] is None:
        return False
    return a["ci_pct"][1] < b["ci_pct"][0] or b["ci_pct"][1] < a["ci_pct"][0]


def _effect(name: str, claim: Claim, design_: Design, arms: Mapping[str, Mapping[str, Any]],
            noise_pct: float) -> dict[str, Any] | None:
    """What switching one condition (on top of what it needs) does to a claim; None without both arms."""
    needed = [r for r in BY_NAME[name].requires if r in design_.switched]
    base_arm, with_arm = design_.arm_with(needed), design_.arm_with([name, *needed])
    if base_arm is None or with_arm is None:
        return None
    base, with_ = arms[base_arm.name], arms[with_arm.name]
    effect = NO_MOVE
    if with_["outcome"] == analysis.CONFIRMED and base["outcome"] != analysis.CONFIRMED:
        effect = INTO
    elif base["outcome"] == analysis.CONFIRMED and with_["outcome"] == analysis.CONTRADICTED:
        effect = OUT_OF
    elif _apart(base, with_):
        closer_pp = (outside_pp(base["measured_pct"], base["band_pct"])
                  - outside_pp(with_["measured_pct"], with_["band_pct"]))
        threshold_pp = noise_pct if analysis.METRICS[claim.metric][3] else SIZE_MOVE_PP
        effect = TOWARD if closer_pp > threshold_pp else AWAY if closer_pp < -threshold_pp else NO_MOVE
    shift_pp = (None if base["measured_pct"] is None or with_["measured_pct"] is None
             else with_["measured_pct"] - base["measured_pct"])
    return {"condition": name, "base_arm": base_arm.name, "arm": with_arm.name, "effect": effect,
            "base_pct": base["measured_pct"], "switched_pct": with_["measured_pct"], "shift_pp": shift_pp,
            "base_outcome": base["outcome"], "switched_outcome": with_["outcome"]}
