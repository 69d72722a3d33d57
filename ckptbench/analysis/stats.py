"""Statistics of a benchmark's repeated runs. Every public function returns plain Python types (float, int, list, None)
so results can go straight into JSON reports without numpy scalars leaking out."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ALPHA = 0.05  # significance level of every test in the harness
# Iglewicz & Hoaglin (1993): 0.6745 is the 0.75 quantile of N(0, 1), so 0.6745 * (x - median) / MAD is comparable
# to a z-score for normal data.
_MAD_SCALE = 0.6745
# Fallback when MAD == 0 (more than half the runs are identical, common for deterministic metrics such as file
# sizes): the mean absolute deviation, scaled by 1/sqrt(2/pi) ~= 1.253314 so it also estimates sigma for normal data.
_MEANAD_SCALE = 1.253314
RUNS_CAP = 1000
Floats = Sequence[float] | np.ndarray  # a sample of one metric: a list, or an array already made


def as_floats(values: Floats) -> np.ndarray:
    return np.asarray(list(values), dtype=float)


def mean_std(arr: np.ndarray) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1; None when n < 2). All-equal samples get an exact mean and std 0.0: floating-point
    summation would otherwise report e.g. mean([0.1]*3) = 0.10000000000000002 and a tiny non-zero std, which breaks
    the "zero variance" special cases downstream."""
    if arr.min() == arr.max():
        return float(arr[0]), (0.0 if arr.size >= 2 else None)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(np.mean(arr))
        std = float(np.std(arr, ddof=1)) if arr.size >= 2 else None
        if not math.isfinite(mean):
            # Values near the float limit overflowed the sum: redo on |x| <= 1 (not by default: it costs exactness).
            scale = float(np.max(np.abs(arr)))
            mean = float(np.mean(arr / scale)) * scale
            std = float(np.std(arr / scale, ddof=1)) * scale if arr.size >= 2 else None
    return mean, std


def _median(arr: np.ndarray) -> float:
    with np.errstate(over="ignore", invalid="ignore"):
        median = float(np.median(arr))
    if not math.isfinite(median):
        # Averaging the two middle values overflowed; halve them first instead.
        ordered = np.sort(arr)
        mid = arr.size // 2
        median = float(ordered[mid - 1] / 2 + ordered[mid] / 2)
    return median


def t_quantile(probability: float, df):
    """The Student-t quantile (scipy.stats.t.ppf(probability, df)), vectorised over df. scipy.special, imported here:
    scipy.stats costs a second to import and scipy.special a quarter, which `show` (reading finished statistics) should
    not pay."""
    from scipy.special import stdtrit

    return stdtrit(df, probability)


SUMMARY_KEYS = ("n", "mean", "std", "median", "min", "max", "cv", "ci95")


def summarize(values: Sequence[float]) -> dict:
    """n, mean, sample std, median, min, max, cv, and `ci95`: the mean's 95% CI (`mean_ci`)."""
    arr = as_floats(values)
    n = int(arr.size)
    if n == 0:
        return {k: (0 if k == "n" else None) for k in SUMMARY_KEYS}
    mean, std = mean_std(arr)
    cv = std / mean if (std is not None and mean != 0.0) else None
    return {"n": n, "mean": mean, "std": std, "median": _median(arr), "min": float(arr.min()),
            "max": float(arr.max()), "cv": cv, "ci95": mean_ci(arr)}


CI_MIN_RUNS = 3  # per side of a change too (analysis.change): two runs give no meaningful interval


def mean_ci(values: Floats, confidence: float = 0.95) -> list[float] | None:
    """The CI of a mean. Every value positive: on the log scale, the one-sample case of
    `analysis.change.ratio_interval`, so never below zero; else Student's, cut at 0 when no value is negative (a CPU
    time under the clock's tick). None under CI_MIN_RUNS runs unless exact (PHASE4_GUIDE.md, section 5)."""
    arr = as_floats(values)
    if arr.size < 2 or not np.all(np.isfinite(arr)):
        return None
    mean, std = mean_std(arr)
    assert std is not None  # two values or more
    if std == 0.0:
        return [mean, mean]  # no spread (a size): exact, as a change without spread is
    if arr.size < CI_MIN_RUNS:
        return None
    t, root_n = float(t_quantile(0.5 + confidence / 2.0, arr.size - 1)), math.sqrt(arr.size)
    if np.all(arr > 0):
        half = t * (std / mean) / root_n
        if math.log(mean) + half > _LOG_MAX:  # beyond what a float holds: no useful interval
            return None
        return [float(mean * math.exp(-half)), float(mean * math.exp(half))]
    half = t * std / root_n
    return [max(mean - half, 0.0) if np.all(arr >= 0) else mean - half, mean + half]


