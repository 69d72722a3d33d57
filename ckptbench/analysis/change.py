"""Two samples in, one judgement out: the only place where a change is measured and judged.

Every caller (a suite's tables, the answer, the claims check, `compare`, `tune`, docs/explain/explain.py) goes through
`compare`, so they can never disagree. The interval, and the t statistic the verdict's significance comes from, are
`ratio_interval`'s; the method and the claim outcomes (`judge_claim`: a time's claimed range is first widened by the
noise threshold, so a claim of -25..-30 % is not refuted by -31 % on a disk whose runs differ by 10 %) are
PHASE4_GUIDE.md's section 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ckptbench.analysis.stats import ALPHA, CI_MIN_RUNS, Floats, as_floats, mean_std, t_quantile

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
TOO_FEW = "too few runs"
MIN_RUNS_FOR_CI = CI_MIN_RUNS  # per side; two runs give one degree of freedom or two: no meaningful interval


@dataclass(frozen=True)
class RatioInterval:
    """`ratio_interval`'s answer: the ratio of means, its interval and the test behind both; `status` "ok", "exact" (no
    spread on either side), "too few runs" or "insufficient data" (no runs, or a mean that is not positive)."""

    status: str
    ratio: float | None = None
    low: float | None = None  # the ratio's interval
    high: float | None = None
    p_value: float | None = None

    @property
    def change_pct(self) -> list[float] | None:
        """The interval as a change in % of the baseline: inside (-100 %, +inf)."""
        return None if self.low is None or self.high is None else [100.0 * (self.low - 1.0), 100.0 * (self.high - 1.0)]


def ratio_interval(values: Floats, baseline: Floats, confidence: float = 0.95,
                   min_runs: int = MIN_RUNS_FOR_CI) -> RatioInterval:
    """The interval of mean(values) / mean(baseline), computed on the log scale: the one method of the harness (the
    delta method, and why: PHASE4_GUIDE.md, section 5). No interval with fewer than `min_runs` runs on a side, but
    samples without spread (sizes) are exact."""
    a, b = as_floats(values), as_floats(baseline)
    if a.size == 0 or b.size == 0:
        return RatioInterval(INSUFFICIENT)
    m_a, s_a = mean_std(a)
    m_b, s_b = mean_std(b)
    if not (m_a > 0.0 and m_b > 0.0 and math.isfinite(m_a) and math.isfinite(m_b)):
        return RatioInterval(INSUFFICIENT)
    ratio = m_a / m_b
    if s_a is None or s_b is None:
        return RatioInterval(INSUFFICIENT, ratio)
    if s_a == 0.0 and s_b == 0.0:
        return RatioInterval("exact", ratio, ratio, ratio, 0.0 if m_a != m_b else 1.0)
    if min(a.size, b.size) < min_runs:
        return RatioInterval(TOO_FEW, ratio)
    u_a = (s_a / m_a) ** 2 / a.size  # the variance of log(mean), by the delta method
    u_b = (s_b / m_b) ** 2 / b.size
    variance = u_a + u_b
    se = math.sqrt(variance)
    df = variance * variance / (u_a * u_a / (a.size - 1) + u_b * u_b / (b.size - 1))
    log_ratio = math.log(m_a) - math.log(m_b)  # not log(ratio): the quotient may underflow
    t = float(t_quantile(0.5 + confidence / 2.0, df))
    low, high = math.exp(log_ratio - t * se), math.exp(log_ratio + t * se)
    from scipy.special import stdtr  # Student's t CDF (see stats.t_quantile on why not scipy.stats)

    p = float(2.0 * stdtr(df, -abs(log_ratio / se)))
    return RatioInterval("ok", ratio, low, high, 1.0 if math.isnan(p) else min(1.0, p))


def compare(values: Sequence[float], baseline: Sequence[float], *, metric: str = "save_s", noise_pct: float = 5.0,
            claimed_pct: Sequence[float] | None = None, min_runs: int = MIN_RUNS_FOR_CI) -> dict[str, Any]:
    """Judge `values` against `baseline` (both raw runs of one metric); see the module docstring. The verdict: the
    interval's status where it has no test, "within noise" (|change| < noise_pct, even if significant), "no significant
    difference", else the metric's better/worse word. `min_runs`: a decision between two samples (tune's) passes 2:
    Welch's test is defined there, and a wide interval still separates runs that lie far apart."""
    noisy = METRICS[metric][3]
    a, b = as_floats(values), as_floats(baseline)
    found = ratio_interval(a, b, 1.0 - ALPHA, min_runs)
    out: dict[str, Any] = {"change_pct": None, "change_ci95_pct": found.change_pct, "ratio": found.ratio,
                           "ratio_ci95": None if found.low is None else [found.low, found.high],
                           "ratio_err": None, "p_value": found.p_value, "verdict": found.status,
                           "significant": False, "weak_test": min(a.size, b.size) < 5, "alpha": ALPHA}
    if found.ratio is not None:
        out["change_pct"] = 100.0 * (found.ratio - 1.0)
        (_, s_a), (m_b, s_b) = mean_std(a), mean_std(b)
        if s_a is not None and s_b is not None:
            # hyperfine's spread of the ratio, ratio * sqrt((s1/m1)^2 + (s2/m2)^2): a dispersion, not an interval
            out["ratio_err"] = math.hypot(s_a, found.ratio * s_b) / m_b
    if found.p_value is not None:
        out["significant"] = found.p_value < ALPHA
        out["verdict"] = _verdict(out, noise_pct, metric)
    if claimed_pct is not None:
        out["claim"] = judge_claim(metric, claimed_pct, out, noise_pct if noisy else 0.0, a.size, b.size)
    return out


