"""The results document: raw runs in, statistics added, versioned JSON out.

A document has two parts. The raw part is what was measured and how: the config, the weights, the machine, the protocol,
and every run's figures. The derived part is computed from the raw part alone by `derive`: statistics, changes versus
the baseline, claims, the ceiling, the best configuration, warnings. Reports and plots only read a derived document.
Because `derive` needs nothing but the document, a file written by an older version is upgraded by filling in its raw
part and deriving afresh, so `show` and `compare` read every version this tool has written.

`results.schema.json` (shipped beside this module) is the contract: `read` validates every document against it and
answers one line on a mismatch.

Its versions, and what each changed: `schemas/CHANGES.md` (bump SCHEMA_VERSION whenever a field changes meaning).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ckptbench.analysis import busy, stats
from ckptbench.analysis import change as analysis
from ckptbench.analysis.samples import METRICS, THROUGHPUT, measured_runs, samples
from ckptbench.core import records
from ckptbench.core.records import RunRecord
from ckptbench.documents import ceiling as ceiling_rounds
from ckptbench.documents import confirmation, findings, while_training
from ckptbench.documents import store as documents
from ckptbench.documents.findings import NOT_DURABLE, metric_runs
from ckptbench.documents.store import Document, Upgrade
from ckptbench.spec.compression import label as compression_label
from ckptbench.spec.fields import TestSpec
from ckptbench.spec.references import CEILING, DIRECT_PREFIX, REFERENCES
from ckptbench.spec.suite import MEMORY_BOUND_FIXED_BYTES, MEMORY_BOUND_MULTIPLIER, OBJECTIVES, SuiteConfig

SCHEMA_VERSION = 5
RESULTS_FILE = "results.json"
SMALL_FOR_RAM = 0.25  # a checkpoint under a quarter of RAM may be cached by a VM's host
CI_PROTOCOL = ("ci95: the mean's 95% interval (the only one); every value positive (times, sizes, rates, memory): "
               "on the log scale, mean * exp(+- t * cv / sqrt(n)), never below zero; a value of 0 or less: "
               "Student-t, mean +- t * s / sqrt(n), cut at 0 when no value is negative; none under 3 runs unless "
               "all are equal")


# --- building -----------------------------------------------------------------

def _blocks(config: SuiteConfig, seed: int) -> list[dict[str, Any]]:
    """Blocks of tests run back to back, and how many interleaved rounds ran before each (records.Plan)."""
    if config.order != "interleaved" or not config.blocks:
        return []
    slots = records.block_slots(len(config.blocks), config.num_runs + config.warmup_rounds, seed)
    return [{"tests": list(block), "after_rounds": slot} for block, slot in zip(config.blocks, slots)]


@dataclass(frozen=True)
class Origin:
    """Where and with what a suite ran (the raw part beside its runs); defaults: a local run of an unnamed build."""

    environment: Mapping[str, Any]
    storage: Mapping[str, Any] = field(default_factory=lambda: {"kind": "local"})
    scale: Mapping[str, Any] = field(default_factory=dict)
    tool: Mapping[str, Any] = field(default_factory=lambda: {"name": "ckptbench", "version": None, "commit": None})


def build(config: SuiteConfig, weights_info: Mapping[str, Any], records: Iterable[RunRecord],
          environment: Mapping[str, Any] | Origin, seed: int, complete: bool) -> dict[str, Any]:
    """The whole results document of a suite (finished or not): its raw part, then `derive`. `environment`: the
    machine's, or an `Origin` with the storage, scale and tool too."""
    origin = environment if isinstance(environment, Origin) else Origin(environment)
    by_test: dict[str, list[dict[str, Any]]] = {t.name: [] for t in config.tests}
    confirming: list[dict[str, Any]] = []  # the confirmation rounds' runs: apart, out of every test's statistics
    for record in records:
        (by_test[record.test] if record.confirm_block is None else confirming).append(record.to_json())
    document = {
        "kind": RESULTS.name, "schema_version": SCHEMA_VERSION, "tool": dict(origin.tool), "complete": complete,
        "environment": dict(origin.environment), "config": config.to_json(), "weights": dict(weights_info),
        "scale": dict(origin.scale), "protocol": {**_protocol(config, seed), "storage": dict(origin.storage)},
        "baseline": config.baseline,
        "tests": [{"name": t.name, "description": t.description,
                   "kind": "reference" if t.is_reference else "tensorstore",
                   "settings": {**t.to_json(), "compression_label": compression_label(t.compression)},
                   "durable": t.durable, "runs": by_test[t.name]} for t in config.tests],
        "skipped_tests": [{"name": name, "reason": reason} for name, reason in config.skipped],
        "confirmation": confirmation.raw(config, confirming),
    }
    return derive(json.loads(json.dumps(document)))  # plain JSON types: the document equals its file


