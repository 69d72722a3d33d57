"""A test's raw runs as lists of values, one list per metric: what every statistic starts from."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ckptbench.analysis.change import METRICS as JUDGED

METRICS = tuple(JUDGED)  # save_s, load_s, size_bytes
THROUGHPUT = {"save_gbps": "save_s", "load_gbps": "load_s"}
# What each operation costs besides time: CPU seconds (all threads) and memory.
COST = ("save_cpu_s", "load_cpu_s", "save_peak_rss_bytes", "load_peak_rss_bytes",
        "save_rss_anon_bytes", "load_rss_anon_bytes", "save_rss_file_bytes", "load_rss_file_bytes",
        "save_host_rss_anon_bytes", "load_host_rss_anon_bytes")
# An async save's (bench.async_save): blocked, durable, staged memory, the steps beside it; sync runs have none.
ASYNC = ("blocked_s", "commit_s", "staging_bytes", "step_alone_s", "step_slowdown", "training_lost_s")


def measured_runs(runs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The runs the statistics hold: successful, not warm-up."""
    return [r for r in runs if r["error"] is None and not r["warmup"]]


def samples(runs: Iterable[Mapping[str, Any]], data_bytes: int) -> dict[str, list[float]]:
    """Per-metric values of the measured (not warm-up), successful runs, in round order."""
    good = sorted(measured_runs(runs), key=lambda r: r["round"])
    out = {metric: [float(r[metric]) for r in good] for metric in METRICS}
    out["total_s"] = [float(r["save_s"]) + float(r["load_s"]) for r in good]
    for name, seconds in THROUGHPUT.items():
        out[name] = [data_bytes / 1e9 / s for s in out[seconds] if s > 0]
    for metric in COST + ASYNC:
        out[metric] = [float(r[metric]) for r in good if r.get(metric) is not None]
    warm = [float(r["warm_load_s"]) for r in good if r.get("warm_load_s") is not None]
    if warm:  # a test with warm_load: its loads from the page cache, right after each save
        out["warm_load_s"] = warm
    return out
