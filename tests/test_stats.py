import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import t as student_t

from ckptbench.analysis.stats import (
    modified_z_scores,
    outlier_indices,
    runs_needed,
    summarize,
    warnings_for,
)

T975_DF3 = 3.1824463052837078  # scipy.stats.t.ppf(0.975, 3), also in printed t tables


# --- summarize -------------------------------------------------------------

def test_summarize_known_sample():
    s = summarize([4, 1, 3, 2])
    std = math.sqrt(5 / 3)
    half = T975_DF3 * std / 2  # s / sqrt(4)
    assert s["n"] == 4
    assert s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(std)
    assert s["median"] == pytest.approx(2.5)
    assert (s["min"], s["max"]) == (1.0, 4.0)
    assert s["cv"] == pytest.approx(std / 2.5)
    half_log = half / 2.5  # positive values: the interval on the log scale, t * cv / sqrt(n) either side
    assert s["ci95"] == pytest.approx([2.5 * math.exp(-half_log), 2.5 * math.exp(half_log)])
    assert s["ci95"] == pytest.approx([1.09920, 5.68593], abs=1e-5)


def test_summarize_returns_plain_json_types():
    s = summarize([1.5, 2.5, 3.5])
    for key, val in s.items():
        if key == "ci95":
            assert all(type(x) is float for x in val)
        elif key == "n":
            assert type(val) is int
        else:
            assert type(val) is float, key
    assert json.loads(json.dumps(s)) == s


def test_summarize_empty():
    s = summarize([])
    assert s["n"] == 0
    assert all(v is None for k, v in s.items() if k != "n")
    assert set(s) == {"n", "mean", "std", "median", "min", "max", "cv", "ci95"}


def test_summarize_single_value():
    s = summarize([7.0])
    assert s["n"] == 1 and s["mean"] == 7.0 and s["median"] == 7.0
    assert s["std"] is None and s["cv"] is None and s["ci95"] is None


def test_summarize_zero_variance_is_exact():
    s = summarize([0.1, 0.1, 0.1])
    assert s["mean"] == 0.1  # not 0.10000000000000002
    assert s["std"] == 0.0 and s["cv"] == 0.0
    assert s["ci95"] == [0.1, 0.1]


def test_a_positive_quantitys_ci_is_on_the_log_scale_and_never_reaches_zero():
    """ci95 of positive values: the mean's interval on the log scale, mean * exp(+- t * cv / sqrt(n)) (the delta
    method, as every change's interval), so it cannot reach zero and the mean is its geometric centre."""
    values = [0.3, 4.0, 1.1]  # so noisy that the symmetric Student-t interval would reach below zero
    mean = sum(values) / 3
    assert mean - T975_DF2 * statistics_stdev(values) / math.sqrt(3) < 0
    low, high = summarize(values)["ci95"]
    assert 0 < low < mean < high
    assert math.sqrt(low * high) == pytest.approx(mean)
    half = T975_DF2 * statistics_stdev(values) / mean / math.sqrt(3)
    assert (low, high) == pytest.approx((mean * math.exp(-half), mean * math.exp(half)))
    assert summarize([2.0])["ci95"] is None
    assert summarize([1.0, 2.0])["ci95"] is None  # two runs: too few for an interval
    assert summarize([0.1, 0.1, 0.1])["ci95"] == [0.1, 0.1]


def test_a_ci_of_values_not_all_positive_is_student_t_cut_at_zero_where_none_is_negative():
    """A 0 among the values (a memory growth of 0, a CPU time under the clock's tick): no log scale; the
    Student-t interval, its lower end cut at 0, since the mean of values that are never negative is not; values
    that can be negative keep the whole interval."""
    half = T975_DF2 * 1.0 / math.sqrt(3)  # [0, 1, 2]: mean 1, std 1
    assert summarize([0.0, 1.0, 2.0])["ci95"] == pytest.approx([0.0, 1.0 + half])
    assert summarize([-1.0, 1.0, 3.0])["ci95"] == pytest.approx([1.0 - 2 * half, 1.0 + 2 * half])
    assert summarize([-1.0, 1.0, 3.0])["ci95"][0] < 0
    assert summarize([0.0, 1.0])["ci95"] is None and summarize([0.0, 0.0, 0.0])["ci95"] == [0.0, 0.0]


def statistics_stdev(values):
    import statistics

    return statistics.stdev(values)


T975_DF2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)


def test_summarize_zero_mean_has_no_cv():
    s = summarize([-1.0, 1.0])
    assert s["mean"] == 0.0 and s["cv"] is None and s["std"] == pytest.approx(math.sqrt(2))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-1e100, max_value=1e100), min_size=3, max_size=30))
def test_ci95_contains_mean(values):
    s = summarize(values)
    low, high = s["ci95"]
    assert low <= s["mean"] <= high
    assert low >= 0 or min(values) < 0  # no interval of values that are never negative reaches below zero
    assert s["min"] <= s["median"] <= s["max"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=30))
def test_summarize_never_raises_on_finite_floats(values):
    s = summarize(values)
    assert s["n"] == len(values)


# --- outliers --------------------------------------------------------------

def test_modified_z_scores_known():
    # median 3, |dev| = [2, 1, 0, 1, 97] -> MAD 1
    z = modified_z_scores([1, 2, 3, 4, 100])
    assert z == pytest.approx([-1.349, -0.6745, 0.0, 0.6745, 0.6745 * 97])
    assert outlier_indices([1, 2, 3, 4, 100]) == [4]
    assert outlier_indices([100, 2, 3, 4, 1]) == [0]


