"""The one analysis path: change, its interval on the log scale, the p-value of the same test, verdict and claim
outcome (analysis.compare, analysis.change.ratio_interval)."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import t as student_t

from ckptbench.analysis.change import (
    CONFIRMED,
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_PINNED,
    TOO_FEW,
    compare,
    ratio_interval,
    ratio_words,
)

BASE = [10.0, 10.1, 9.9, 10.2, 9.8]  # mean 10.0
FAST = [7.2, 7.4, 7.3, 7.5, 7.1]  # mean 7.3 -> -27 %


def _moments(x):
    n = len(x)
    m = sum(x) / n
    return m, sum((v - m) ** 2 for v in x) / (n - 1) / n, n  # mean, var of mean, n


def _log_delta_by_hand(a, b, confidence=0.95):
    """Independently: the delta method on log(mean_a / mean_b), Welch-Satterthwaite df: (low, high) of the ratio
    and the two-sided p of the same t statistic."""
    (ma, va, na), (mb, vb, nb) = _moments(a), _moments(b)
    ua, ub = va / ma**2, vb / mb**2  # var(log mean) = var(mean) / mean^2
    se = math.sqrt(ua + ub)
    df = (ua + ub) ** 2 / (ua**2 / (na - 1) + ub**2 / (nb - 1))
    t = student_t.ppf(0.5 + confidence / 2, df)
    log_ratio = math.log(ma / mb)
    return math.exp(log_ratio - t * se), math.exp(log_ratio + t * se), 2 * student_t.sf(abs(log_ratio) / se, df)


# --- ratio_interval: the one interval of a change ------------------------------------

def test_interval_is_the_delta_method_on_the_log_ratio():
    a, b = [9.0, 9.5, 10.0, 9.2, 9.8], [12.0, 12.5, 11.8, 12.2, 12.6, 12.1]
    found = ratio_interval(a, b)
    low, high, p = _log_delta_by_hand(a, b)
    assert found.status == "ok"
    assert (found.low, found.high) == pytest.approx((low, high), rel=1e-9)
    assert found.p_value == pytest.approx(p, rel=1e-9)
    assert math.sqrt(found.low * found.high) == pytest.approx(found.ratio)  # the ratio at its geometric centre
    assert found.change_pct == pytest.approx([100 * (low - 1), 100 * (high - 1)])


def test_a_noisy_change_stays_above_minus_100_percent():
    """The issue's case: 3 runs with a CV above 50 % gave Fieller intervals below -100 % (or none)."""
    noisy_base = [13.0, 2.5, 27.7]  # CV 91 %
    fast = [0.63, 0.9, 0.4]
    comparison = compare(fast, noisy_base)
    low, high = comparison["change_ci95_pct"]
    assert -100 < low < comparison["change_pct"] < high
    lo_r, hi_r = comparison["ratio_ci95"]
    assert 0 < lo_r < comparison["ratio"] < hi_r


def test_ci_coverage_is_close_to_nominal():
    rng = np.random.default_rng(12345)
    true_pct = 100 * (8.0 / 10.0 - 1)
    trials, hits = 1000, 0
    for _ in range(trials):
        a = rng.normal(8.0, 0.8, 6)
        b = rng.normal(10.0, 0.3, 8)  # unequal variances and sizes
        lo, hi = ratio_interval(a, b).change_pct
        hits += lo <= true_pct <= hi
    assert 0.93 <= hits / trials <= 0.97


def test_ci_edges():
    assert ratio_interval([1.0], [1.0, 2.0, 3.0]).status == "insufficient data"
    assert ratio_interval([1.0, 2.0, 3.0], []).status == "insufficient data"
    assert ratio_interval([1.0, 2.0, 3.0], [-1.0, 1.0, 0.0]).status == "insufficient data"  # baseline mean 0
    two = ratio_interval([1.0, 2.0], [3.0, 3.5, 4.0])
    assert two.status == TOO_FEW and two.low is None and two.p_value is None and two.ratio == pytest.approx(1.5 / 3.5)
    exact = ratio_interval([3.0, 3.0], [4.0, 4.0, 4.0])  # no spread: exact even with 2 runs
    assert exact.status == "exact" and exact.change_pct == pytest.approx([-25.0, -25.0]) and exact.p_value == 0.0
    lo, hi = ratio_interval([3.0, 3.0, 3.0], [3.9, 4.0, 4.1]).change_pct  # only the baseline noisy
    assert lo < -25.0 < hi


