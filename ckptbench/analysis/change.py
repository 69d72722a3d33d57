"""Two samples in, one judgement out: the only place where a change is measured and judged.

`compare(values, baseline, ...)` gives the change in % of the baseline's mean, the
ratio of means with its error (hyperfine's propagation), the 95 % interval of the
change (Fieller's), Welch's p-value, a verdict, and, when a claimed range is given,
the claim's outcome. A suite's "versus baseline" table, the claims check, `compare
A.json B.json`, `tune` and `explain` all call it, so they can never disagree.

Claim outcomes, for a claimed range [lo, hi] of % change and the 95 % CI of the
measured change. For times the range is first widened by the noise threshold (a claim
of -25..-30 % is not refuted by -31 % on a disk whose runs differ by 10 %); sizes are
exact and are not widened.
- confirmed: the CI lies within the (widened) range;
- contradicted: the CI lies wholly outside it;
- consistent, not pinned down: the CI overlaps it but is wider than it, so more runs
  are needed to tell;
- inconclusive: otherwise (the CI straddles an edge of the range, or there is no CI).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ckptbench.analysis.stats import ALPHA, as_floats, mean_std, t_quantile

CONFIRMED = "confirmed"
CONTRADICTED = "contradicted"
NOT_PINNED = "consistent, not pinned down"
INCONCLUSIVE = "inconclusive"
OUTCOMES = (CONFIRMED, CONTRADICTED, NOT_PINNED, INCONCLUSIVE)

# Metric -> (higher is better, word when better, word when worse, has run-to-run noise)
METRICS: dict[str, tuple[bool, str, str, bool]] = {
    "save_s": (False, "faster", "slower", True),
    "load_s": (False, "faster", "slower", True),
    "size_bytes": (False, "smaller", "larger", False),
}
# Config key of an `expected` block -> metric
CLAIM_METRICS: dict[str, str] = {"save_pct": "save_s", "load_pct": "load_s", "size_pct": "size_bytes"}
WITHIN_NOISE = "within noise"
NOT_SIGNIFICANT = "no significant difference"
INSUFFICIENT = "insufficient data"


def compare(
    values: Sequence[float],
    baseline: Sequence[float],
    *,
    metric: str = "save_s",
    noise_pct: float = 5.0,
    claimed_pct: Sequence[float] | None = None,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """Judge `values` against `baseline` (both raw runs of one metric); see the module docstring.

    verdict, in order: "insufficient data" (n < 2 on either side or a zero baseline mean),
    "within noise" (|change| < noise_pct, even if significant), "no significant difference"
    (p >= alpha), else the metric's better/worse word ("faster", "slower", ...).
    """
    higher_is_better, better_word, worse_word, noisy = METRICS[metric]
    a, b = as_floats(values), as_floats(baseline)
    out: dict[str, Any] = {"change_pct": None, "change_ci95_pct": None, "ratio": None, "ratio_err": None,
                           "p_value": None, "verdict": INSUFFICIENT, "significant": False,
                           "weak_test": min(a.size, b.size) < 5, "alpha": alpha}
    if a.size and b.size:
        m_a, s_a = mean_std(a)
        m_b, s_b = mean_std(b)
        if m_b != 0.0:
            out["ratio"] = m_a / m_b
            out["change_pct"] = 100.0 * (m_a / m_b - 1.0)
            if s_a is not None and s_b is not None:
                # hyperfine: ratio * sqrt((s1/m1)^2 + (s2/m2)^2), written so m1 == 0 does not divide by zero
                out["ratio_err"] = math.hypot(s_a, out["ratio"] * s_b) / abs(m_b)
                out["p_value"] = welch_p_value(a, b)
                out["significant"] = out["p_value"] < alpha
                interval = fieller_change_ci_pct(a, b)
                out["change_ci95_pct"] = None if interval is None else list(interval)
                out["verdict"] = _verdict(out, noise_pct, alpha, higher_is_better, better_word, worse_word)
    if claimed_pct is not None:
        out["claim"] = judge_claim(metric, claimed_pct, out, noise_pct if noisy else 0.0, a.size, b.size)
    return out


def _verdict(out: dict[str, Any], noise_pct: float, alpha: float, higher_is_better: bool,
             better_word: str, worse_word: str) -> str:
    change = out["change_pct"]
    if abs(change) < noise_pct:
        return WITHIN_NOISE
    if out["p_value"] >= alpha:
        return NOT_SIGNIFICANT
    return better_word if (change > 0) == higher_is_better else worse_word


def welch_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Welch t-test p-value (what scipy.stats.ttest_ind(equal_var=False) gives); n >= 2 each."""
    from scipy.special import stdtr  # Student's t CDF (see stats.t_quantile on why not scipy.stats)

    if a.min() == a.max() and b.min() == b.max():
        # t is undefined (0/0 or x/0); with no noise at all any difference is real.
        return 0.0 if a[0] != b[0] else 1.0
    (m_a, s_a), (m_b, s_b) = mean_std(a), mean_std(b)
    v_a, v_b = s_a * s_a / a.size, s_b * s_b / b.size
    with np.errstate(all="ignore"):
        t = (m_a - m_b) / math.sqrt(v_a + v_b)
        df = (v_a + v_b) ** 2 / (v_a * v_a / (a.size - 1) + v_b * v_b / (b.size - 1))  # Welch-Satterthwaite
        p = float(2.0 * stdtr(df, -abs(t)))
    return 1.0 if math.isnan(p) else min(1.0, p)


