"""What threatens a results document's answer, derived from its raw runs and statistics (`results.derive` calls these):
every warning in full (per test and for the suite), the alerts the console shows (most serious first, one short line
each) and how noisy the times are.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ckptbench.analysis import stats
from ckptbench.analysis.samples import measured_runs, samples
from ckptbench.core.units import human_bytes
from ckptbench.documents.ceiling import beaters, is_ceiling
from ckptbench.spec.references import REFERENCES

NOT_DURABLE = "not durable"


def metric_runs(runs: Iterable[Mapping[str, Any]], metric: str) -> list[float]:
    good = measured_runs(runs)
    if metric == "total_s":
        return [float(r["save_s"]) + float(r["load_s"]) for r in good]
    return [float(r[metric]) for r in good]


def test_warnings(test: Mapping[str, Any], mine: Mapping[str, list[float]]) -> list[str]:
    name = test["name"]
    out = [f"{name}: {w}" for metric in ("save_s", "load_s") for w in stats.warnings_for(metric, mine[metric])]
    settings = test["settings"]
    if not test["durable"]:
        why = ("it lives in memory and never reaches a disk" if settings.get("kvstore") == "memory"
               else "file_io_sync is off: data may still be in the page cache when the clock stops")
        out.append(f"{name}: its saves are {NOT_DURABLE}: {why}")
    cache = test["page_cache"]
    if cache and cache["claim_held"] is False:
        why = ("TensorStore read those chunk files buffered (it reads with O_DIRECT only files whose size is a "
               "multiple of 4096 bytes)" if settings.get("file_io_mode") == "direct" else
               "part of its reads went through the page cache")
        out.append(f"{name}: claims {cache['claim']} (reads around the page cache) but left up to "
                   f"{human_bytes(cache['claim_resident_bytes_max'])} ({cache['claim_resident_pct_max']:.0f}% of its "
                   f"bytes on disk) in the page cache after {cache['claim_broken_runs']} of {cache['claim_runs']} "
                   f"loads (limit {cache['limit_pct']:g}%): {why}; its load figures are partly buffered reads")
    parallel = test.get("tensor_parallel") or {}
    if parallel.get("unaccounted_bytes"):
        out.append(f"{name}: its readers' device reads sum to x{parallel['read_amplification']:.2f} of their slices: "
                   f"{human_bytes(parallel['unaccounted_bytes'])} of the slices came from no device read they were "
                   "counted for (pages an eviction left in the page cache, or read by another process); not a "
                   "saving: the row's read amplification is unknown")
    return out + [f"{name}: round {run['round']} failed: {run['error']}" for run in test["runs"]
                  if run["error"] is not None]


BYPASS_RESIDENT_LIMIT_PCT = 5.0  # a load that reads around the page cache may leave this much behind (metadata)


def bypass_claim(test: Mapping[str, Any]) -> str | None:
    """A row's claim to read around the page cache, in words (TensorStore's file_io_mode "direct", a reference
    kind's registry entry), or None."""
    settings = test.get("settings") or {}
    if settings.get("file_io_mode") == "direct":
        return 'file_io_mode "direct"'
    kind = settings.get("backend") or test["name"]
    if (settings.get("reference_settings") or {}).get("fs_strategy") == "sync_buffered":
        return None  # the streamer told to read through the page cache claims nothing
    return (REFERENCES[kind].bypass_claim or None) if kind in REFERENCES else None