def _protocol(config: SuiteConfig, seed: int) -> dict[str, Any]:
    return {
        "save": "timed from the first open until TensorStore reports every write durable "
                "(file kvstore with file_io_sync on: each file fsync'd), manifest fsync'd",
        "load": "timed from the first open until every array is in memory",
        "processes": "with several processes, each writes and reads whole chunk rows of every array; "
                     "save_s runs from the first metadata write until the slowest process is durable and the "
                     "manifest written; load_s from the common start (the barrier's release) to the slowest "
                     "process's end, from the processes' own stamps on the host's monotonic clock: the latest end "
                     "less the earliest start per host, the slowest host's (load_clock 'readers'); process_save_s, "
                     "process_load_s hold each one's own; CPU includes the workers', peak RSS growth too (summed); "
                     "under a launcher (environment.launch) the processes are its ranks, rank 0 among them, and "
                     "each rank's time runs from a barrier all ranks leave together",
        "tensor_parallel": "with tp N, N reader processes load from a common start, each only its slice of every "
                           "tensor (q/k/v/gate/up, lm_head and the embedding split on dim 0, o/down on dim 1, the "
                           "rest whole), its library imported before the common start; load_s runs from the common "
                           "start to the slowest reader's end, by the readers' own stamps (processes, above), and "
                           "process_load_s holds each reader's own; each reader's device bytes "
                           "(process_load_read_bytes: /proc/self/io read_bytes, readahead included, a page another "
                           "reader of the host brought in not), its read calls' bytes (rchar) and its slices' bytes; "
                           "tensor_parallel.read_amplification = sum of read_bytes / sum of slice bytes; below 1, "
                           "tensor_parallel.unaccounted_bytes: slice bytes no counted device read brought in; "
                           "tensor_parallel.reads: O_DIRECT rows read around the page cache the buffered rows' "
                           "readers share, so their amplifications are not comparable; loads under tp are made cold "
                           "with fadvise unless cache_eviction names a method (drop_caches would also drop the "
                           "readers' libraries, read back in the load)",
        "remote_loads": "with s3:// or gs:// storage there is no page cache to drop: loads read from the server "
                        "(load_cache 'remote'), and sizes come from listing the run's objects",
        "ceiling": "device_ceiling: the same bytes in raw files written (fsync'd) and read cold over a grid of "
                   "streams (files) and blocks (1-32 streams, 1-64 MiB), plus an O_DIRECT read, and fio's io_uring "
                   "O_DIRECT queues where fio is on PATH (environment.fio); the first run runs the whole grid, "
                   "later ones its two fastest writes and reads, fio's and the O_DIRECT read; each run's save_s and "
                   "load_s are its fastest pattern. pct_of_ceiling: the mean over rounds of a row's GB/s as a share "
                   "of the fastest figure of its round, the ceiling's or a row's that beat it "
                   "(ceiling.rounds names every such row), so never above 100",
        "memory": "rss_anon/rss_file: peak anonymous and file-backed resident bytes of the whole process during "
                  "the operation (/proc/self/statm, sampled every 20 ms); peak_rss: growth above the start",
        "cache_eviction_requested": config.cache_eviction,
        "verification": "every load compared bit for bit with the source, outside the timed region",
        "order": config.order,
        "blocks": _blocks(config, seed),
        "seed": seed,
        "num_runs": config.num_runs,
        "warmup_rounds": config.warmup_rounds,
        "noise_pct": config.noise_pct,
        "values": config.values,
        "std": "sample standard deviation (ddof=1)",
        "ci": CI_PROTOCOL,
        "change": "every change's 95% interval and p-value: the ratio of means on the log scale (delta method, "
                  "Welch-Satterthwaite df; analysis.change.ratio_interval), none with 2 runs or fewer on a side",
        "throughput": "GB/s = tensor bytes / 1e9 / seconds",
        "other_processes": "around each timed operation, what other processes of this host did (/proc/stat busy "
                           "CPU less this run's own processes' utime+stime, children and a launch's ranks of this "
                           "host included; the output disk's /proc/diskstats bytes less the own processes' "
                           "/proc/<pid>/io); an operation was busy when they used over 25% of a core (and 0.1 s) or "
                           "read or wrote over 64 MiB + 10% of its own bytes + 32 KiB per file (analysis.busy); "
                           "on a launch of several hosts each host's first rank watches its host, and the busiest "
                           "host's figures are kept, with its name",
    }