def test_ci_wider_at_higher_confidence():
    lo90, hi90 = ratio_interval(FAST, BASE, confidence=0.90).change_pct
    lo99, hi99 = ratio_interval(FAST, BASE, confidence=0.99).change_pct
    assert lo99 < lo90 and hi99 > hi90


positive = st.floats(min_value=1e-3, max_value=1e3)


@settings(max_examples=200, deadline=None)
@given(st.lists(positive, min_size=2, max_size=12), st.lists(positive, min_size=2, max_size=12))
def test_the_interval_holds_the_change_never_reaches_minus_100_and_agrees_with_the_verdict(a, b):
    comparison = compare(a, b, noise_pct=0.0)
    point, ci = comparison["change_pct"], comparison["change_ci95_pct"]
    if min(len(a), len(b)) < 3 and (max(a) != min(a) or max(b) != min(b)):
        assert ci is None and comparison["verdict"] == TOO_FEW and comparison["p_value"] is None
        return
    lo, hi = ci
    tol = 1e-9 * max(1.0, abs(point))
    assert -100 < lo and lo - tol <= point <= hi + tol
    excludes_zero = lo > 0 or hi < 0
    assert comparison["significant"] == (comparison["p_value"] < 0.05)
    if lo != hi:  # the same t statistic: a CI excluding 0 exactly when the change is significant
        assert excludes_zero == comparison["significant"] or abs(lo) < 1e-6 or abs(hi) < 1e-6
    assert (comparison["verdict"] in ("faster", "slower")) == (comparison["significant"] and point != 0)


# --- compare: change, ratio, p-value, verdict ----------------------------------

def test_compare_known_values_against_the_log_scale_test_by_hand():
    a, b = [9.0, 9.5, 10.0, 9.2, 9.8], [12.0, 12.5, 11.8, 12.2, 12.6]
    r = compare(a, b)
    ma, mb = sum(a) / 5, sum(b) / 5
    sa = math.sqrt(sum((x - ma) ** 2 for x in a) / 4)
    sb = math.sqrt(sum((x - mb) ** 2 for x in b) / 4)
    assert r["ratio"] == pytest.approx(ma / mb)
    assert r["change_pct"] == pytest.approx(100 * (ma / mb - 1))
    assert r["ratio_err"] == pytest.approx(ma / mb * math.hypot(sa / ma, sb / mb))
    low, high, p = _log_delta_by_hand(a, b)
    assert r["p_value"] == pytest.approx(p, rel=1e-9)
    assert r["ratio_ci95"] == pytest.approx([low, high], rel=1e-9)
    assert r["verdict"] == "faster" and r["significant"] is True
    assert r["weak_test"] is False and r["alpha"] == 0.05


