"""Figures and report tables drawn from synthetic results documents (no benchmark is run).

Documents are made by `results.build` from hand-written run records, so they have
exactly the structure a real suite writes, with run values chosen by the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptbench.core.records import RunRecord
from ckptbench.documents import results
from ckptbench.figures import claims, main
from ckptbench.reports import results as report
from ckptbench.spec import config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WEIGHTS = {"kind": "preset", "name": "tiny", "dtype": "float32", "n_tensors": 3, "n_params": 1_000_000,
           "size_bytes": 4_000_000}
ENVIRONMENT = {"cpu_model": "test cpu", "cpu_count": 2, "ram_bytes": 2**33, "filesystem": {"type": "ext4"}}


def make_document(times_s: dict[str, list[float | None]], expected: dict[str, dict] | None = None,
                  size_bytes: int = 4_000_000) -> dict:
    """A results document whose test t has runs with save_s = load_s = times_s[t][i] (None: a failed run)."""
    expected = expected or {}
    names = list(times_s)
    suite = config.SuiteConfig(
        tests=tuple(config.TestSpec(name=n, concurrency_limit=1, chunk_size_elements=16384, expected=expected.get(n))
                    for n in names),
        baseline=names[0], output_dir=Path("/nonexistent"))
    records = []
    for name, values in times_s.items():
        for i, seconds in enumerate(values):
            ok = seconds is not None
            records.append(RunRecord(
                test=name, round=i, position=0, warmup=False, save_s=seconds, load_s=seconds,
                size_bytes=size_bytes if ok else None, n_files=10 if ok else None,
                eviction="drop_caches" if ok else None, load_cache="cold" if ok else None,
                verified=ok or None, error=None if ok else "OSError: disk full"))
    return results.build(suite, WEIGHTS, records, ENVIRONMENT, seed=1, complete=True)


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


# --- draw_claims -------------------------------------------------------------

def test_draw_claims_writes_png_for_claims(tmp_path):
    document = make_document(
        {"base": [1.0, 1.1, 0.9, 1.0], "fast": [0.5, 0.55, 0.45, 0.5], "slow": [2.0, 2.1, 1.9, 2.0]},
        expected={"fast": {"save_pct": [-55, -45], "load_pct": [-10, -5]}, "slow": {"save_pct": [-10, 0]}})
    outcomes = {c["outcome"] for t in document["tests"] for c in t["claims"]}
    assert {"confirmed", "contradicted"} <= outcomes  # the figure has more than one colour to show
    path = claims.draw_claims(document, tmp_path / claims.CLAIMS_FILE)
    assert path == tmp_path / "claims_check.png"
    assert _is_png(path)


def test_draw_claims_copes_with_claims_without_ci(tmp_path):
    document = make_document({"base": [1.0], "fast": [0.5]}, expected={"fast": {"save_pct": [-55, -45]}})
    claim = document["tests"][1]["claims"][0]
    assert claim["ci_pct"] is None and claim["outcome"] == "inconclusive"
    assert _is_png(claims.draw_claims(document, tmp_path / claims.CLAIMS_FILE))


def test_draw_claims_returns_none_without_claims(tmp_path):
    document = make_document({"base": [1.0, 1.1], "other": [0.5, 0.6]})
    assert claims.draw_claims(document, tmp_path / claims.CLAIMS_FILE) is None
    assert not (tmp_path / claims.CLAIMS_FILE).exists()


# --- draw -------------------------------------------------------------------

def test_draw_many_long_named_tests(tmp_path):
    names = ["baseline"] + [f"sweep_chunk={kb}KB_conc={c}_comp=zstd-3" for kb in (64, 256, 1024, 4096, 16384)
                            for c in (1, 8, 32, 128)][:19]
    times = {n: [1.0 + 0.05 * i, 1.05 + 0.05 * i, 0.95 + 0.05 * i] for i, n in enumerate(names)}
    path = main.draw(make_document(times), tmp_path / main.PLOT_FILE)
    assert len(names) == 20 and _is_png(path)


def test_draw_failed_test_and_single_run(tmp_path):
    document = make_document({"base": [1.0, 1.1, 0.9], "broken": [None, None, None], "once": [0.7]})
    broken, once = document["tests"][1], document["tests"][2]
    assert broken["stats"]["save_s"]["mean"] is None and broken["vs_baseline"]["save_s"]["change_pct"] is None
    assert once["stats"]["save_s"]["n"] == 1 and once["stats"]["save_s"]["ci95"] is None
    assert _is_png(main.draw(document, tmp_path / main.PLOT_FILE))


# --- report -------------------------------------------------------------------

def test_significance_verdict_says_when_the_test_is_weak():
    few = report.significance_table(make_document({"base": [1.0, 1.1, 0.9], "fast": [0.5, 0.55, 0.45]}))
    many = report.significance_table(make_document({"base": [1.0, 1.1, 0.9, 1.0, 1.05],
                                                    "fast": [0.5, 0.55, 0.45, 0.5, 0.52]}))
    assert "faster (weak: 3 runs)" in few
    assert "faster" in many and "weak" not in many


@pytest.mark.parametrize("cell", ["a|b", "two\nlines"])
def test_markdown_table_cells_cannot_break_the_table(cell):
    lines = report.table(["x", "y"], [[cell, "z"]], "markdown").splitlines()
    assert len(lines) == 3
    # Unescaped pipes delimit cells: every row has exactly as many as the header.
    assert {line.replace("\\|", "").count("|") for line in lines} == {3}


def test_full_report_markdown_separates_captions_from_tables():
    document = make_document({"base": [1.0, 1.1, 0.9], "fast": [0.5, 0.55, 0.45]},
                             expected={"fast": {"save_pct": [-55, -45]}})
    lines = report.full_report(document, "markdown").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            assert lines[i - 1].startswith("| ") and lines[i - 2] == "", "a table must follow a blank line"
