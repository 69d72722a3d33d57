"""`compare A.json B.json`: is B faster, slower or the same as A, test by test? (PHASE4_GUIDE.md, section 8)

Like pyperf's compare_to, judged by `analysis.compare`, the same function a suite uses against its baseline, with A as
the baseline. Differences that make the comparison unfair (another machine, model or dtype) are warned about but do not
stop it: comparing machines can be the point. A time whose runs found the machine busy on either side keeps its change
and interval but is not called significant ("not judged: busy machine"), unless `allow_busy`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ckptbench.analysis import busy, stats
from ckptbench.analysis import change as analysis
from ckptbench.analysis.samples import METRICS, measured_runs, samples
from ckptbench.spec.suite import CONFIRM_OBJECTIVES

# Verdict words that mean "B is worse than A".
REGRESSION_WORDS = frozenset(worse for _, _, worse, _ in analysis.METRICS.values())
DEFAULT_NOISE_PCT = 5.0
# Environment fields that make two machines "the same" for timing purposes.
MACHINE_FIELDS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "cpu_model": lambda env: env.get("cpu_model"),
    "cpu_count": lambda env: env.get("cpu_count"),
    "ram_bytes": lambda env: env.get("ram_bytes"),
    "filesystem type": lambda env: (env.get("filesystem") or {}).get("type"),
}
MODEL_FIELDS = ("name", "path", "n_params")
# Test settings that do not change what is measured.
_COSMETIC_SETTINGS = frozenset({"name", "description", "expected"})


def recorded_noise_pct(document: Mapping[str, Any]) -> float:
    value = (document.get("protocol") or {}).get("noise_pct")
    return DEFAULT_NOISE_PCT if value is None else float(value)


def compare_documents(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any], noise_pct: float,
                      allow_busy: bool = False) -> list[dict[str, Any]]:
    """One row per test in both documents (A's order) and metric: both summaries and the comparison; a time whose
    runs found the machine busy is not judged (module docstring) unless `allow_busy`."""
    tests_b = {t["name"]: t for t in doc_b["tests"]}
    rows = []
    for test_a in doc_a["tests"]:
        test_b = tests_b.get(test_a["name"])
        if test_b is None:
            continue
        samples_a = samples(test_a["runs"], int(doc_a["weights"]["size_bytes"]))
        samples_b = samples(test_b["runs"], int(doc_b["weights"]["size_bytes"]))
        for metric in METRICS:
            comparison = analysis.compare(samples_b[metric], samples_a[metric], metric=metric, noise_pct=noise_pct)
            reason = busy_reason(test_a, test_b, metric)
            if reason is not None:
                comparison["busy"] = reason
                if comparison["significant"] and not allow_busy:
                    comparison.update(verdict=busy.NOT_JUDGED, significant=False)
            rows.append({"test": test_a["name"], "metric": metric, "comparison": comparison,
                         "a": stats.summarize(samples_a[metric]), "b": stats.summarize(samples_b[metric])})
    return rows


def busy_reason(test_a: Mapping[str, Any], test_b: Mapping[str, Any], metric: str) -> str | None:
    """Why a time of A against B may be the busy machine's, not the change's: 'A: 2 of 3 saves busy'; None for a
    size or where neither side's runs found the machine busy."""
    op = metric.removesuffix("_s")
    if op == metric:
        return None  # a size does not depend on the machine's load
    parts = []
    for side, test in (("A", test_a), ("B", test_b)):
        found = sum(op in busy.busy_operations(run) for run in measured_runs(test["runs"]))
        if found:
            parts.append(f"{side}: {found} of {len(measured_runs(test['runs']))} {op}s busy")
    return "; ".join(parts) or None


def only_in(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Test names only in A, and only in B, each in its file's order."""
    names_a = [t["name"] for t in doc_a["tests"]]
    names_b = [t["name"] for t in doc_b["tests"]]
    return [n for n in names_a if n not in names_b], [n for n in names_b if n not in names_a]


def regressions(rows: Sequence[Mapping[str, Any]], threshold_pct: float) -> list[Mapping[str, Any]]:
    """Rows significantly worse in B by more than threshold_pct (verdicts already require p < alpha)."""
    return [r for r in rows
            if r["comparison"]["verdict"] in REGRESSION_WORDS and r["comparison"]["change_pct"] > threshold_pct]


def mismatch_warnings(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any]) -> list[str]:
    """One line per difference that makes A and B measure different things."""
    out = []
    env_a, env_b = doc_a.get("environment") or {}, doc_b.get("environment") or {}
    for field, get in MACHINE_FIELDS.items():
        if get(env_a) != get(env_b):
            out.append(f"machines differ: {field} {get(env_a)!r} in A, {get(env_b)!r} in B")
    w_a, w_b = doc_a.get("weights") or {}, doc_b.get("weights") or {}
    for field in MODEL_FIELDS:
        if w_a.get(field) != w_b.get(field):
            out.append(f"models differ: {field} {w_a.get(field)!r} in A, {w_b.get(field)!r} in B")
    if w_a.get("dtype") != w_b.get("dtype"):
        out.append(f"dtypes differ: {w_a.get('dtype')!r} in A, {w_b.get('dtype')!r} in B; sizes and times are not "
                   "comparable")
    # Warm loads read from memory, so a cold-vs-warm pair compares the cache, not the storage.
    cache_a, cache_b = (doc.get("protocol", {}).get("load_cache") for doc in (doc_a, doc_b))
    if cache_a != cache_b:
        out.append(f"loads differ: {cache_a!r} page cache in A, {cache_b!r} in B; load times are not comparable")
    tests_b = {t["name"]: t for t in doc_b["tests"]}
    for test_a in doc_a["tests"]:
        test_b = tests_b.get(test_a["name"])
        if test_b is not None:
            a, b = test_a.get("settings") or {}, test_b.get("settings") or {}
            changed = [f"{k} {a.get(k)!r} in A, {b.get(k)!r} in B"
                       for k in sorted((set(a) | set(b)) - _COSMETIC_SETTINGS) if a.get(k) != b.get(k)]
            if changed:
                out.append(f"test {test_a['name']}: settings differ: {'; '.join(changed)}")
    return out


def joined_answers(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The two files as two blocks of one measurement: per objective and role, where both files pit the same TensorStore
    test against the same other test, each file's comparison, the range of their ratios and whether they disagree. Two
    invocations at different times are two machine states: where they disagree, neither file's interval is the
    answer."""
    out = []
    for objective in CONFIRM_OBJECTIVES:
        entry_a = (doc_a.get("best") or {}).get(objective) or {}
        entry_b = (doc_b.get("best") or {}).get(objective) or {}
        if not entry_a or entry_a.get("test") != entry_b.get("test"):
            continue
        for role in ("peer", "ceiling"):
            a = (entry_a.get("against") or {}).get(role)
            b = (entry_b.get("against") or {}).get(role)
            if a is None or b is None or a["test"] != b["test"] or None in (a["ratio"], b["ratio"]):
                continue
            out.append({"objective": objective, "role": role, "test": entry_a["test"], "other": a["test"],
                        "a": a, "b": b, "ratio_range": sorted([a["ratio"], b["ratio"]]),
                        "disagree": analysis.blocks_disagree([a, b])})
    return out