def test_compare_identical_samples():
    r = compare([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert r["change_pct"] == 0.0 and r["ratio"] == 1.0
    assert r["p_value"] == pytest.approx(1.0)
    assert r["verdict"] == "within noise" and r["significant"] is False


def test_compare_one_run_is_insufficient():
    r = compare([5.0], [10.0, 10.1, 9.9])
    assert r["verdict"] == "insufficient data"
    assert r["p_value"] is None and r["ratio_err"] is None
    assert r["change_pct"] == pytest.approx(-50.0)  # point estimate still reported
    assert r["weak_test"] is True and r["significant"] is False


def test_compare_empty_side():
    r = compare([], [1.0, 2.0])
    assert r["verdict"] == "insufficient data" and r["change_pct"] is None


def test_compare_zero_variance_both_sides():
    differ = compare([2.0] * 3, [3.0] * 3)
    assert differ["p_value"] == 0.0 and differ["verdict"] == "faster"
    assert differ["ratio_err"] == 0.0
    same = compare([3.0] * 3, [3.0] * 3)
    assert same["p_value"] == 1.0 and same["verdict"] == "within noise"


def test_compare_zero_variance_one_side():
    a, b = [10.0] * 5, [11.0, 12.0, 13.0, 11.0, 12.0]
    r = compare(a, b)
    assert r["p_value"] == pytest.approx(_log_delta_by_hand(a, b)[2], rel=1e-9)
    assert r["verdict"] == "faster"


def test_compare_huge_variance_is_not_significant():
    r = compare([1.0, 50.0, 3.0, 90.0, 2.0], [10.0, 12.0, 9.0, 11.0, 10.0])
    assert abs(r["change_pct"]) > 5.0
    assert r["p_value"] > 0.05
    assert r["verdict"] == "no significant difference"


def test_compare_significant_but_within_noise():
    a = [100.0, 100.1, 99.9, 100.0, 100.05, 99.95]
    b = [102.0, 102.1, 101.9, 102.0, 102.05, 101.95]
    r = compare(a, b)
    assert r["significant"] is True and r["p_value"] < 1e-6
    assert r["verdict"] == "within noise"
    # The same data with a tighter noise threshold gets a real verdict.
    assert compare(a, b, noise_pct=1.0)["verdict"] == "faster"


def test_compare_words_follow_the_metric():
    assert compare([50.0, 50.0], [100.0, 100.0], metric="size_bytes")["verdict"] == "smaller"
    assert compare([150.0, 150.0], [100.0, 100.0], metric="size_bytes")["verdict"] == "larger"
    assert compare([20.0, 20.5, 19.5], [10.0, 10.5, 9.5], metric="load_s")["verdict"] == "slower"


def test_compare_zero_baseline_mean():
    r = compare([1.0, 2.0, 3.0], [-1.0, 1.0, 0.0])
    assert r["change_pct"] is None and r["ratio"] is None
    assert r["verdict"] == "insufficient data"


def test_weak_test_boundary():
    assert compare([1, 2, 3, 4], [1, 2, 3, 4, 5])["weak_test"] is True
    assert compare([1, 2, 3, 4, 5], [1, 2, 3, 4, 5])["weak_test"] is False


# --- claims: four outcomes ------------------------------------------------------

def _claim(values, baseline, claimed, metric="save_s", noise_pct=5.0):
    return compare(values, baseline, metric=metric, noise_pct=noise_pct, claimed_pct=claimed)["claim"]


def test_claim_confirmed_when_the_ci_lies_within_the_widened_band():
    r = _claim(FAST, BASE, (-30, -25))
    lo, hi = r["ci_pct"]
    assert -35 <= lo and hi <= -20  # the band widened by the 5 % noise threshold
    assert r["outcome"] == CONFIRMED
    assert r["band_pct"] == [-35.0, -20.0] and r["claimed_pct"] == [-30.0, -25.0]
    assert r["measured_pct"] == pytest.approx(-27.0)
    assert json.loads(json.dumps(r)) == r


def test_claim_range_order_does_not_matter():
    assert _claim(FAST, BASE, (-25, -30))["claimed_pct"] == [-30.0, -25.0]
    assert _claim(FAST, BASE, (-25, -30))["outcome"] == CONFIRMED


def test_claim_contradicted_when_the_ci_lies_wholly_outside():
    slightly_faster = [9.0, 9.1, 8.9, 9.05, 8.95]  # -10 %, tight CI
    r = _claim(slightly_faster, BASE, (-30, -25))
    assert r["outcome"] == CONTRADICTED and r["ci_pct"][0] > -20 and "above" in r["reason"]
    slower = [12.0, 12.1, 11.9, 12.05, 11.95]
    assert _claim(slower, BASE, (-30, -25), metric="load_s")["outcome"] == CONTRADICTED


def test_a_wide_ci_that_overlaps_the_band_is_not_pinned_down():
    """The case the old rule called confirmed: +43 % [+8, +87] against a claimed +5..+10 %."""
    base = [5.0, 4.2, 5.8]
    gzip = [7.4, 5.9, 8.1]
    comparison = compare(gzip, base, claimed_pct=(5, 10))
    lo, hi = comparison["change_ci95_pct"]
    assert lo < 15 and hi > 0 and hi - lo > 15  # overlaps the widened band [0, 15], wider than it
    assert comparison["claim"]["outcome"] == NOT_PINNED
    assert "more runs" in comparison["claim"]["reason"]


def test_a_narrow_ci_straddling_an_edge_is_inconclusive():
    base = [10.0, 10.02, 9.98, 10.01, 9.99, 10.0]
    near_edge = [8.0, 8.03, 7.97, 8.01, 7.99, 8.0]  # -20 %, CI about +-0.3 %: straddles the widened edge -20
    r = _claim(near_edge, base, (-30, -25))
    assert r["ci_pct"][0] < -20 < r["ci_pct"][1]
    assert r["outcome"] == INCONCLUSIVE and "edge" in r["reason"]


def test_sizes_are_exact_and_are_not_widened():
    same = [100.0, 100.0, 100.0]
    smaller = [93.0, 93.0, 93.0]  # -7 %: just outside a claimed -2..-5 %, which widening would swallow
    r = _claim(smaller, same, (-5, -2), metric="size_bytes")
    assert r["band_pct"] == [-5.0, -2.0]
    assert r["outcome"] == CONTRADICTED
    assert _claim([97.0] * 3, same, (-5, -2), metric="size_bytes")["outcome"] == CONFIRMED


def test_claim_inconclusive_with_one_or_two_runs_or_no_ci():
    r = _claim([7.3], BASE, (-30, -25))
    assert r["outcome"] == INCONCLUSIVE and r["reason"].startswith("too few runs") and r["ci_pct"] is None
    assert r["measured_pct"] == pytest.approx(-27.0)
    two = _claim([7.2, 7.4], BASE, (-30, -25))
    assert two["outcome"] == INCONCLUSIVE and two["reason"].startswith("too few runs") and two["ci_pct"] is None
    no_mean = _claim([1.0, 2.0, 3.0], [-1.0, 1.0, 0.0], (-30, -25))  # a baseline mean of 0: no ratio at all
    assert no_mean["outcome"] == INCONCLUSIVE and "no confidence interval" in no_mean["reason"]


def test_claim_bad_range_rejected():
    with pytest.raises(ValueError):
        compare(FAST, BASE, claimed_pct=(-30,))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.1, max_value=100), min_size=2, max_size=8),
       st.lists(st.floats(min_value=0.1, max_value=100), min_size=2, max_size=8),
       st.floats(min_value=-90, max_value=90), st.floats(min_value=0, max_value=50))