def _verdict(out: dict[str, Any], noise_pct: float, metric: str) -> str:
    higher_is_better, better_word, worse_word, _ = METRICS[metric]
    change = out["change_pct"]
    if abs(change) < noise_pct:
        return WITHIN_NOISE
    if out["p_value"] >= ALPHA:
        return NOT_SIGNIFICANT
    return better_word if (change > 0) == higher_is_better else worse_word


def ratio_words(comparison: dict[str, Any] | None, other: str, metric: str = "save_s", ci_label: str = "95% CI ",
                note: str = "") -> str:
    """A comparison of A with B in words, as a ratio >= 1: '1.2x slower than B (95% CI 1.1-1.3x)'. From the comparison's
    own verdict and interval: "not significant" or "within noise" when the test says so, "too few runs" when there is no
    interval, "exact" for a ratio without spread. `ci_label` starts the interval (empty where a heading says what it
    is); `note` starts the parenthesis (e.g. "peer")."""
    if not comparison or comparison.get("ratio") is None:
        return f"not compared with {other} (no runs)"
    higher_is_better, better, worse, _ = METRICS.get(metric, METRICS["save_s"])
    ratio = comparison["ratio"]
    interval = comparison.get("ratio_ci95")
    if ratio == 1.0:
        head = f"the same as {other}"
    elif metric == "size_bytes":
        head = f"{ratio_text(ratio)} the size of {other}"
    else:
        less = ratio < 1.0
        word = better if less != higher_is_better else worse
        head = f"{ratio_text(1 / ratio if less else ratio)} {word} than {other}"
    verdict = comparison.get("verdict")
    lead = f" ({note}; " if note else " ("
    if interval is None:
        if verdict in (TOO_FEW, INSUFFICIENT):
            return head + lead + "too few runs for a CI)"
        return head + (f" ({note})" if note else "")
    low, high = interval
    if low == high:
        return head + lead + "exact)"
    if ratio < 1.0 and metric != "size_bytes":
        low, high = 1 / high, 1 / low
    shown = range_text(low, high)
    if shown is None:  # a spread of bytes in a gzip stream, say: equal to 4 digits
        return head + lead + "the same to 4 digits in every run)"
    text = f"{head}{lead}{ci_label}{shown}"
    if verdict == NOT_SIGNIFICANT or not comparison.get("significant"):
        text += ", not significant"
    elif verdict == WITHIN_NOISE:
        text += ", within noise"
    return text + ")"


def range_text(low: float, high: float) -> str | None:
    """'1.1-1.3x', with the digits (up to 4) a narrow range needs to show both ends; None if equal even then."""
    digits = 2
    while ratio_text(low, digits) == ratio_text(high, digits) and digits < 4:
        digits += 1
    if ratio_text(low, digits) == ratio_text(high, digits):
        return None
    return f"{ratio_text(low, digits)[:-1]}-{ratio_text(high, digits)}"


def ratio_text(value: float, digits: int = 2) -> str:
    """A ratio with two significant digits (more when asked), whole from 10 up: 1.2x, 0.95x, 21x."""
    if value >= 10 ** (digits - 1) - 0.05:
        return f"{value:.0f}x"
    return f"{value:#.{digits}g}x"


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
    if ci is None:
        if comparison.get("verdict") == TOO_FEW or n_values < 2 or n_baseline < 2:
            claim["reason"] = (f"too few runs ({n_values} measured, {n_baseline} baseline; need >= "
                               f"{MIN_RUNS_FOR_CI} each for a confidence interval)")
        else:
            claim["reason"] = "no confidence interval: a mean is not positive"
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


def verdict_direction(comparison: Mapping[str, Any]) -> str | None:
    """A verdict reduced to its direction: the metric's better or worse word, "same" (within noise or not
    significant), or None when there is no test (too few runs, no data)."""
    verdict = comparison.get("verdict")
    if verdict in (WITHIN_NOISE, NOT_SIGNIFICANT):
        return "same"
    return None if verdict in (TOO_FEW, INSUFFICIENT, None) else verdict


def blocks_disagree(comparisons: Sequence[dict[str, Any]]) -> str | None:
    """How the comparisons of the same two tests in separate blocks of rounds disagree, or None: their verdicts point
    different ways (slower in one, the same or faster in another), or two of their intervals do not overlap. Each
    block's interval is conditional on that block's machine state, so such blocks give no one verdict."""
    directions = {d for d in (verdict_direction(c) for c in comparisons) if d is not None}
    if len(directions) > 1:
        return "their verdicts differ"
    intervals = [c["ratio_ci95"] for c in comparisons if c.get("ratio_ci95")]
    if any(a[1] < b[0] or b[1] < a[0] for i, a in enumerate(intervals) for b in intervals[i + 1:]):
        return "their intervals do not overlap"
    return None
