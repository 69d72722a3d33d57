"""The results document: raw runs in, statistics added, versioned JSON out.

`build` is the only place where runs become statistics; reports and plots read
the document it returns and never recompute. `SCHEMA_VERSION` changes whenever a
field changes meaning, and `read` refuses versions it does not know.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import __version__, claims, compression, stats
from .config import SuiteConfig
from .errors import UserError
from .measure import RunRecord

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
# Metric -> (higher is better, word when better, word when worse)
METRICS: dict[str, tuple[bool, str, str]] = {
    "save_s": (False, "faster", "slower"),
    "load_s": (False, "faster", "slower"),
    "size_bytes": (False, "smaller", "larger"),
}
THROUGHPUT = {"save_gbps": "save_s", "load_gbps": "load_s"}
# What each operation costs besides time: CPU seconds (all threads) and peak memory growth.
COST = ("save_cpu_s", "load_cpu_s", "save_peak_rss_bytes", "load_peak_rss_bytes")
CEILING = "device_ceiling"
NOT_DURABLE = "not durable"


def samples(runs: Iterable[Mapping[str, Any]], data_bytes: int) -> dict[str, list[float]]:
    """Per-metric values of the measured (not warm-up), successful runs, in round order."""
    good = sorted((r for r in runs if r["error"] is None and not r["warmup"]), key=lambda r: r["round"])
    out = {metric: [float(r[metric]) for r in good] for metric in METRICS}
    for name, seconds in THROUGHPUT.items():
        out[name] = [data_bytes / 1e9 / s for s in out[seconds] if s > 0]
    for metric in COST:
        out[metric] = [float(r[metric]) for r in good if r.get(metric) is not None]
    return out


def build(
    config: SuiteConfig,
    weights_info: Mapping[str, Any],
    records: Iterable[RunRecord],
    environment: Mapping[str, Any],
    seed: int,
    complete: bool,
    storage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole results document for a suite (finished or not)."""
    by_test: dict[str, list[dict[str, Any]]] = {t.name: [] for t in config.tests}
    for record in records:
        by_test[record.test].append(record.to_json())
    data_bytes = int(weights_info["size_bytes"])
    base = samples(by_test[config.baseline], data_bytes)
    tests = [_test_entry(test, by_test[test.name], base, config, data_bytes) for test in config.tests]
    _add_ceiling_fractions(tests)
    all_runs = [r for runs in by_test.values() for r in runs if r["error"] is None]
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "ckptbench", "version": __version__},
        "complete": complete,
        "environment": dict(environment),
        "config": config.to_json(),
        "weights": dict(weights_info),
        "protocol": {**_protocol(config, all_runs, seed), "storage": dict(storage or {"kind": "local"})},
        "baseline": config.baseline,
        "tests": tests,
        "skipped_tests": [{"name": name, "reason": reason} for name, reason in config.skipped],
        "warnings": _suite_warnings(config, all_runs, tests),
    }


def _add_ceiling_fractions(tests: list[dict[str, Any]]) -> None:
    """Each test's mean throughput as a % of the device ceiling measured in the same run."""
    ceiling = next((t for t in tests if t["name"] == CEILING), None)
    for test in tests:
        test["pct_of_ceiling"] = {}
        for metric in THROUGHPUT:
            mine = test["stats"][metric]["mean"]
            limit = ceiling["stats"][metric]["mean"] if ceiling else None
            test["pct_of_ceiling"][metric] = None if not (mine and limit) else 100.0 * mine / limit