def test_claim_outcomes_follow_their_definitions(values, baseline, low, width):
    claim = _claim(values, baseline, (low, low + width))
    ci, (band_lo, band_hi) = claim["ci_pct"], claim["band_pct"]
    if ci is None:
        assert claim["outcome"] == INCONCLUSIVE
        return
    inside = band_lo <= ci[0] and ci[1] <= band_hi
    outside = ci[1] < band_lo or ci[0] > band_hi
    expected = (CONFIRMED if inside else CONTRADICTED if outside
                else NOT_PINNED if ci[1] - ci[0] > band_hi - band_lo else INCONCLUSIVE)
    assert claim["outcome"] == expected


# --- the comparison in words ------------------------------------------------------

def test_ratio_words_name_the_other_row_with_the_interval_and_the_verdict():
    slower = compare([1.2, 1.25, 1.15, 1.22], [1.0, 1.02, 0.98, 1.01], metric="load_s")
    assert ratio_words(slower, "runai_streamer", "load_s") == "1.2x slower than runai_streamer (95% CI 1.1-1.3x)"
    faster = compare([0.5, 0.55, 0.45], [1.0, 1.1, 0.9])
    assert ratio_words(faster, "baseline").startswith("2.0x faster than baseline (95% CI 1.6-2.5x")
    unclear = compare([1.0, 1.5, 0.7], [1.0, 1.1, 0.9])
    assert ratio_words(unclear, "x").endswith("not significant)")
    assert ratio_words(compare([1.2, 1.25], [1.0, 1.1]), "x") == "1.2x slower than x (too few runs for a CI)"
    size = compare([50.0, 50.0], [100.0, 100.0], metric="size_bytes")
    assert ratio_words(size, "baseline", "size_bytes") == "0.50x the size of baseline (exact)"
    # gzip's sizes of one checkpoint differing by some bytes in 5.4 GB (open_llama_3b): no interval of equal ends
    gzip = compare([5395224460.0, 5395224596.0, 5395224574.0], [6853008871.0] * 3, metric="size_bytes")
    assert ratio_words(gzip, "baseline", "size_bytes") == "0.79x the size of baseline (the same to 4 digits in every run)"