# --- deriving -------------------------------------------------------------------

def derive(document: dict[str, Any]) -> dict[str, Any]:
    """Fill every derived section of a document from its raw part (in place; returns it)."""
    data_bytes = int(document["weights"]["size_bytes"])
    noise_pct = float(document["protocol"]["noise_pct"])
    tests = document["tests"]
    baseline = next((t for t in tests if t["name"] == document["baseline"]), None)
    base = samples(baseline["runs"], data_bytes) if baseline else {}
    for test in tests:
        mine = samples(test["runs"], data_bytes)
        test["labels"] = [] if test["durable"] else [NOT_DURABLE]
        test["failed_runs"] = sum(1 for r in test["runs"] if r["error"] is not None)
        test["stats"] = {metric: stats.summarize(values) for metric, values in mine.items()}
        test["vs_baseline"], test["claims"] = {}, []
        if baseline is not None and test is not baseline:
            expected = test["settings"].get("expected") or {}
            claimed = {analysis.CLAIM_METRICS[k]: v for k, v in expected.items()}
            for metric in METRICS:
                comparison = analysis.compare(mine[metric], base[metric], metric=metric, noise_pct=noise_pct,
                                              claimed_pct=claimed.get(metric))
                claim = comparison.pop("claim", None)
                test["vs_baseline"][metric] = comparison
                if claim is not None:
                    test["claims"].append(claim)
        test["page_cache"] = findings.page_cache(test)
        test["tensor_parallel"] = tensor_parallel(test)
        test["busy"] = busy.summary(test["runs"])
        test["warnings"] = findings.test_warnings(test, mine)
    ceiling = next((t for t in tests if t["name"] == CEILING), None)
    by_round = ceiling_rounds.rounds(tests, data_bytes)
    if ceiling is not None:
        ceiling["ceiling"] = {**_ceiling_patterns(ceiling["runs"], data_bytes), "rounds": by_round}
    for test in tests:
        pct = ceiling_rounds.pct_of_ceiling(test, by_round, data_bytes)
        test["pct_of_ceiling"] = {m: pct[m] for m in THROUGHPUT}
    document["protocol"]["load_cache"] = _load_cache(tests)
    document["protocol"]["cache_eviction_used"] = sorted({r["eviction"] or "none" for t in tests for r in t["runs"]
                                                          if r["error"] is None and r["load_cache"] != "memory"})
    document["scale"] = _scale(document, ceiling)
    document["best"] = best_configurations(tests, noise_pct, document["baseline"])
    document["while_training"] = while_training.derive(tests)  # async saves' answer, or None
    confirmation.derive(document, noise_pct)  # the answer's comparisons from the confirmation rounds, if any
    document["warnings"] = findings.suite_warnings(document, ceiling)
    document["alerts"] = findings.alerts(document, ceiling)
    document["noise"] = findings.noise(document)
    document["busy"] = findings.busy(document)
    return document


