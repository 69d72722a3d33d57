"""`compare A.json B.json`, run through the real CLI entry point on synthetic results files.

The files are made by `results.build` from hand-written run records (known values, the
exact structure a suite writes) and written with `results.write`; no benchmark runs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ckptbench.cli import app as cli
from ckptbench.core.records import RunRecord
from ckptbench.documents import results
from ckptbench.spec import config

WEIGHTS = {"kind": "preset", "name": "tiny", "dtype": "float32", "n_tensors": 3, "n_params": 1_000_000,
           "size_bytes": 4_000_000}
ENVIRONMENT = {"timestamp": "2025-01-01T00:00:00+00:00", "cpu_model": "test cpu", "cpu_count": 2,
               "ram_bytes": 2**33, "filesystem": {"mount": "/", "type": "ext4", "device": "/dev/x"}}
RUNS_S = [1.00, 1.02, 0.98, 1.01, 0.99]  # mean 1.0, ~1.6 % noise
SLOWER_S = [2 * s for s in RUNS_S]
SIZE = 5_000_000


def make_document(times_s: dict[str, list[float]], size_bytes: int = SIZE, weights: dict | None = None,
                  environment: dict | None = None) -> dict[str, Any]:
    """Test t has one run per value in times_s[t], with save_s = load_s = that value."""
    names = list(times_s)
    suite = config.SuiteConfig(
        tests=tuple(config.TestSpec(name=n, concurrency_limit=1, chunk_size_elements=16384) for n in names),
        baseline=names[0], output_dir=Path("/nonexistent"))
    records = [RunRecord(test=name, round=i, position=0, warmup=False, save_s=s, load_s=s, size_bytes=size_bytes,
                         n_files=10, eviction="drop_caches", load_cache="cold", verified=True)
               for name, values in times_s.items() for i, s in enumerate(values)]
    return results.build(suite, weights or WEIGHTS, records, environment or ENVIRONMENT, seed=1, complete=True)


@pytest.fixture
def save(tmp_path):
    """save(document, name) -> path of results.json written in its own folder under tmp_path."""

    def write(document: dict, name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        return results.write(document, folder)

    return write


@pytest.fixture
def compare(capsys):
    """compare(*args) -> (exit status, stdout, stderr) of `run_phase4_streamlined.py compare ...`."""

    def run(*args: Any) -> tuple[int, str, str]:
        capsys.readouterr()
        status = cli.main(["compare", *map(str, args)])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def _row(out: str, test: str, metric: str) -> str:
    rows = [line for line in out.splitlines() if line.split()[:2] == [test, metric]]
    assert len(rows) == 1, out
    return rows[0]


# --- table and verdicts -------------------------------------------------------

def test_clear_2x_slowdown_is_slower(save, compare):
    a = save(make_document({"base": RUNS_S, "fast": RUNS_S}), "a")
    b = save(make_document({"base": RUNS_S, "fast": SLOWER_S}), "b")
    status, out, err = compare(a, b)
    assert status == 0 and err == ""
    for metric in ("save_s", "load_s"):
        row = _row(out, "fast", metric)
        assert "+100.0%" in row and "slower" in row
        assert "1.00 s +- 0.02 s (n=5)" in row and "2.00 s +- 0.03 s (n=5)" in row
    assert "within noise" in _row(out, "fast", "size_bytes") and "5.00 MB" in _row(out, "fast", "size_bytes")
    assert "within noise" in _row(out, "base", "save_s")
    # the answer first: what changed, and the largest regression with its ratio and interval
    answer = out.splitlines()[3:5]
    assert answer[0].startswith("Answer: B against A, 6 figures: 0 better, 2 worse, 4 unchanged")
    assert answer[1].startswith("  largest regression: fast save_s 2.0x slower than in A (95% CI 1.95-2.05x)")
    assert "A's own answer" not in out and "A's own answer" in compare(a, b, "--details")[1]


def test_identical_files_are_within_noise(save, compare):
    a = save(make_document({"base": RUNS_S, "fast": [0.5, 0.51, 0.49]}), "a")
    status, out, _ = compare(a, a)
    assert status == 0
    verdicts = [_row(out, t, m) for t in ("base", "fast") for m in ("save_s", "load_s", "size_bytes")]
    assert all("+0.0%" in row and "within noise" in row for row in verdicts)
    assert "within noise (weak: 3 runs)" in _row(out, "fast", "save_s")  # 3 runs: flagged as a weak test


def test_faster_and_smaller_are_named(save, compare):
    a = save(make_document({"base": SLOWER_S}, size_bytes=2 * SIZE), "a")
    b = save(make_document({"base": RUNS_S}, size_bytes=SIZE), "b")
    out = compare(a, b)[1]
    assert "-50.0%" in _row(out, "base", "save_s") and "faster" in _row(out, "base", "save_s")
    assert "smaller" in _row(out, "base", "size_bytes")


def test_noise_pct_flag_widens_within_noise(save, compare):
    a = save(make_document({"base": RUNS_S}), "a")
    b = save(make_document({"base": [1.1 * s for s in RUNS_S]}), "b")
    assert "slower" in _row(compare(a, b)[1], "base", "save_s")
    assert "within noise" in _row(compare(a, b, "--noise-pct", 15)[1], "base", "save_s")


def test_markdown_is_a_github_table(save, compare):
    a = save(make_document({"base": RUNS_S, "fast": RUNS_S}), "a")
    b = save(make_document({"base": RUNS_S, "fast": SLOWER_S}), "b")
    status, out, _ = compare(a, b, "--format", "markdown")
    lines = out.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert status == 0 and len(table) == 2 + 6  # header, delimiter, 2 tests x 3 metrics
    start = lines.index(table[0])
    assert lines[start - 1] == "" and set(lines[start + 1]) <= set("|-")  # blank line, then a delimiter row
    assert {line.count("|") for line in table} == {9}  # 8 columns in every row, nothing escaped the cells
    assert any("| fast | save_s |" in line and "slower" in line for line in table)


# --- tests in one file only, no common test ---------------------------------

def test_tests_in_one_file_only_are_listed(save, compare):
    a = save(make_document({"base": RUNS_S, "old_only": RUNS_S}), "a")
    b = save(make_document({"base": RUNS_S, "new_only": RUNS_S, "newer_only": RUNS_S}), "b")
    status, out, _ = compare(a, b)
    assert status == 0
    assert "Only in A, not compared: old_only" in out
    assert "Only in B, not compared: new_only, newer_only" in out
    assert not any(line.startswith(("old_only", "new_only")) for line in out.splitlines())


def test_no_common_test_is_an_error(save, compare):
    a = save(make_document({"one": RUNS_S}), "a")
    b = save(make_document({"two": RUNS_S}), "b")
    status, out, err = compare(a, b)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and "no test in common" in err


# --- refusals: schema, bad flags ---------------------------------------------

def test_unknown_schema_version_is_refused_in_one_line(save, compare, tmp_path):
    a = save(make_document({"base": RUNS_S}), "a")
    future = json.loads(a.read_text())
    future["schema_version"] = results.SCHEMA_VERSION + 1
    b = tmp_path / "future.json"
    b.write_text(json.dumps(future))
    status, out, err = compare(a, b)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "schema_version" in err and str(b) in err


@pytest.mark.parametrize("args", [["--fail-on-regression", "ten"], ["--noise-pct", "-1"], ["--format", "html"],
                                  ["--bogus"]])
def test_bad_flags_are_one_line_errors(save, compare, args):
    a = save(make_document({"base": RUNS_S}), "a")
    status, out, err = compare(a, a, *args)
    assert status == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: ")


def test_missing_file_is_one_line_error(save, compare, tmp_path):
    a = save(make_document({"base": RUNS_S}), "a")
    status, _, err = compare(a, tmp_path / "nope.json")
    assert status == 2 and err.count("\n") == 1 and "nope.json" in err


# --- warnings when A and B measure different things ---------------------------

def test_no_warnings_for_the_same_setup(save, compare):
    a = save(make_document({"base": RUNS_S}), "a")
    b = save(make_document({"base": SLOWER_S}), "b")
    assert compare(a, b)[2] == ""


def test_warns_when_model_dtype_or_machine_differ(save, compare):
    other_weights = {**WEIGHTS, "name": "small", "n_params": 2_000_000, "dtype": "bfloat16"}
    other_env = copy.deepcopy(ENVIRONMENT)
    other_env.update(cpu_model="other cpu", cpu_count=8, ram_bytes=2**34)
    other_env["filesystem"]["type"] = "xfs"
    a = save(make_document({"base": RUNS_S}), "a")
    b = save(make_document({"base": RUNS_S}, weights=other_weights, environment=other_env), "b")
    status, out, err = compare(a, b)
    lines = err.splitlines()
    assert status == 0 and "base" in out  # warned about, still compared
    assert all(line.startswith("warning: ") for line in lines)
    for words in (["models differ", "name", "'tiny'", "'small'"], ["models differ", "n_params"],
                  ["dtypes differ", "'float32'", "'bfloat16'"], ["machines differ", "cpu_model", "other cpu"],
                  ["machines differ", "cpu_count", "8"], ["machines differ", "ram_bytes"],
                  ["machines differ", "filesystem type", "'xfs'"]):
        assert sum(all(w in line for w in words) for line in lines) == 1, (words, err)


def test_warns_when_a_test_changed_its_settings(save, compare):
    a_doc = make_document({"base": RUNS_S})
    b_doc = copy.deepcopy(a_doc)
    b_doc["tests"][0]["settings"]["concurrency_limit"] = 64
    status, _, err = compare(save(a_doc, "a"), save(b_doc, "b"))
    assert status == 0 and err.count("\n") == 1 and "test base: settings differ: concurrency_limit 1 in A, 64 in B" in err


# --- --fail-on-regression -------------------------------------------------------

def test_fail_on_regression_exits_1_on_a_real_slowdown(save, compare):
    a = save(make_document({"base": RUNS_S, "fast": RUNS_S}), "a")
    b = save(make_document({"base": RUNS_S, "fast": SLOWER_S}), "b")
    status, out, _ = compare(a, b, "--fail-on-regression", 10)
    assert status == 1
    regressions = out[out.index("Regressions beyond 10%"):].splitlines()[1:]
    assert [line.split(":")[0].strip() for line in regressions] == ["fast save_s", "fast load_s"]


def test_fail_on_regression_counts_size_growth(save, compare):
    a = save(make_document({"base": RUNS_S}), "a")
    b = save(make_document({"base": RUNS_S}, size_bytes=2 * SIZE), "b")
    status, out, _ = compare(a, b, "--fail-on-regression", 10)
    assert status == 1 and "base size_bytes: +100.0% larger" in out


def test_fail_on_regression_exits_0_without_one(save, compare):
    a = save(make_document({"base": RUNS_S, "fast": RUNS_S}), "a")
    faster = save(make_document({"base": RUNS_S, "fast": [s / 2 for s in RUNS_S]}), "faster")
    slower = save(make_document({"base": RUNS_S, "fast": SLOWER_S}), "slower")
    assert compare(a, faster, "--fail-on-regression", 10)[0] == 0
    assert compare(a, a, "--fail-on-regression", 0)[0] == 0
    # A +100 % slowdown is below a 150 % threshold.
    status, out, _ = compare(a, slower, "--fail-on-regression", 150)
    assert status == 0 and "Regressions" not in out


def test_insignificant_slowdown_is_not_a_regression(save, compare):
    a = save(make_document({"base": [1.0, 3.0, 2.0]}), "a")
    b = save(make_document({"base": [1.5, 3.5, 2.5]}), "b")  # +25 %, far inside the noise of 3 runs
    status, out, _ = compare(a, b, "--fail-on-regression", 10)
    assert status == 0 and "no significant difference" in _row(out, "base", "save_s")


def test_two_runs_are_too_few_for_an_interval_or_a_verdict(save, compare):
    a = save(make_document({"base": [1.0, 3.0]}), "a")
    b = save(make_document({"base": [1.5, 3.5]}), "b")  # +25 % with 2 runs a side: no interval means anything
    status, out, _ = compare(a, b, "--fail-on-regression", 10)
    row = _row(out, "base", "save_s")
    assert status == 0 and "+25.0%" in row and row.count("too few runs") == 2 and "[" not in row
    assert "weak" not in row
    assert "[+0.0, +0.0]" in _row(out, "base", "size_bytes")  # sizes without spread keep their exact ratio
