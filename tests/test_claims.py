import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import t as student_t

from ckptbench.claims import change_ci_pct, check_claim, check_claims

BASE = [10.0, 10.1, 9.9, 10.2, 9.8]  # mean 10.0
FAST = [7.2, 7.4, 7.3, 7.5, 7.1]  # mean 7.3 -> -27 %


def _moments(x):
    n = len(x)
    m = sum(x) / n
    return m, sum((v - m) ** 2 for v in x) / (n - 1) / n, n  # mean, var of mean, n


# --- change_ci_pct ---------------------------------------------------------

def test_ci_endpoints_solve_fieller_equation():
    """Each end r of the CI satisfies (m1 - r m2)^2 = t^2 (v1 + r^2 v2)."""
    a, b = [9.0, 9.5, 10.0, 9.2, 9.8], [12.0, 12.5, 11.8, 12.2, 12.6, 12.1]
    m1, v1, n1 = _moments(a)
    m2, v2, n2 = _moments(b)
    q = m1 / m2
    var = v1 + q * q * v2
    df = var**2 / (v1**2 / (n1 - 1) + (q * q * v2) ** 2 / (n2 - 1))
    t = student_t.ppf(0.975, df)
    lo, hi = change_ci_pct(a, b)
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
    lo, hi = change_ci_pct(a, b)
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
        lo, hi = change_ci_pct(a, b)
        hits += lo <= true_pct <= hi
    assert 0.93 <= hits / trials <= 0.97


def test_ci_edges():
    assert change_ci_pct([1.0], [1.0, 2.0]) is None
    assert change_ci_pct([1.0, 2.0], [3.0]) is None
    assert change_ci_pct([1.0, 2.0], [-1.0, 1.0]) is None  # baseline mean 0
    assert change_ci_pct([1.0, 2.0], [-1.0, 1.2, 0.1]) is None  # unbounded Fieller set
    assert change_ci_pct([3.0, 3.0], [4.0, 4.0, 4.0]) == pytest.approx((-25.0, -25.0))
    lo, hi = change_ci_pct([3.0, 3.0, 3.0], [3.9, 4.0, 4.1])  # only baseline noisy
    assert lo < -25.0 < hi


def test_ci_wider_at_higher_confidence():
    lo90, hi90 = change_ci_pct(FAST, BASE, confidence=0.90)
    lo99, hi99 = change_ci_pct(FAST, BASE, confidence=0.99)
    assert lo99 < lo90 and hi99 > hi90


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=2, max_size=12),
       st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=2, max_size=12))
def test_ci_contains_point_change(a, b):
    ci = change_ci_pct(a, b)
    point = check_claim("x", (0, 1), a, b)["measured_pct"]
    if ci is None:
        return
    lo, hi = ci
    tol = 1e-9 * max(1.0, abs(point))
    assert lo - tol <= point <= hi + tol


# --- check_claim -----------------------------------------------------------

def test_claim_confirmed():
    r = check_claim("save_s", (-30, -25), FAST, BASE)
    assert r["outcome"] == "confirmed"
    assert r["measured_pct"] == pytest.approx(-27.0)
    lo, hi = r["ci_pct"]
    assert lo < -27.0 < hi and lo <= -25 and hi >= -30
    assert r["claimed_pct"] == [-30.0, -25.0] and r["metric"] == "save_s"
    assert json.loads(json.dumps(r)) == r


def test_claim_range_order_does_not_matter():
    assert check_claim("save_s", (-25, -30), FAST, BASE)["claimed_pct"] == [-30.0, -25.0]
    assert check_claim("save_s", (-25, -30), FAST, BASE)["outcome"] == "confirmed"


def test_claim_contradicted_by_smaller_gain():
    slightly_faster = [9.0, 9.1, 8.9, 9.05, 8.95]  # -10 %, tight CI
    r = check_claim("save_s", (-30, -25), slightly_faster, BASE)
    assert r["outcome"] == "contradicted"
    assert r["ci_pct"][0] > -25
    assert "above" in r["reason"]


def test_claim_contradicted_by_wrong_direction():
    slower = [12.0, 12.1, 11.9, 12.05, 11.95]
    r = check_claim("load_s", (-30, -25), slower, BASE)
    assert r["outcome"] == "contradicted"
    assert r["measured_pct"] > 0


def test_claim_inconclusive_by_direction():
    # Very noisy: CI reaches into the claimed range, but the point change is positive.
    noisy = [5.0, 18.0, 9.0, 14.0, 6.0]  # mean 10.4 -> +4 %
    r = check_claim("save_s", (-30, -25), noisy, BASE)
    assert r["ci_pct"][0] <= -25
    assert r["measured_pct"] > 0
    assert r["outcome"] == "inconclusive"
    assert "claimed sign" in r["reason"]


def test_claim_straddling_zero_accepts_either_direction():
    # Same noisy data: a "-5..+5 %" (no change) claim is consistent with it.
    noisy = [5.0, 18.0, 9.0, 14.0, 6.0]
    assert check_claim("size_bytes", (-5, 5), noisy, BASE)["outcome"] == "confirmed"
    noisy_down = [4.0, 17.0, 8.0, 13.0, 5.0]
    assert check_claim("size_bytes", (-5, 5), noisy_down, BASE)["outcome"] == "confirmed"


def test_claim_with_a_direction_is_not_confirmed_by_an_interval_that_includes_zero():
    noisy_down = [4.0, 17.0, 8.0, 13.0, 5.0]  # mean 9.4 -> -6 %, CI spans 0
    r = check_claim("save_s", (-30, -25), noisy_down, BASE)
    assert r["outcome"] == "inconclusive"
    assert "includes 0" in r["reason"]
    assert check_claim("save_s", (-30, -25), FAST, BASE)["outcome"] in ("confirmed", "contradicted")
    assert "includes 0" not in check_claim("save_s", (-30, -25), FAST, BASE)["reason"]


def test_claim_inconclusive_with_one_run():
    r = check_claim("save_s", (-30, -25), [7.3], BASE)
    assert r["outcome"] == "inconclusive"
    assert r["reason"].startswith("too few runs")
    assert r["ci_pct"] is None
    assert r["measured_pct"] == pytest.approx(-27.0)


def test_claim_bad_range_rejected():
    with pytest.raises(ValueError):
        check_claim("save_s", (-30,), FAST, BASE)


# --- check_claims ----------------------------------------------------------

def test_check_claims_maps_keys_to_metrics():
    expected = {"save_pct": [-30, -25], "size_pct": [-5, 5], "load_pct": [-50, -40]}
    samples = {"save_s": FAST, "size_bytes": [100.0, 100.0], "load_s": [5.0]}
    base = {"save_s": BASE, "size_bytes": [100.0, 100.0], "load_s": BASE}
    results = check_claims(expected, samples, base)
    assert [r["metric"] for r in results] == ["save_s", "size_bytes", "load_s"]
    assert [r["outcome"] for r in results] == ["confirmed", "confirmed", "inconclusive"]
    assert results[1]["ci_pct"] == [0.0, 0.0]


def test_check_claims_missing_samples_and_unknown_keys():
    results = check_claims({"load_pct": [-10, -5]}, {}, {"load_s": BASE})
    assert results[0]["outcome"] == "inconclusive"
    assert results[0]["reason"].startswith("too few runs")
    with pytest.raises(ValueError, match="save_pc"):
        check_claims({"save_pc": [-30, -25]}, {}, {})