_LOG_MAX = math.log(1e300)


def modified_z_scores(values: Sequence[float]) -> list[float]:
    """Iglewicz-Hoaglin modified z-scores; with MAD == 0, the mean absolute deviation's, rather than all zeros, which
    would hide a single cold-cache run among identical ones."""
    arr = as_floats(values)
    if arr.size == 0:
        return []
    dev = arr - np.median(arr)
    mad = float(np.median(np.abs(dev)))
    if mad > 0.0:
        return [float(z) for z in _MAD_SCALE * dev / mad]
    mean_ad = float(np.mean(np.abs(dev)))
    if mean_ad == 0.0:
        return [0.0] * int(arr.size)
    return [float(z) for z in dev / (_MEANAD_SCALE * mean_ad)]


def outlier_indices(values: Sequence[float], threshold: float = 3.5) -> list[int]:
    """Indices whose |modified z-score| exceeds threshold (3.5 per Iglewicz-Hoaglin)."""
    vals = list(values)
    if len(vals) < 3:  # with two runs there is no majority to be an outlier from
        return []
    return [i for i, z in enumerate(modified_z_scores(vals)) if abs(z) > threshold]


def runs_needed(values: Sequence[float], *, rel_precision: float = 0.05, confidence: float = 0.95) -> int | None:
    """Total runs for the CI half-width to be <= rel_precision * |mean|, the observed std taken as the true one (at most
    RUNS_CAP); None when n < 2 or the mean is 0 (relative precision undefined)."""
    arr = as_floats(values)
    if arr.size < 2:
        return None
    mean, std = mean_std(arr)
    if mean == 0.0 or std is None:
        return None
    if std == 0.0:
        return 2
    n = np.arange(2, RUNS_CAP + 1)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / np.sqrt(n)
    ok = np.nonzero(half <= rel_precision * abs(mean))[0]
    return int(n[ok[0]]) if ok.size else RUNS_CAP


def warnings_for(metric: str, values: Sequence[float], *, cv_limit: float = 0.10, first_round_index: int | None = 0,
                 rel_precision: float = 0.05) -> list[str]:
    """Actionable warnings about one metric's runs (values in round order)."""
    vals = [float(v) for v in values]
    out: list[str] = []
    precision = f"+-{rel_precision * 100:g}% precision"
    if len(vals) < 2:
        return [f"{metric}: only {len(vals)} run(s): noise cannot be estimated; use --runs 5 or more"]
    outliers = outlier_indices(vals)
    first = first_round_index if first_round_index in outliers else None  # the first round, an outlier
    if first is not None:
        out.append(f"{metric}: first round is an outlier ({vals[first]:.4g}): caches or warm-up; set warmup_rounds: 1")
    out += [f"{metric}: run {i} is an outlier ({vals[i]:.4g} vs median {float(np.median(vals)):.4g}): check for "
            "background load or I/O contention and rerun" for i in outliers if i != first]
    # A warm-up outlier would inflate CV and ask for many runs when the real fix
    # is warmup_rounds, so judge steady-state noise without it.
    steady = vals if first is None else vals[:first] + vals[first + 1:]
    note = "" if first is None else " excluding first round"
    summary = summarize(steady)
    needed = runs_needed(steady, rel_precision=rel_precision)
    cv = summary["cv"]
    if cv is not None and abs(cv) > cv_limit:
        out.append(f"{metric}: CV {abs(cv) * 100:.1f}% > {cv_limit * 100:g}%{note}: results are noisy; use --runs "
                   f"{needed} (estimated runs for {precision})")
    elif needed is not None and needed > summary["n"]:
        out.append(f"{metric}: {summary['n']} runs{note} are too few for {precision} at 95% confidence; use "
                   f"--runs {needed}")
    return out
