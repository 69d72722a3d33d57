"""The one analysis path: change, Fieller CI, Welch p, verdict and claim outcome (analysis.compare)."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import t as student_t

from ckptbench.analysis.change import CONFIRMED, CONTRADICTED, INCONCLUSIVE, NOT_PINNED, compare, fieller_change_ci_pct

BASE = [10.0, 10.1, 9.9, 10.2, 9.8]  # mean 10.0
FAST = [7.2, 7.4, 7.3, 7.5, 7.1]  # mean 7.3 -> -27 %


def _moments(x):
    n = len(x)
    m = sum(x) / n
    return m, sum((v - m) ** 2 for v in x) / (n - 1) / n, n  # mean, var of mean, n


def _welch_by_hand(a, b):
    """Independent Welch t-test: t statistic, Satterthwaite df, two-sided p."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1) / na
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1) / nb
    tstat = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return 2 * student_t.sf(abs(tstat), df)


# --- fieller_change_ci_pct ---------------------------------------------------------

def test_ci_endpoints_solve_fieller_equation():
    """Each end r of the CI satisfies (m1 - r m2)^2 = t^2 (v1 + r^2 v2)."""
    a, b = [9.0, 9.5, 10.0, 9.2, 9.8], [12.0, 12.5, 11.8, 12.2, 12.6, 12.1]
    m1, v1, n1 = _moments(a)
    m2, v2, n2 = _moments(b)
    q = m1 / m2
    var = v1 + q * q * v2
    df = var**2 / (v1**2 / (n1 - 1) + (q * q * v2) ** 2 / (n2 - 1))
    t = student_t.ppf(0.975, df)
    lo, hi = fieller_change_ci_pct(a, b)
    for pct in (lo, hi):
        r = 1 + pct / 100
        assert (m1 - r * m2) ** 2 == pytest.approx(t * t * (v1 + r * r * v2), rel=1e-9)
    assert lo < 100 * (q - 1) < hi


def test_ci_matches_delta_method_for_small_noise():
    rng = np.random.default_rng(1)
    a = list(80.0 + rng.normal(0, 0.05, 10))
    b = list(100.0 + rng.normal(0, 0.05, 10))
    m1, v1, _ = _moments(a)
    m2, v2, _ = _moments(b)
    q = m1 / m2
    se = q * math.sqrt(v1 / m1**2 + v2 / m2**2)
    lo, hi = fieller_change_ci_pct(a, b)
    half_pct = (hi - lo) / 2
    # Fieller centres on q / g with g slightly below 1, so only nearly symmetric.
    assert 100 * (q - 1) == pytest.approx((lo + hi) / 2, abs=1e-4)
    # t quantile lies between the normal one and that for the smallest df (9).
    assert 1.96 * 100 * se < half_pct < student_t.ppf(0.975, 9) * 100 * se


def test_ci_coverage_is_close_to_nominal():
    rng = np.random.default_rng(12345)
    true_pct = 100 * (8.0 / 10.0 - 1)
    trials, hits = 1000, 0
    for _ in range(trials):
        a = rng.normal(8.0, 0.8, 6)
        b = rng.normal(10.0, 0.3, 8)  # unequal variances and sizes
        lo, hi = fieller_change_ci_pct(a, b)
        hits += lo <= true_pct <= hi
    assert 0.93 <= hits / trials <= 0.97


def test_ci_edges():
    assert fieller_change_ci_pct([1.0], [1.0, 2.0]) is None
    assert fieller_change_ci_pct([1.0, 2.0], [3.0]) is None
    assert fieller_change_ci_pct([1.0, 2.0], [-1.0, 1.0]) is None  # baseline mean 0
    assert fieller_change_ci_pct([1.0, 2.0], [-1.0, 1.2, 0.1]) is None  # unbounded Fieller set
    assert fieller_change_ci_pct([3.0, 3.0], [4.0, 4.0, 4.0]) == pytest.approx((-25.0, -25.0))
    lo, hi = fieller_change_ci_pct([3.0, 3.0, 3.0], [3.9, 4.0, 4.1])  # only baseline noisy
    assert lo < -25.0 < hi


def test_ci_wider_at_higher_confidence():
    lo90, hi90 = fieller_change_ci_pct(FAST, BASE, confidence=0.90)
    lo99, hi99 = fieller_change_ci_pct(FAST, BASE, confidence=0.99)
    assert lo99 < lo90 and hi99 > hi90


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=2, max_size=12),
       st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=2, max_size=12))
def test_ci_contains_point_change(a, b):
    ci = fieller_change_ci_pct(a, b)
    point = compare(a, b)["change_pct"]
    if ci is None:
        return
    lo, hi = ci
    tol = 1e-9 * max(1.0, abs(point))
    assert lo - tol <= point <= hi + tol


# --- compare: change, ratio, p-value, verdict ----------------------------------

def test_compare_known_values_against_hand_welch():
    a, b = [9.0, 9.5, 10.0, 9.2, 9.8], [12.0, 12.5, 11.8, 12.2, 12.6]
    r = compare(a, b)
    ma, mb = sum(a) / 5, sum(b) / 5
    sa = math.sqrt(sum((x - ma) ** 2 for x in a) / 4)
    sb = math.sqrt(sum((x - mb) ** 2 for x in b) / 4)
    assert r["ratio"] == pytest.approx(ma / mb)
    assert r["change_pct"] == pytest.approx(100 * (ma / mb - 1))
    assert r["ratio_err"] == pytest.approx(ma / mb * math.hypot(sa / ma, sb / mb))
    assert r["p_value"] == pytest.approx(_welch_by_hand(a, b), rel=1e-9)
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
    assert r["p_value"] == pytest.approx(_welch_by_hand(a, b), rel=1e-9)
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


def test_claim_inconclusive_with_one_run_or_no_ci():
    r = _claim([7.3], BASE, (-30, -25))
    assert r["outcome"] == INCONCLUSIVE and r["reason"].startswith("too few runs") and r["ci_pct"] is None
    assert r["measured_pct"] == pytest.approx(-27.0)
    unbounded = _claim([1.0, 2.0], [-1.0, 1.2, 0.1], (-30, -25))
    assert unbounded["outcome"] == INCONCLUSIVE and "no finite" in unbounded["reason"]


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
