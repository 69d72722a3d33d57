"""The device ceiling, round by round: what "% of ceiling" is a share of, and which rows beat the ceiling.

A row faster than the ceiling's own patterns in a round shows the patterns missed what the disk can do (or that a cache
flattered the row): it is named, and the round's ceiling becomes its figure. Each row's "% of ceiling" is the mean over
rounds of its share of its round's ceiling, so it never exceeds 100 % and a round's noise is shared by the row and its
ceiling alike (PHASE4_GUIDE.md, section 4.7). Only figures of the device count (`device_figure`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

from ckptbench.analysis.samples import measured_runs
from ckptbench.spec.references import CEILING

# Each rate: its run's seconds, and whether a run's figure is the device's.
_SECONDS: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "save_gbps": lambda run: float(run["save_s"]),
    "load_gbps": lambda run: float(run["load_s"]),
    "total_gbps": lambda run: float(run["save_s"]) + float(run["load_s"]),  # save + load as one speed
}
RATES = tuple(_SECONDS)
_NOT_THE_DEVICE = ("memory", "warm")  # load_cache values whose loads did not read the disk


def is_ceiling(test: Mapping[str, Any]) -> bool:
    """The device ceiling's row, or another of its points (its tp > 1 reads, `device_ceiling_tp=N`)."""
    return test["name"] == CEILING or (test.get("settings") or {}).get("backend") == CEILING


def device_figure(test: Mapping[str, Any], run: Mapping[str, Any], rate: str) -> bool:
    """Whether a run's figure is the device's: a durable save, a load that read the disk (both, for total)."""
    save = bool(test["durable"])
    load = run.get("load_cache") not in _NOT_THE_DEVICE
    return {"save_gbps": save, "load_gbps": load}.get(rate, save and load)


def _measured(test: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in measured_runs(test["runs"]) if r.get("save_s") and r.get("load_s")]


def _gbps(run: Mapping[str, Any], rate: str, data_bytes: int) -> float:
    return data_bytes / 1e9 / _SECONDS[rate](run)


def rounds(tests: Iterable[Mapping[str, Any]], data_bytes: int) -> dict[str, list[dict[str, Any]]]:
    """Per rate, each measured round with a ceiling run: the ceiling's own figure and pattern, the round's fastest
    figure (its ceiling) and whose it is, and every row that beat the ceiling's own (`beaten_by`)."""
    tests = list(tests)
    out: dict[str, list[dict[str, Any]]] = {}
    for rate in RATES:
        own: dict[int, tuple[float, str | None]] = {}
        rows: dict[int, dict[str, float]] = {}
        for test in tests:
            for run in _measured(test):
                gbps = _gbps(run, rate, data_bytes)
                if is_ceiling(test):
                    if gbps > own.get(run["round"], (0.0, None))[0]:
                        own[run["round"]] = (gbps, _fastest_pattern(run, rate))
                elif device_figure(test, run, rate):
                    rows.setdefault(run["round"], {})[test["name"]] = gbps
        out[rate] = []
        for number in sorted(own):
            ceiling_gbps, pattern = own[number]
            beaters = {name: gbps for name, gbps in rows.get(number, {}).items() if gbps > ceiling_gbps}
            fastest = max(beaters, key=beaters.__getitem__, default=None)
            out[rate].append({"round": number, "ceiling_gbps": ceiling_gbps, "ceiling_pattern": pattern,
                              "fastest_gbps": beaters[fastest] if fastest else ceiling_gbps,
                              "fastest": fastest or CEILING,
                              "beaten_by": dict(sorted(beaters.items(), key=lambda item: -item[1]))})
    return out


def _fastest_pattern(run: Mapping[str, Any], rate: str) -> str | None:
    op = {"save_gbps": "save", "load_gbps": "load"}.get(rate)
    patterns = ((run.get("patterns") or {}).get(op) or {}) if op else {}
    return min(patterns, key=patterns.__getitem__) if patterns else None


def round_percents(test: Mapping[str, Any], by_round: Mapping[str, Sequence[Mapping[str, Any]]], data_bytes: int
                   ) -> dict[str, list[float]]:
    """Per rate, a test's figure in each round as a % of that round's ceiling (`rounds`), where both exist."""
    out = {}
    for rate in RATES:
        limit = {entry["round"]: entry["fastest_gbps"] for entry in by_round.get(rate, [])}
        out[rate] = [100.0 * (_gbps(run, rate, data_bytes) / limit[run["round"]]) for run in _measured(test)
                     if run["round"] in limit and (is_ceiling(test) or device_figure(test, run, rate))]
    return out


def pct_of_ceiling(test: Mapping[str, Any], by_round: Mapping[str, Sequence[Mapping[str, Any]]], data_bytes: int
                   ) -> dict[str, float | None]:
    """Per rate, the mean over rounds of a test's % of each round's ceiling (None without a round to judge)."""
    return {rate: (sum(values) / len(values) if values else None)
            for rate, values in round_percents(test, by_round, data_bytes).items()}


def pooled_pct_of_ceiling(documents: Iterable[Mapping[str, Any]], name: str) -> dict[str, float | None]:
    """A test's % of ceiling over several results documents (tune's stages): every round of each, pooled."""
    pooled: dict[str, list[float]] = {rate: [] for rate in RATES}
    for document in documents:
        data_bytes = int(document["weights"]["size_bytes"])
        test = next((t for t in document["tests"] if t["name"] == name), None)
        if test is None:
            continue
        by_round = rounds(document["tests"], data_bytes)
        for rate, values in round_percents(test, by_round, data_bytes).items():
            pooled[rate] += values
    return {rate: (sum(values) / len(values) if values else None) for rate, values in pooled.items()}


def beaters(by_round: Mapping[str, Sequence[Mapping[str, Any]]], rate: str) -> dict[str, list[int]]:
    """Every row that beat the ceiling's own patterns in a round, with those rounds, in the order first met."""
    out: dict[str, list[int]] = {}
    for entry in by_round.get(rate, []):
        for name in entry["beaten_by"]:
            out.setdefault(name, []).append(entry["round"])
    return out