def tensor_parallel(test: Mapping[str, Any]) -> dict[str, Any] | None:
    """A tensor-parallel load's bytes (tp > 1; None without readers' bytes), medians over its measured runs: the
    device bytes its readers read (read_bytes) over their slices' bytes, for the row (sum over sum) and per reader;
    the same from what their read calls returned (rchar: page-cache hits counted, so a reader's own figure even where
    another reader of the host brought a page in). `reads` says whether the readers read around the page cache
    (O_DIRECT), where the two amplifications mean other things; each field: results.schema.json."""
    tp = int((test.get("settings") or {}).get("tp") or 1)
    runs = [r for r in measured_runs(test["runs"]) if r.get("process_load_slice_bytes")]
    if tp <= 1 or not runs:
        return None

    def ratio(key: str, reader: int | None = None) -> float | None:
        values = []
        for run in runs:
            got, wanted = run.get(key), run["process_load_slice_bytes"]
            if got is None:
                return None
            got, wanted = (got, wanted) if reader is None else ([got[reader]], [wanted[reader]])
            if sum(wanted):
                values.append(sum(got) / sum(wanted))
        return statistics.median(values) if values else None

    readers = len(runs[0]["process_load_slice_bytes"])
    # O_DIRECT: the row's claim to read around the page cache (findings.bypass_claim; the ceiling's covers one
    # pattern of its own, not its tp readers; TensorStore's "direct" reads buffered files not of 4096-byte sizes)
    reads_direct = test["settings"].get("backend") != CEILING and findings.bypass_claim(test) is not None
    read_amplification = ratio("process_load_read_bytes")
    unaccounted = None
    if read_amplification is not None and read_amplification < 1:
        unaccounted = int(statistics.median(sum(r["process_load_slice_bytes"]) - sum(r["process_load_read_bytes"])
                                            for r in runs))
    return {"tp": tp, "runs": len(runs), "slice_bytes": list(runs[0]["process_load_slice_bytes"]),
            "reads": "O_DIRECT" if reads_direct else "buffered",
            "unaccounted_bytes": unaccounted,
            "read_amplification": read_amplification,
            "rchar_amplification": ratio("process_load_rchar_bytes"),
            "reader_read_amplification": [ratio("process_load_read_bytes", i) for i in range(readers)],
            "reader_rchar_amplification": [ratio("process_load_rchar_bytes", i) for i in range(readers)],
            "reader_load_s": [statistics.median([r["process_load_s"][i] for r in runs]) for i in range(readers)]}


def _ceiling_patterns(runs: list[Mapping[str, Any]], data_bytes: int) -> dict[str, Any]:
    """Each access pattern's GB/s over the runs, and which pattern was fastest most often."""
    good = [r for r in measured_runs(runs) if r.get("patterns")]
    out: dict[str, Any] = {}
    for op in ("save", "load"):
        names = list(dict.fromkeys(n for r in good for n in r["patterns"].get(op, {})))
        out[op] = {n: stats.summarize([data_bytes / 1e9 / r["patterns"][op][n] for r in good
                                       if r["patterns"].get(op, {}).get(n)]) for n in names}
        fastest = Counter(min(r["patterns"][op], key=r["patterns"][op].get) for r in good if r["patterns"].get(op))
        out[f"{op}_pattern"] = fastest.most_common(1)[0][0] if fastest else None
    direct = [n for n in out["load"] if n.startswith(DIRECT_PREFIX)]
    out["direct_load_gbps"] = out["load"][direct[0]] if direct else None
    return out


def _load_cache(tests: list[Mapping[str, Any]]) -> str | None:
    runs = [r for t in tests for r in t["runs"] if r["error"] is None]
    states = sorted({r["load_cache"] for r in runs if r["load_cache"] not in (None, "memory", "remote")})
    if not states and any(r["load_cache"] == "remote" for r in runs):
        states = ["remote"]
    return states[0] if len(states) == 1 else ("mixed" if states else None)