def page_cache(test: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a row's loads left in the page cache right after each (None without a figure), and its claim to read around
    the cache checked run by run (held: no load left more than BYPASS_RESIDENT_LIMIT_PCT of its bytes on disk)."""
    runs = [r for r in test["runs"] if r["error"] is None and r.get("resident_bytes_after_load") is not None]
    claim = bypass_claim(test)
    # Files written before bypass_resident_bytes was recorded measured resident_bytes_after_load for claims only
    checked = [(r.get("bypass_resident_bytes", r.get("resident_bytes_after_load")), r["disk_bytes"])
               for r in test["runs"] if r["error"] is None and claim and r.get("disk_bytes")]
    checked = [(resident, disk) for resident, disk in checked if resident is not None]
    if not runs and not checked:
        return None
    pcts = [100.0 * resident / disk for resident, disk in checked]
    broken = sum(1 for pct in pcts if pct > BYPASS_RESIDENT_LIMIT_PCT)
    return {"resident_after_load_bytes_max": max((r["resident_bytes_after_load"] for r in runs), default=None),
            "claim": claim, "limit_pct": BYPASS_RESIDENT_LIMIT_PCT, "claim_runs": len(checked),
            "claim_resident_bytes_max": max((resident for resident, _ in checked), default=None),
            "claim_resident_pct_max": max(pcts, default=None), "claim_broken_runs": broken,
            "claim_held": broken == 0 if checked else None}


def suite_warnings(document: Mapping[str, Any], ceiling: Mapping[str, Any] | None) -> list[str]:
    tests, scale = document["tests"], document["scale"]
    runs = [r for t in tests for r in t["runs"] if r["error"] is None]
    out = []
    if scale.get("anon_peak_bytes") and scale["anon_peak_bytes"] > scale["anon_bound_bytes"]:
        out.append(f"anonymous memory peaked at {human_bytes(scale['anon_peak_bytes'])}, above the "
                   f"{human_bytes(scale['anon_bound_bytes'])} the harness keeps to (1.25 x the model + 1 GB); "
                   "the memory pre-check may let through a checkpoint that does not fit")
    warm = _warm_loads(document)
    if warm:
        out.append(f"{len(warm)} of {len(runs)} loads were not cold (the page cache still held the checkpoint): "
                   "their load times are optimistic. Run as root for drop_caches, or on a filesystem that honours "
                   "posix_fadvise (not tmpfs).")
    out += _ceiling_warnings(tests, ceiling)
    if scale.get("small_for_ram"):
        suggestion = scale.get("suggested_preset")
        hint = (f"; to avoid it on this machine, run a checkpoint of at least a quarter of RAM, e.g. {suggestion}"
                if suggestion else "; run a checkpoint of at least a quarter of RAM to avoid it")
        out.append(f"the checkpoint ({human_bytes(scale['model_bytes'])}) is under a quarter of this machine's RAM "
                   f"({human_bytes(scale['ram_bytes'])}): on a virtual machine the host may cache it below the OS, "
                   f"so 'cold' loads can be faster than the disk{hint}")
    out += [f"sweep point {s['name']} skipped: {s['reason']}" for s in document.get("skipped_tests", [])]
    out += [f"{t['name']} loads into {t['settings']['load_into']} arrays, not the suite's "
            f"{document['config']['load_into']}: {t['settings']['load_into_note']}" for t in elsewhere(document)]
    failed = sum(t["failed_runs"] for t in tests)
    if failed:
        out.append(f"{failed} run(s) failed and are excluded from the statistics; see each test's runs")
    return out + [w for t in tests for w in t["warnings"]]


def _warm_loads(document: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(test name, run) of each load that found the checkpoint in the page cache, unless its test asked for that
    (cache_eviction "none")."""
    requested = document["protocol"].get("cache_eviction_requested")
    return [(t["name"], r) for t in document["tests"] if (t["settings"].get("cache_eviction") or requested) != "none"
            for r in t["runs"] if r["error"] is None and r["load_cache"] in ("warm", "partial")]


NOISY_CV = 0.10  # stats.warnings_for's limit: a metric whose runs differ more is noisy


def alerts(document: Mapping[str, Any], ceiling: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The warnings that threaten the answer, one short line each, most serious first (the console prints these;
    `warnings` keeps every one in full)."""
    tests, scale = document["tests"], document["scale"]
    out: list[dict[str, Any]] = []
    beat_direct, direct = _faster_than_direct(tests, ceiling)
    if scale.get("small_for_ram") or beat_direct:
        why = []
        if scale.get("small_for_ram"):
            why.append(f"the checkpoint ({human_bytes(scale['model_bytes'])}) is {scale['model_pct_of_ram']:.1f}% "
                       "of RAM")
        if beat_direct:
            why.append(f"{_names(beat_direct)} loaded faster than the O_DIRECT read ({direct:.2f} GB/s)")
        fix = scale.get("suggested_preset")
        out.append({"kind": "host cache", "tests": beat_direct,
                    "text": f"host cache: {' and '.join(why)}: a VM host's cache may serve the 'cold' loads; "
                            "use a checkpoint of at least a quarter of RAM" + (f" ({fix})" if fix else "")})
    warm = sorted({name for name, _ in _warm_loads(document)})
    if warm:
        out.append({"kind": "warm loads", "tests": warm,
                    "text": f"warm loads: {_names(warm)} loaded with the checkpoint still in the page cache; run as "
                            "root (drop_caches) or on a filesystem that honours posix_fadvise"})
    by_round = ((ceiling or {}).get("ceiling") or {}).get("rounds") or {}
    for metric, what in (("save_gbps", "saved"), ("load_gbps", "loaded")):
        beaten = beaters(by_round, metric)
        if beaten:  # every such row, by name: % of ceiling is of the round's fastest figure, theirs
            rounds = len(by_round[metric])
            named = ", ".join(f"{name} ({len(r)} of {rounds} rounds)" for name, r in beaten.items())
            out.append({"kind": "ceiling beaten", "tests": list(beaten),
                        "text": f"ceiling beaten: {named} {what} faster than the device ceiling's own patterns in "
                                f"the same round; % of ceiling there is of their figure. {_BEATEN[metric]}"})
    broken = [t["name"] for t in tests if (t.get("page_cache") or {}).get("claim_held") is False]
    if broken:
        out.append({"kind": "page cache claim", "tests": broken,
                    "text": f"page cache claim broken: {', '.join(broken)} left more than "
                            f"{BYPASS_RESIDENT_LIMIT_PCT:g}% of their files in the page cache after a load meant to "
                            "read around it: their loads were partly buffered"})
    failed = [t["name"] for t in tests if t["failed_runs"]]
    if failed:
        count = sum(t["failed_runs"] for t in tests)
        out.append({"kind": "failed runs", "tests": failed,
                    "text": f"failed runs: {count} in {_names(failed)}, left out of the statistics"})
    skipped = [s["name"] for s in document.get("skipped_tests", [])]
    if skipped:
        out.append({"kind": "skipped", "tests": skipped,
                    "text": f"skipped: {_names(skipped)} ({document['skipped_tests'][0]['reason']})"})
    if scale.get("anon_peak_bytes") and scale["anon_peak_bytes"] > scale["anon_bound_bytes"]:
        out.append({"kind": "memory", "tests": [],
                    "text": f"memory: anonymous memory peaked at {human_bytes(scale['anon_peak_bytes'])}, above the "
                            f"{human_bytes(scale['anon_bound_bytes'])} bound (1.25 x the model + 1 GB)"})
    moved = [t for t in elsewhere(document) if not is_ceiling(t)]  # the ceiling's buffer is its design: no threat
    if moved:
        names = _names([t["name"] for t in moved])
        out.append({"kind": "other", "tests": [t["name"] for t in moved],
                    "text": f"destination: every row loads into {document['config']['load_into']} arrays but "
                            f"{names} ({moved[0]['settings']['load_into_note']})"})
    other = [t["name"] for t in tests if not t["durable"]]
    if other:
        out.append({"kind": "other", "tests": other,
                    "text": f"not durable: {_names(other)} (its saves may not reach the disk before the clock stops)"})
    return out


def elsewhere(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The rows whose destination (load_into) is not the suite's, each with why (spec.config: a row that cannot
    load so, or a test's own load_into); none in files from before every row's destination was recorded."""
    return [t for t in document["tests"] if t["settings"].get("load_into_note")]


def _low(summary: Mapping[str, Any]) -> float:
    """The lower end of a rate's interval (its mean without one): a row is past a limit only when that is."""
    interval = summary.get("ci95")
    return interval[0] if interval else summary["mean"]


def _names(names: list[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def noise(document: Mapping[str, Any]) -> dict[str, Any]:
    """How noisy the times are: the save and load times with a CV above 10 %, the outlier runs, and the runs that
    would pin the answer's rows (the winners' objective times and their comparisons) to +-5 % at 95 % confidence."""
    data_bytes = int(document["weights"]["size_bytes"])
    noisy, metrics, outliers = [], 0, 0
    for test in document["tests"]:
        mine = samples(test["runs"], data_bytes)
        for metric in ("save_s", "load_s"):
            if len(mine[metric]) < 2:
                continue
            metrics += 1
            cv = test["stats"][metric]["cv"]
            if cv is not None and abs(cv) > NOISY_CV:
                noisy.append(f"{test['name']} {metric}")
            outliers += len(stats.outlier_indices(mine[metric]))
    by_name = {t["name"]: t for t in document["tests"]}
    rows = _answer_rows(document, ("peer",))
    estimates = [stats.runs_needed(metric_runs(by_name[name]["runs"], metric)) for name, metric in rows.items()]
    needed = [n for n in estimates if n is not None]
    return {"cv_limit_pct": 100 * NOISY_CV, "noisy": noisy, "n_metrics": metrics, "outliers": outliers,
            "answer_rows": list(rows), "precision_pct": 5.0, "runs_for_precision": max(needed) if needed else None,
            "runs": document["protocol"]["num_runs"]}


# What a row faster than the ceiling's own patterns means, per rate.
_BEATEN = {"save_gbps": "Either those saves were not all durable when the clock stopped, or the ceiling's patterns "
                        "miss what this disk does best",
           "load_gbps": "Either a cache (the page cache or the host's, below this VM) served part of those reads, or "
                        "the ceiling's patterns miss what this disk does best"}


def _ceiling_warnings(tests: list[Mapping[str, Any]], ceiling: Mapping[str, Any] | None) -> list[str]:
    if ceiling is None:
        return []
    out = []
    by_round = (ceiling.get("ceiling") or {}).get("rounds") or {}
    for metric, what in (("save_gbps", "saved"), ("load_gbps", "loaded")):
        entries = {entry["round"]: entry for entry in by_round.get(metric, [])}
        for name, rounds in beaters(by_round, metric).items():
            margin = max(entries[r]["beaten_by"][name] / entries[r]["ceiling_gbps"] - 1 for r in rounds)
            out.append(f"{name} {what} faster than the device ceiling's own patterns in round(s) "
                       f"{', '.join(str(r) for r in rounds)} of {len(entries)} (by up to {100 * margin:.0f}%): its "
                       f"% of ceiling is of its own figure there. {_BEATEN[metric]}; treat its figure as optimistic "
                       "and check it on a checkpoint of at least a quarter of RAM")
    faster, direct = _faster_than_direct(tests, ceiling)
    if faster:
        names = ", ".join(faster[:4]) + (" and others" if len(faster) > 4 else "")
        out.append(f"cold loads of {names} ran faster than the O_DIRECT read of the same bytes "
                   f"({direct:.2f} GB/s): a cache below the OS (the VM host's) is probably serving "
                   "them, so these load times flatter a real disk; use a checkpoint of at least a quarter of RAM")
    return out


def _faster_than_direct(tests: list[Mapping[str, Any]], ceiling: Mapping[str, Any] | None) -> tuple[list[str], float]:
    """The rows whose loads were all cold and faster (the low end of their interval) than the ceiling's O_DIRECT
    read, and that read's mean GB/s (0: none measured)."""
    direct = float((((ceiling or {}).get("ceiling") or {}).get("direct_load_gbps") or {}).get("mean") or 0.0)
    return [t["name"] for t in tests if direct and not is_ceiling(t) and t["stats"]["load_gbps"]["mean"] is not None
            and {r["load_cache"] for r in t["runs"] if r["error"] is None} == {"cold"}
            and _low(t["stats"]["load_gbps"]) > direct], direct


def _answer_rows(document: Mapping[str, Any], roles: tuple[str, ...]) -> dict[str, str]:
    """The rows the answer's times rest on (sizes do not depend on the machine's load), each with its first metric: each
    time objective's TensorStore winner and what it is compared with in `roles` ("baseline", "peer", "ceiling")."""
    rows: dict[str, str] = {}
    for entry in (document.get("best") or {}).values():
        against = entry.get("against") or {}
        for name in (entry["test"], *((against.get(role) or {}).get("test") for role in roles)):
            if name is not None and entry["metric"] != "size_bytes":
                rows.setdefault(name, entry["metric"])
    return rows


def busy(document: Mapping[str, Any]) -> dict[str, Any]:
    """Over the suite's measured runs: the timed operations that found the machine busy (analysis.busy), what the
    other processes did during them, the rows with one (the answer's among them) and the host's load averages."""
    def total(key: str) -> Any:
        return sum(t["busy"][key] for t in document["tests"])

    rows = [t["name"] for t in document["tests"] if t["busy"]["operations"]]
    return {"operations": total("operations"), "timed": total("timed"), "not_measured": total("not_measured"),
            "other_cpu_pct": 100.0 * total("other_cpu_s") / total("seconds") if total("seconds") else None,
            "other_read_bytes": total("other_read_bytes"), "other_write_bytes": total("other_write_bytes"),
            "tests": rows, "answer_tests": [name for name in _answer_rows(document, ("baseline", "peer", "ceiling"))
                                            if name in rows],
            "host_load": (document.get("environment") or {}).get("host_load")}