def test_outliers_detect_low_values_too():
    assert outlier_indices([10.0, 10.1, 9.9, 10.05, 0.5]) == [4]


def test_mad_zero_falls_back_to_mean_absolute_deviation():
    z = modified_z_scores([5, 5, 5, 5, 5, 50])
    mean_ad = 45 / 6
    assert z[-1] == pytest.approx(45 / (1.253314 * mean_ad))
    assert z[:5] == [0.0] * 5
    assert outlier_indices([5, 5, 5, 5, 5, 50]) == [5]


def test_all_identical_scores_zero_and_no_outliers():
    assert modified_z_scores([2.0] * 4) == [0.0] * 4
    assert outlier_indices([2.0] * 4) == []
    assert modified_z_scores([]) == [] and outlier_indices([1.0, 100.0]) == []


def test_outlier_threshold_parameter():
    values = [10.0, 10.2, 9.8, 10.1, 9.9, 11.0]  # median 10.05, MAD 0.15: z of 11.0 = 0.6745 * 0.95 / 0.15 ~= 4.27
    assert outlier_indices(values) == [5]
    assert outlier_indices(values, threshold=5.0) == []


# --- runs_needed -----------------------------------------------------------

def test_runs_needed_is_the_smallest_sufficient_n():
    values = [10.0, 11.0, 9.0, 10.5, 9.5]
    mean = 10.0
    std = math.sqrt((0 + 1 + 1 + 0.25 + 0.25) / 4)
    n = runs_needed(values)

    def half(k):
        return student_t.ppf(0.975, k - 1) * std / math.sqrt(k)

    assert half(n) <= 0.05 * mean < half(n - 1)


def test_runs_needed_edges():
    assert runs_needed([5.0]) is None
    assert runs_needed([-1.0, 1.0]) is None
    assert runs_needed([3.0, 3.0, 3.0]) == 2
    assert runs_needed([1.0, 100.0, 0.01, 50.0]) == 1000  # capped


def test_runs_needed_monotonic_in_spread_and_precision():
    center = [10.0, 10.5, 9.5, 10.2, 9.8]
    previous = 0
    for spread in [0.1, 0.5, 1.0, 2.0, 4.0, 8.0]:
        vals = [10.0 + spread * (x - 10.0) for x in center]
        n = runs_needed(vals)
        assert n >= previous
        previous = n
    assert previous > runs_needed(center)  # it actually grew
    by_precision = [runs_needed(center, rel_precision=p) for p in (0.2, 0.1, 0.05, 0.02, 0.01)]
    assert by_precision == sorted(by_precision) and by_precision[-1] > by_precision[0]
    assert runs_needed(center, confidence=0.99) >= runs_needed(center, confidence=0.9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0.1, max_value=100.0), min_size=2, max_size=20),
       st.floats(min_value=1.1, max_value=10.0))
def test_runs_needed_property_more_spread_needs_no_fewer_runs(values, factor):
    mean = sum(values) / len(values)
    wider = [mean + factor * (x - mean) for x in values]
    if runs_needed(values) is None or runs_needed(wider) is None:
        return
    assert runs_needed(wider) >= runs_needed(values)


# --- warnings_for ----------------------------------------------------------

def test_warnings_clean_data_is_silent():
    assert warnings_for("save_s", [10.0, 10.1, 9.9, 10.05, 9.95, 10.0]) == []


def test_warnings_noisy_data_suggests_runs():
    values = [1.0, 1.3, 0.8, 1.1, 0.9]
    msgs = warnings_for("save_s", values)
    cv = summarize(values)["cv"]
    assert len(msgs) == 1
    assert msgs[0].startswith(f"save_s: CV {cv * 100:.1f}% > 10%")
    assert f"--runs {runs_needed(values)}" in msgs[0]
    assert "+-5% precision" in msgs[0]
    assert warnings_for("save_s", values, cv_limit=0.5) != msgs  # limit is honoured


def test_warnings_first_round_outlier_means_warmup():
    values = [5.0, 1.0, 1.01, 0.99, 1.0, 1.02]
    msgs = warnings_for("load_s", values)
    assert any("first round is an outlier" in m and "warmup_rounds: 1" in m for m in msgs)
    assert not any("run 0" in m for m in msgs)
    # The warm-up spike is not counted as steady-state noise.
    assert not any("CV" in m for m in msgs)


def test_warnings_first_round_check_can_be_disabled():
    msgs = warnings_for("load_s", [5.0, 1.0, 1.01, 0.99, 1.0, 1.02], first_round_index=None)
    assert not any("first round" in m for m in msgs)
    assert any("run 0 is an outlier (5" in m for m in msgs)


def test_warnings_middle_outlier_gives_index_and_value():
    msgs = warnings_for("save_s", [1.0, 1.01, 0.99, 7.5, 1.0, 1.02])
    assert any(m.startswith("save_s: run 3 is an outlier (7.5") for m in msgs)
    assert not any("first round" in m for m in msgs)


def test_warnings_too_few_runs():
    values = [10.0, 10.8, 9.4]  # CV ~7%: under the limit, but 3 runs are not enough
    needed = runs_needed(values)
    assert needed > 3
    msgs = warnings_for("save_s", values)
    assert msgs == [f"save_s: 3 runs are too few for +-5% precision at 95% confidence; "
                    f"use --runs {needed}"]


def test_warnings_single_run():
    msgs = warnings_for("size_bytes", [123.0])
    assert len(msgs) == 1 and "only 1 run" in msgs[0] and "--runs" in msgs[0]