def _test_entry(test, runs: list[dict[str, Any]], base: dict[str, list[float]], config: SuiteConfig,
                data_bytes: int) -> dict[str, Any]:
    mine = samples(runs, data_bytes)
    entry: dict[str, Any] = {
        "name": test.name,
        "description": test.description,
        "settings": {**test.to_json(), "compression_label": compression.label(test.compression)},
        "durable": test.durable,
        "labels": [] if test.durable else [NOT_DURABLE],
        "runs": runs,
        "failed_runs": sum(1 for r in runs if r["error"] is not None),
        "stats": {metric: stats.summarize(values) for metric, values in mine.items()},
        "vs_baseline": {},
        "claims": [],
        "warnings": [],
    }
    if test.name != config.baseline:
        for metric, (higher_better, better, worse) in METRICS.items():
            comparison = stats.compare_to_baseline(
                mine[metric], base[metric], noise_pct=config.noise_pct,
                higher_is_better=higher_better, better_word=better, worse_word=worse)
            interval = claims.change_ci_pct(mine[metric], base[metric])
            comparison["change_ci95_pct"] = None if interval is None else list(interval)
            entry["vs_baseline"][metric] = comparison
        if test.expected:
            entry["claims"] = claims.check_claims(test.expected, mine, base)
    for metric in ("save_s", "load_s"):
        entry["warnings"] += [f"{test.name}: {w}" for w in stats.warnings_for(metric, mine[metric])]
    if not test.durable:
        why = ("it lives in memory and never reaches a disk" if test.kvstore == "memory"
               else "file_io_sync is off: data may still be in the page cache when the clock stops")
        entry["warnings"].append(f"{test.name}: its saves are {NOT_DURABLE}: {why}")
    for run in runs:
        if run["error"] is not None:
            entry["warnings"].append(f"{test.name}: round {run['round']} failed: {run['error']}")
    return entry


def _protocol(config: SuiteConfig, runs: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    states = sorted({r["load_cache"] for r in runs if r["load_cache"] not in (None, "memory", "remote")})
    if not states and any(r["load_cache"] == "remote" for r in runs):
        states = ["remote"]
    return {
        "save": "timed from the first open until TensorStore reports every write durable "
                "(file kvstore with file_io_sync on: each file fsync'd), manifest fsync'd",
        "load": "timed from the first open until every array is in memory",
        "processes": "with several processes, each writes and reads whole chunk rows of every array; "
                     "save_s and load_s run from the common start to the slowest process (process_save_s, "
                     "process_load_s hold each one's); CPU includes the workers', peak RSS is the parent's only",
        "remote_loads": "with s3:// or gs:// storage there is no page cache to drop: loads read from the server "
                        "(load_cache 'remote'), and sizes come from listing the run's objects",
        "cache_eviction_requested": config.cache_eviction,
        "cache_eviction_used": sorted({r["eviction"] or "none" for r in runs if r["load_cache"] != "memory"}),
        "load_cache": states[0] if len(states) == 1 else ("mixed" if states else None),
        "verification": "every load compared bit for bit with the source, outside the timed region",
        "order": "interleaved rounds, each a fresh shuffle of the tests",
        "seed": seed,
        "num_runs": config.num_runs,
        "warmup_rounds": config.warmup_rounds,
        "noise_pct": config.noise_pct,
        "std": "sample standard deviation (ddof=1)",
        "ci": "95% Student-t confidence interval of the mean",
        "throughput": "GB/s = tensor bytes / 1e9 / seconds",
    }


def _suite_warnings(config: SuiteConfig, runs: list[dict[str, Any]], tests: list[dict[str, Any]]) -> list[str]:
    out = []
    warm = [r for r in runs if r["load_cache"] in ("warm", "partial")]
    if warm:
        out.append(
            f"{len(warm)} of {len(runs)} loads were not cold (the page cache still held the checkpoint): "
            "their load times are optimistic. Run as root for drop_caches, or on a filesystem that honours "
            "posix_fadvise (not tmpfs)."
        )
    out += [f"sweep point {name} skipped: {reason}" for name, reason in config.skipped]
    failed = sum(t["failed_runs"] for t in tests)
    if failed:
        out.append(f"{failed} run(s) failed and are excluded from the statistics; see each test's runs")
    return out + [w for t in tests for w in t["warnings"]]


def write(document: Mapping[str, Any], output_dir: Path) -> Path:
    """Write results.json atomically (a reader never sees half a file)."""
    path = output_dir / RESULTS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def read(path: Path) -> dict[str, Any]:
    """Read a results file this version understands."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such results file") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable results file ({exc})") from None
    version = document.get("schema_version") if isinstance(document, dict) else None
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{path}: schema_version {version!r} is not one this tool knows ({SCHEMA_VERSION}); "
            "compare files written by the same ckptbench version"
        )
    return document