def fieller_change_ci_pct(values: Sequence[float], baseline: Sequence[float],
                          confidence: float = 0.95) -> tuple[float, float] | None:
    """CI of 100 * (mean(values) / mean(baseline) - 1), by Fieller's theorem.

    A ratio of means is skewed; Fieller's interval is exact for normal means (the delta
    method is its small-noise limit). With m1, m2 the means and v1 = s1^2/n1, v2 = s2^2/n2,
    the interval is the set of r with (m1 - r m2)^2 <= t^2 (v1 + r^2 v2), t from Student's
    distribution with Welch-Satterthwaite degrees of freedom at r = m1/m2.

    None when either n < 2, the baseline mean is 0, or the baseline mean is not
    significantly different from 0 (the Fieller set is then unbounded).
    """
    a, b = as_floats(values), as_floats(baseline)
    if a.size < 2 or b.size < 2:
        return None
    m1, s1 = mean_std(a)
    m2, s2 = mean_std(b)
    if m2 == 0.0:
        return None
    q = m1 / m2
    u1 = s1 * s1 / a.size / (m2 * m2)  # relative to m2, so the arithmetic is scale-free
    u2 = s2 * s2 / b.size / (m2 * m2)
    var_rel = u1 + q * q * u2
    if var_rel == 0.0:
        pct = 100.0 * (q - 1.0)
        return (pct, pct)
    df = var_rel * var_rel / (u1 * u1 / (a.size - 1) + (q * q * u2) ** 2 / (b.size - 1))
    t = float(t_quantile(0.5 + confidence / 2.0, df))
    g = 1.0 - t * t * u2
    if g <= 0.0:
        return None
    half = t * math.sqrt(u1 * g + q * q * u2)  # written so it cannot go negative through cancellation
    lo, hi = (q - half) / g, (q + half) / g
    return (100.0 * (lo - 1.0), 100.0 * (hi - 1.0))


def _fmt_range(lo: float, hi: float) -> str:
    return f"[{lo:+.1f}%, {hi:+.1f}%]"


def judge_claim(metric: str, claimed_pct: Sequence[float], comparison: dict[str, Any], widen_pct: float,
                n_values: int, n_baseline: int) -> dict[str, Any]:
    """The outcome of a claimed % range against a comparison's change and CI (module docstring)."""
    if len(claimed_pct) != 2:
        raise ValueError(f"{metric}: claimed range must be [lo, hi], got {claimed_pct!r}")
    lo, hi = sorted(float(x) for x in claimed_pct)
    band_lo, band_hi = lo - widen_pct, hi + widen_pct
    ci = comparison.get("change_ci95_pct")
    claim: dict[str, Any] = {"metric": metric, "claimed_pct": [lo, hi], "band_pct": [band_lo, band_hi],
                             "measured_pct": comparison.get("change_pct"), "ci_pct": ci,
                             "outcome": INCONCLUSIVE, "reason": ""}
    if n_values < 2 or n_baseline < 2:
        claim["reason"] = (f"too few runs ({n_values} measured, {n_baseline} baseline; "
                           "need >= 2 each for a confidence interval)")
        return claim
    if ci is None:
        claim["reason"] = "no finite confidence interval: the baseline is indistinguishable from 0"
        return claim
    ci_lo, ci_hi = ci
    where = f"measured {claim['measured_pct']:+.1f}% (95% CI {_fmt_range(ci_lo, ci_hi)})"
    band = _fmt_range(band_lo, band_hi) + (f" (claimed {_fmt_range(lo, hi)} widened by the {widen_pct:g}% noise "
                                           "threshold)" if widen_pct else "")
    if band_lo <= ci_lo and ci_hi <= band_hi:
        claim["outcome"], claim["reason"] = CONFIRMED, f"{where} lies within {band}"
    elif ci_hi < band_lo or ci_lo > band_hi:
        side = "below" if ci_hi < band_lo else "above"
        claim["outcome"], claim["reason"] = CONTRADICTED, f"{where} lies entirely {side} {band}"
    elif ci_hi - ci_lo > band_hi - band_lo:
        claim["outcome"] = NOT_PINNED
        claim["reason"] = f"{where} overlaps {band} but is wider than it; more runs would decide"
    else:
        claim["reason"] = f"{where} straddles an edge of {band}"
    return claim
