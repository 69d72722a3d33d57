"""Checking claimed ranges of % change against measurement.

A claim is a signed percent-change range for a metric versus baseline, e.g.
save_pct: [-30, -25] means "save time 25-30 % lower than baseline".
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from scipy import stats as sps

from .stats import _as_floats, _mean_std

# Config key of an `expected` block -> metric name in the samples.
CLAIM_METRICS: dict[str, str] = {
    "save_pct": "save_s",
    "load_pct": "load_s",
    "size_pct": "size_bytes",
}


def change_ci_pct(
    values: Sequence[float],
    baseline: Sequence[float],
    confidence: float = 0.95,
) -> tuple[float, float] | None:
    """CI of 100 * (mean(values) / mean(baseline) - 1), by Fieller's theorem.

    Why Fieller rather than the delta method: a ratio of means is skewed, and
    Fieller's interval is exact for normal means (the delta method is its
    small-noise limit). With m1, m2 the means and v1 = s1^2/n1, v2 = s2^2/n2,
    the interval is the set of r with

        (m1 - r * m2)^2 <= t^2 * (v1 + r^2 * v2)

    where t is the Student-t quantile with Welch-Satterthwaite degrees of
    freedom for m1 - r*m2, evaluated at the point estimate r = m1/m2.

    Returns None when either n < 2, the baseline mean is 0, or the baseline
    mean is not significantly different from 0 at this confidence (the
    Fieller set is then unbounded and no finite CI exists).
    """
    a, b = _as_floats(values), _as_floats(baseline)
    if a.size < 2 or b.size < 2:
        return None
    m1, s1 = _mean_std(a)
    m2, s2 = _mean_std(b)
    if m2 == 0.0:
        return None
    q = m1 / m2
    # Work relative to m2 so the arithmetic is scale-free: u = v / m2^2.
    u1 = s1 * s1 / a.size / (m2 * m2)
    u2 = s2 * s2 / b.size / (m2 * m2)
    var_rel = u1 + q * q * u2
    if var_rel == 0.0:
        # No noise on either side: the ratio is known exactly.
        pct = 100.0 * (q - 1.0)
        return (pct, pct)
    df = var_rel * var_rel / (u1 * u1 / (a.size - 1) + (q * q * u2) ** 2 / (b.size - 1))
    t = float(sps.t.ppf(0.5 + confidence / 2.0, df))
    g = 1.0 - t * t * u2
    if g <= 0.0:
        return None
    # Roots of g*r^2 - 2q*r + (q^2 - t^2 u1) = 0, discriminant written so it
    # cannot go negative through cancellation.
    half = t * math.sqrt(u1 * g + q * q * u2)
    lo, hi = (q - half) / g, (q + half) / g
    return (100.0 * (lo - 1.0), 100.0 * (hi - 1.0))


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _fmt_range(lo: float, hi: float) -> str:
    return f"[{lo:+.1f}%, {hi:+.1f}%]"


def check_claim(
    metric: str,
    claimed_pct: Sequence[float],
    values: Sequence[float],
    baseline: Sequence[float],
) -> dict:
    """Judge a claimed % change range against measured runs and their baseline.

    confirmed:    CI of the change overlaps the claimed range and the measured
                  change has the claimed sign (a range straddling 0 accepts either),
                  that sign being established: the CI excludes 0.
    contradicted: CI lies entirely outside the claimed range.
    inconclusive: otherwise (overlap with the wrong sign, a CI that includes 0 for a
                  claim with a direction, or no CI: too few runs).
    """
    if len(claimed_pct) != 2:
        raise ValueError(f"{metric}: claimed range must be [lo, hi], got {claimed_pct!r}")
    lo, hi = sorted(float(x) for x in claimed_pct)
    vals, base = list(values), list(baseline)
    result: dict = {"metric": metric, "claimed_pct": [lo, hi], "measured_pct": None,
                    "ci_pct": None, "outcome": "inconclusive", "reason": ""}
    if vals and base:
        # Same means as change_ci_pct (exact for all-equal runs).
        m_vals, _ = _mean_std(_as_floats(vals))
        m_base, _ = _mean_std(_as_floats(base))
        if m_base != 0.0:
            result["measured_pct"] = 100.0 * (m_vals / m_base - 1.0)

    if len(vals) < 2 or len(base) < 2:
        result["reason"] = (f"too few runs ({len(vals)} measured, {len(base)} baseline; "
                            f"need >= 2 each for a confidence interval)")
        return result
    ci = change_ci_pct(vals, base)
    if ci is None:
        result["reason"] = "no finite confidence interval: baseline mean is 0 or indistinguishable from 0"
        return result
    ci_lo, ci_hi = ci
    result["ci_pct"] = [ci_lo, ci_hi]
    measured = result["measured_pct"]
    where = f"measured {measured:+.1f}% (95% CI {_fmt_range(ci_lo, ci_hi)})"

    if ci_hi < lo or ci_lo > hi:
        side = "below" if ci_hi < lo else "above"
        result["outcome"] = "contradicted"
        result["reason"] = f"{where} lies entirely {side} claimed {_fmt_range(lo, hi)}"
        return result

    claimed_sign = 0 if lo <= 0.0 <= hi else _sign((lo + hi) / 2.0)
    if claimed_sign != 0 and _sign(measured) != claimed_sign:
        result["reason"] = (f"{where} overlaps claimed {_fmt_range(lo, hi)} "
                            f"but the measured change does not have the claimed sign")
        return result

    if ci_lo <= 0.0 <= ci_hi and claimed_sign != 0:
        # The claim says which way the change goes; an interval that includes 0 has not
        # shown any direction yet, so it cannot confirm one.
        result["reason"] = (f"{where} overlaps claimed {_fmt_range(lo, hi)}, but the CI also includes 0: "
                            "the direction is not established; more runs would decide")
        return result
    result["outcome"] = "confirmed"
    result["reason"] = f"{where} overlaps claimed {_fmt_range(lo, hi)}"
    return result


def check_claims(
    expected: Mapping[str, Sequence[float]],
    samples: Mapping[str, Sequence[float]],
    baseline_samples: Mapping[str, Sequence[float]],
) -> list[dict]:
    """check_claim for each entry of an `expected` block (save_pct, load_pct, size_pct).

    Unknown keys raise ValueError so a typo in the config is not silently
    ignored; a metric missing from the samples is judged with no runs
    (inconclusive: too few runs).
    """
    unknown = sorted(set(expected) - set(CLAIM_METRICS))
    if unknown:
        raise ValueError(f"unknown expected keys {unknown}; known: {sorted(CLAIM_METRICS)}")
    return [
        check_claim(CLAIM_METRICS[key], claimed,
                    samples.get(CLAIM_METRICS[key], []),
                    baseline_samples.get(CLAIM_METRICS[key], []))
        for key, claimed in expected.items()
    ]