def _scale(document: Mapping[str, Any], ceiling: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a reader needs to judge whether the figures carry over to their own checkpoint."""
    scale = dict(document.get("scale") or {})
    model_bytes = int(document["weights"]["size_bytes"])
    ram = (document.get("environment") or {}).get("ram_bytes")
    scale["model_bytes"] = model_bytes
    scale["ram_bytes"] = ram
    scale["model_pct_of_ram"] = None if not ram else 100.0 * model_bytes / ram
    # The harness holds a loaded copy, and its source file is page cache too: the checkpoint gets what is left.
    scale["fits_in_page_cache"] = None if not ram else model_bytes <= ram - 2 * model_bytes
    scale["small_for_ram"] = None if not ram else model_bytes < SMALL_FOR_RAM * ram
    # Anonymous memory (a run by several processes: the host's) against the bound (PHASE4_GUIDE.md, section 9); an
    # async save's staged copy is its point: its rows' peak is reported apart, not held to the bound
    def peaks(asynchronous: bool) -> list[int]:
        return [run.get(f"{op}_host_rss_anon_bytes") or run[f"{op}_rss_anon_bytes"]
                for test in document["tests"] if while_training.is_async(test) == asynchronous
                for run in test["runs"] for op in ("save", "load") if run.get(f"{op}_rss_anon_bytes") is not None]
    scale["anon_at_start_bytes"] = (document.get("environment") or {}).get("rss_anon_at_start_bytes")
    scale["anon_peak_bytes"] = max(peaks(False), default=None)
    scale["async_anon_peak_bytes"] = max(peaks(True), default=None)
    scale["anon_bound_bytes"] = int(MEMORY_BOUND_MULTIPLIER * model_bytes + MEMORY_BOUND_FIXED_BYTES)
    patterns = (ceiling or {}).get("ceiling") or {}
    scale["ceiling_save_pattern"] = patterns.get("save_pattern")
    scale["ceiling_load_pattern"] = patterns.get("load_pattern")
    return scale


def is_peer(test: Mapping[str, Any]) -> bool:
    """A reference row a user could pick instead of TensorStore (spec.references: not the device ceiling)."""
    kind = (test.get("settings") or {}).get("backend") or test["name"]
    return test.get("kind") == "reference" and kind in REFERENCES and REFERENCES[kind].peer


def best_configurations(tests: list[Mapping[str, Any]], noise_pct: float, baseline: str | None = None
                        ) -> dict[str, Any]:
    """Per objective, the TensorStore test with the lowest mean and its runner-up; the winner against the baseline, the
    fastest peer and the device ceiling (analysis.compare), and the peers faster than it (`beaten_by`: TensorStore is
    then not the fastest)."""
    # async rows have their own answer (documents.while_training): their save_s ran beside training steps
    candidates = [t for t in tests if t["kind"] == "tensorstore" and t["stats"]["save_s"]["n"] > 0
                  and not while_training.is_async(t)]
    peers = [t for t in tests if is_peer(t) and t["stats"]["save_s"]["n"] > 0 and not while_training.is_async(t)]
    by_name = {t["name"]: t for t in tests}
    out: dict[str, Any] = {}
    for objective, metric in OBJECTIVES.items():
        ranked = sorted(candidates, key=lambda t: t["stats"][metric]["mean"])
        if not ranked:
            continue
        winner = ranked[0]
        judged_as = "size_bytes" if metric == "size_bytes" else "save_s"  # total_s is judged as a time
        entry: dict[str, Any] = {"test": winner["name"], "metric": metric, "mean": winner["stats"][metric]["mean"],
                                 "n": winner["stats"][metric]["n"], "ci95": winner["stats"][metric]["ci95"],
                                 "runner_up": None, "runner_up_mean": None, "comparison": None,
                                 "distinguishable": None}
        if len(ranked) > 1:
            second = ranked[1]
            # judged as a time (or a size): the runner-up against the winner
            comparison = analysis.compare(metric_runs(second["runs"], metric), metric_runs(winner["runs"], metric),
                                          metric=judged_as, noise_pct=noise_pct)
            entry.update(runner_up=second["name"], runner_up_mean=second["stats"][metric]["mean"],
                         comparison=comparison,
                         distinguishable=comparison["verdict"] in ("slower", "larger"))
        fastest_peer = min(peers, key=lambda t: t["stats"][metric]["mean"], default=None)
        against = {"baseline": by_name.get(baseline) if baseline != winner["name"] else None,
                   "peer": fastest_peer, "ceiling": by_name.get(CEILING)}
        entry["against"] = {role: None if other is None or other["stats"][metric]["n"] == 0 else
                            {"test": other["name"], "mean": other["stats"][metric]["mean"],
                             **analysis.compare(metric_runs(winner["runs"], metric), metric_runs(other["runs"], metric),
                                                metric=judged_as, noise_pct=noise_pct)}
                            for role, other in against.items()}
        entry["beaten_by"] = [t["name"] for t in sorted(peers, key=lambda t: t["stats"][metric]["mean"])
                              if t["stats"][metric]["mean"] < entry["mean"]]
        # the winner and the fastest peer are the least of these many means: the same runs flatter both
        entry["selected_from"] = {"tensorstore": len(candidates), "peer": len(peers)}
        out[objective] = entry
    return out


# --- reading and writing --------------------------------------------------------

class Results(Document):
    """A results document, as `ckptbench.run` returns it and `read` loads it."""

    @property
    def tests(self) -> list[dict[str, Any]]:
        return self.document["tests"]

    @property
    def best(self) -> dict[str, Any]:
        return self.document["best"]

    def test(self, name: str) -> dict[str, Any]:
        return next(t for t in self.tests if t["name"] == name)

    @property
    def failed_runs(self) -> int:
        return sum(t["failed_runs"] for t in self.tests)


def write(document: Mapping[str, Any], output_dir: Path) -> Path:
    """Write results.json atomically (a reader never sees half a file)."""
    return RESULTS.write(Path(output_dir) / RESULTS_FILE, document)


def read(path: Path | str) -> Results:
    """Read, upgrade and validate a results file of any version this tool has written."""
    return Results(RESULTS.read(path), Path(path))


def _upgrade_1_to_2(document: dict[str, Any]) -> dict[str, Any]:
    """Version 1 to 2: new raw fields get their version-1 meaning, then everything is derived again."""
    document["tool"].setdefault("commit", None)
    weights = document["weights"]
    weights.setdefault("values", "checkpoint" if weights.get("kind") == "directory" else "random")
    document["protocol"]["order"] = "interleaved"  # version 1 only ran interleaved rounds
    document["protocol"].setdefault("values", weights["values"])
    document["config"].setdefault("values", weights["values"])
    document["config"].setdefault("order", "interleaved")
    document["scale"] = {}
    for test in document["tests"]:
        test["kind"] = "reference" if test["settings"].get("backend", "tensorstore") != "tensorstore" else "tensorstore"
        test["settings"].setdefault("file_io_mode", "default")
        for run in test["runs"]:
            for key in ("save_rss_anon_bytes", "save_rss_file_bytes", "load_rss_anon_bytes", "load_rss_file_bytes",
                        "rss_anon_after_bytes", "resident_bytes_after_load", "patterns"):
                run.setdefault(key, None)
    return derive(document)


def _upgrade_4_to_5(document: dict[str, Any]) -> dict[str, Any]:
    """Version 4 to 5: one interval per summary (the symmetric `ci95` went below zero); the raw runs are kept, so
    everything is derived again, and the protocol says what the interval is now."""
    document["protocol"]["ci"] = CI_PROTOCOL
    return derive(document)


# Before its upgrade, an older document is checked only for the parts every version shares.
_SHARED = {"schema_version": "integer", "tool": "object", "complete": "boolean", "environment": "object",
           "config": "object", "weights": "object", "protocol": "object", "baseline": "string", "tests": "array"}


def _checked_first(version: int, upgrade: Upgrade) -> Upgrade:
    """An upgrade that first checks the parts every version shares (a damaged file is named, not upgraded)."""
    def checked(document: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        validator = jsonschema.Draft202012Validator({
            "type": "object", "required": list(_SHARED),
            "properties": {**{key: {"type": kind} for key, kind in _SHARED.items()},
                           "schema_version": {"const": version}}})
        problem = documents.schema_error(document, validator)
        if problem is not None:
            raise ValueError(f"not a valid version-{version} results file: {problem}")
        return upgrade(document)
    return checked


# Each upgrade gets a copy and Kind.upgrade stamps the new version; 2 to 3 only named the kind, 3 to 4 (one interval
# method for every change, the answer's comparisons, alerts and noise) kept the raw runs, so it derives them again.
_UPGRADES: dict[int, Upgrade] = {1: _upgrade_1_to_2, 2: lambda document: document, 3: derive, 4: _upgrade_4_to_5}
RESULTS = documents.Kind("results", SCHEMA_VERSION, "results.schema.json",
                         upgrades={v: _checked_first(v, upgrade) for v, upgrade in _UPGRADES.items()},
                         legacy_version=lambda document: document.get("schema_version"),
                         derived=(("run", records.RunRecord), ("settings", TestSpec)))
