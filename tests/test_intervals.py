"""One interval per summary in the files: `ci95` of a positive quantity is the mean's interval on the log scale, so
no time, size, rate or memory figure has an interval below zero, in results.json, in `compare`'s rows and in a
version-4 file read back (whose symmetric intervals did reach below zero)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import REPO, minimal_config
from scipy.stats import t as student_t

import ckptbench
from ckptbench.analysis import versus
from ckptbench.analysis.samples import samples
from ckptbench.documents import results

V4_FIXTURE = REPO / "tests" / "fixtures" / "results_v4.json"
TIMES = ("save_s", "load_s", "total_s")


def _summaries(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every summary (a mapping with a `ci95`) anywhere in a document, with where it is."""
    if isinstance(node, dict):
        if "ci95" in node and "n" in node:
            yield path, node
        for key, value in node.items():
            yield from _summaries(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _summaries(value, f"{path}[{index}]")


def _log_interval(values: list[float]) -> list[float]:
    """The mean's 95 % interval on the log scale, from the runs: mean * exp(+- t(n-1) * cv / sqrt(n))."""
    n, mean = len(values), sum(values) / len(values)
    cv = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / mean
    half = student_t.ppf(0.975, n - 1) * cv / math.sqrt(n)
    return [mean * math.exp(-half), mean * math.exp(half)]


def test_a_tiny_runs_file_holds_one_interval_per_figure_and_none_below_zero(tmp_path):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(minimal_config(testing={"num_runs": 3, "cache_eviction": "fadvise"})))
    ran = ckptbench.run(ckptbench.load_config(path, output_dir=tmp_path / "out"))
    assert not ran.failed_runs
    document = json.loads((tmp_path / "out" / results.RESULTS_FILE).read_text())
    assert "ci95_log" not in json.dumps(document)
    summaries = list(_summaries(document))
    intervals = [(where, s["ci95"]) for where, s in summaries if s["ci95"] is not None]
    assert len(intervals) >= 2 * len(TIMES)  # three runs each: every time has an interval
    assert [where for where, (low, _) in intervals if low < 0] == []
    data_bytes = document["weights"]["size_bytes"]
    for test in document["tests"]:
        runs = samples(test["runs"], data_bytes)
        for metric in TIMES:
            assert test["stats"][metric]["ci95"] == pytest.approx(_log_interval(runs[metric])), (test["name"], metric)
    # compare's rows summarise the same runs by the same method
    rows = versus.compare_documents(document, document, noise_pct=5.0)
    by_name = {t["name"]: t for t in document["tests"]}
    for row in rows:
        assert row["a"]["ci95"] == row["b"]["ci95"] == by_name[row["test"]]["stats"][row["metric"]]["ci95"]


def test_a_version_4_file_read_back_has_the_log_interval_in_place_of_the_symmetric_one():
    old = json.loads(V4_FIXTURE.read_text())
    assert old["schema_version"] == 4
    noisy = next(t for t in old["tests"] if t["name"] == "noisy")
    assert noisy["stats"]["save_s"]["ci95"][0] < 0 and noisy["stats"]["load_s"]["ci95"][0] < 0  # what it fixes
    assert noisy["stats"]["save_cpu_s"]["ci95"][0] < 0  # a CPU time of 0 among its runs

    document = results.read(V4_FIXTURE).document
    assert document["schema_version"] == results.SCHEMA_VERSION == 5
    assert "ci95_log" not in json.dumps(document)
    assert [where for where, s in _summaries(document) if s["ci95"] is not None and s["ci95"][0] < 0] == []
    upgraded = next(t for t in document["tests"] if t["name"] == "noisy")
    assert upgraded["runs"] == noisy["runs"]  # the raw runs are kept; the interval is derived from them again
    runs = samples(upgraded["runs"], document["weights"]["size_bytes"])
    for metric in TIMES:
        assert upgraded["stats"][metric]["ci95"] == pytest.approx(_log_interval(runs[metric])), metric
    assert upgraded["stats"]["save_s"]["ci95"] == pytest.approx(noisy["stats"]["save_s"]["ci95_log"])
    # a CPU time of 0 cannot go on the log scale: the Student-t interval, cut at 0
    cpu = runs["save_cpu_s"]
    mean = sum(cpu) / 3
    half = student_t.ppf(0.975, 2) * math.sqrt(sum((v - mean) ** 2 for v in cpu) / 2) / math.sqrt(3)
    assert upgraded["stats"]["save_cpu_s"]["ci95"] == pytest.approx([0.0, mean + half])
    assert results.RESULTS.upgrade(document) == document  # read again: nothing left to change


def test_the_version_4_fixture_is_a_file_the_previous_version_wrote(tmp_path: Path):
    """The fixture went through that version's writer: its kind, version and tool are stamped as it stamps them."""
    old = json.loads(V4_FIXTURE.read_text())
    assert (old["kind"], old["schema_version"], old["tool"]["commit"]) == ("results", 4, "d6eab73")
    assert all({"ci95", "ci95_log"} <= set(s) for _, s in _summaries(old["tests"]))
