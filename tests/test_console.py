"""The answer first: the default console's shape, the one interval method everywhere it is shown, "too few runs"
with two runs, the fastest peer beside TensorStore's best, and `--details` keeping everything.

Documents are made by `results.build` from hand-written run records (the structure a real suite writes, with
run values chosen by the test); the default run's own console is checked in test_cli.py on a real tiny run.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from ckptbench.analysis import versus
from ckptbench.core.records import RunRecord
from ckptbench.documents import results
from ckptbench.documents.store import Document
from ckptbench.figures import claims, main
from ckptbench.reports import compare as compare_report
from ckptbench.reports import results as report
from ckptbench.spec import config

V1_FIXTURE = REPO / "tests" / "fixtures" / "results_v1.json"
WEIGHTS = {"kind": "preset", "name": "tiny", "dtype": "float32", "n_tensors": 3, "n_params": 1_000_000,
           "size_bytes": 4_000_000}
ENVIRONMENT = {"timestamp": "2025-01-01T00:00:00", "cpu_model": "test cpu", "cpu_count": 2, "ram_bytes": 2**33,
               "filesystem": {"type": "ext4"}}
# A noisy baseline (CV 91 %, as measured on a busy VM): Fieller's interval of a change against it reached
# below -100 %; times that cannot be negative must give changes that cannot pass -100 %.
NOISY = [13.0, 2.5, 27.7]
PEER = "runai_streamer"


def make_document(times_s: dict[str, list[float]], expected: dict[str, dict] | None = None,
                  sizes: dict[str, int] | None = None, load_times_s: dict[str, list[float]] | None = None) -> dict:
    """Test t has runs with save_s = times_s[t][i] (load_s the same unless load_times_s gives it); a name that
    is a reference kind (runai_streamer, device_ceiling, ...) is that reference row."""
    from ckptbench.spec.references import REFERENCES

    expected, sizes, load_times_s = expected or {}, sizes or {}, load_times_s or {}
    names = list(times_s)
    tests = tuple(config.TestSpec(name=n, concurrency_limit=1, chunk_size_elements=16384, expected=expected.get(n),
                                  backend=n if n in REFERENCES else "tensorstore") for n in names)
    suite = config.SuiteConfig(tests=tests, baseline=names[0], output_dir=Path("/nonexistent"))
    records = [RunRecord(test=name, round=i, position=0, warmup=False, save_s=s,
                         load_s=(load_times_s.get(name) or values)[i], size_bytes=sizes.get(name, 4_000_000),
                         n_files=10, eviction="drop_caches", load_cache="cold", verified=True)
               for name, values in times_s.items() for i, s in enumerate(values)]
    return results.build(suite, WEIGHTS, records, ENVIRONMENT, seed=1, complete=True)


def _changes(document: dict) -> list[list[float]]:
    """Every interval of a change in a results document: versus the baseline, the claims, the answer."""
    out = [c["change_ci95_pct"] for t in document["tests"] for c in t["vs_baseline"].values()]
    out += [c["ci_pct"] for t in document["tests"] for c in t["claims"]]
    for entry in document["best"].values():
        out += [(c or {}).get("change_ci95_pct") for c in [entry["comparison"], *entry["against"].values()]]
    return [ci for ci in out if ci is not None]


@pytest.fixture(scope="module")
def noisy():
    return make_document({"base": NOISY, "fast": [0.63, 0.9, 0.4], "gzip": [15.0, 5.6, 41.0],
                          "device_ceiling": [0.3, 0.25, 0.4]},
                         expected={"fast": {"save_pct": [-60, -55], "load_pct": [-30, -20]},
                                   "gzip": {"save_pct": [5, 10], "size_pct": [-40, -30]}},
                         sizes={"gzip": 2_600_000})


# --- one interval method: never below -100 % -------------------------------------------------------------

def test_no_interval_of_a_change_in_results_json_leaves_the_possible(noisy):
    cvs = [t["stats"]["save_s"]["cv"] for t in noisy["tests"]]
    assert max(cvs) > 0.5  # a noisy row, 3 runs
    intervals = _changes(noisy)
    assert len(intervals) >= 8
    for low, high in intervals:
        assert -100 < low <= high
    for test in noisy["tests"]:
        for comparison in test["vs_baseline"].values():
            if comparison["ratio_ci95"] is not None:
                low, high = comparison["ratio_ci95"]
                assert 0 < low <= comparison["ratio"] <= high
                # the interval and the verdict come from the same test
                assert comparison["significant"] == (low > 1 or high < 1) or low == high
        for summary in test["stats"].values():
            if summary["ci95"] is not None:
                assert 0 < summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    # the upgrade path derives the same: a current document read back is identical
    assert results.RESULTS.upgrade(noisy) == noisy


def _printed_changes(text: str) -> list[float]:
    """Every signed percentage the tables print inside an interval ('[-78.5, -33.7]', '-40 .. -30', '[-60%, ...')."""
    found = []
    for match in re.finditer(r"\[([+-]\d+(?:\.\d+)?)%?, ([+-]\d+(?:\.\d+)?)%?\]", text):
        found += [float(match.group(1)), float(match.group(2))]
    for match in re.finditer(r"([+-]\d+(?:\.\d+)?) \.\. ([+-]\d+(?:\.\d+)?)", text):
        found += [float(match.group(1)), float(match.group(2))]
    return found


def test_no_interval_of_a_change_in_the_tables_leaves_the_possible(noisy):
    printed = _printed_changes(report.full_report(noisy))
    assert len(printed) >= 10
    claimed = [v for t in noisy["tests"] for c in t["claims"] for v in c["claimed_pct"] + c["band_pct"]]
    assert all(v > -100 for v in printed if v not in claimed)
    rows = versus.compare_documents(noisy, noisy, 5.0)
    text = compare_report.render(Document(noisy, Path("a.json")), Document(noisy, Path("b.json")), rows, 5.0)
    assert all(v > -100 for v in _printed_changes(text))


def _captured(module, monkeypatch) -> list:
    figures = []
    monkeypatch.setattr(module, "save", lambda fig, path: figures.append(fig) or path)
    return figures


def test_no_interval_of_a_change_in_the_figures_leaves_the_possible(noisy, monkeypatch, tmp_path):
    drawn = _captured(main, monkeypatch)
    main.draw(noisy, tmp_path / main.PLOT_FILE)
    fig = drawn[0]
    change_panels = [ax for ax in fig.axes if ax.get_ylabel().startswith("change vs baseline")
                     and ax.get_label() != "<colorbar>"]
    assert len(change_panels) == 2
    for ax in change_panels:
        assert ax.get_yscale() == "log"  # ratios: -100 % lies at 0, off any log axis
        ends = [y for collection in ax.collections for segment in collection.get_segments() for _, y in segment]
        assert ends and min(ends) > 0
        assert all(not label.get_text().startswith("-100") for label in ax.get_yticklabels())
    drawn = _captured(claims, monkeypatch)
    claims.draw_claims(noisy, tmp_path / claims.CLAIMS_FILE)
    ax = drawn[0].axes[0]
    ends = [x for collection in ax.collections for segment in collection.get_segments() for x, _ in segment]
    assert ends and min(ends) > -100
    assert ax.get_xscale() == "function"  # the log of the ratio, labelled in %


def test_every_figure_title_fits_its_figure(noisy, monkeypatch, tmp_path):
    """claims_check.png cut its title on the left; every title's box must lie inside its figure."""
    for module, draw, name in ((main, main.draw, main.PLOT_FILE), (claims, claims.draw_claims, claims.CLAIMS_FILE)):
        drawn = _captured(module, monkeypatch)
        draw(noisy, tmp_path / name)
        fig = drawn[0]
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        width, height = fig.bbox.width, fig.bbox.height
        titles = [fig._suptitle] + [ax.title for ax in fig.axes]
        for title in (t for t in titles if t is not None and t.get_text()):
            box = title.get_window_extent(renderer)
            assert box.x0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, (name, title.get_text()[:60])


# --- too few runs -----------------------------------------------------------------------------------------

def test_two_runs_say_too_few_runs_instead_of_an_interval():
    document = make_document({"base": [1.0, 1.4], "fast": [0.5, 0.8]}, expected={"fast": {"save_pct": [-55, -45]}})
    fast = document["tests"][1]
    assert fast["vs_baseline"]["save_s"]["change_ci95_pct"] is None
    assert fast["vs_baseline"]["save_s"]["verdict"] == "too few runs"
    assert fast["stats"]["save_s"]["ci95"] is None
    assert fast["vs_baseline"]["size_bytes"]["change_ci95_pct"] == [0.0, 0.0]  # sizes: exact, no spread
    assert fast["claims"][0]["reason"].startswith("too few runs")
    text = report.console(document)
    table = text.split("\n\n")[2]
    for name, count in (("base", 2), ("fast", 4)):
        row = next(line for line in table.splitlines() if line.startswith(name))
        assert row.count("too few runs") == count and "[" not in row  # save, load (and their changes): no interval
    assert "too few runs" in report.answer_lines(document)[2]
    details = report.full_report(document)
    assert re.search(r"^fast\s+save_s\s+-45\.8\s+too few runs\s+0\.542 \(too few runs\)\s+-\s+too few runs$", details,
                     re.MULTILINE)
    assert "+0.0%] inconclusive" not in details


# --- the fastest peer -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def beaten():
    """runai_streamer loads 1.2x faster than TensorStore's best; TensorStore saves faster than it."""
    return make_document(
        {"base": [2.0, 2.1, 1.9, 2.05, 1.95], "fast": [1.0, 1.02, 0.98, 1.01, 0.99], PEER: [1.5, 1.52, 1.48, 1.51, 1.49],
         "torch_save": [3.0, 3.1, 2.9, 3.05, 2.95], "device_ceiling": [0.5, 0.51, 0.49, 0.5, 0.5]},
        load_times_s={"base": [2.0, 2.1, 1.9, 2.05, 1.95], "fast": [1.2, 1.22, 1.18, 1.21, 1.19],
                      PEER: [1.0, 1.02, 0.98, 1.01, 0.99], "torch_save": [3.0, 3.1, 2.9, 3.05, 2.95],
                      "device_ceiling": [0.5, 0.51, 0.49, 0.5, 0.5]})


def test_the_answer_names_the_fastest_peer_when_it_beats_tensorstore(beaten):
    best = beaten["best"]
    assert best["load"]["test"] == "fast" and best["load"]["against"]["peer"]["test"] == PEER
    assert best["load"]["beaten_by"] == [PEER] and best["save"]["beaten_by"] == []
    assert best["load"]["against"]["peer"]["verdict"] == "slower"
    answer = report.answer_lines(beaten)
    load = next(line for line in answer if line.lstrip().startswith("load:"))
    assert "1.2x slower than runai_streamer (peer; 1.17-1.23x)" in load
    save = next(line for line in answer if line.lstrip().startswith("save:"))
    assert "1.5x faster than runai_streamer (peer;" in save
    assert not any("fastest" in line.split(":", 2)[-1] for line in answer[1:])  # TensorStore is never "fastest"
    title = main.advice_lines(beaten)
    assert "TensorStore's best load: fast; it is 1.2x slower than runai_streamer, the fastest peer (95% CI" in title[1]
    rows = versus.compare_documents(beaten, beaten, 5.0)
    text = compare_report.render(Document(beaten, Path("a.json")), Document(beaten, Path("b.json")), rows, 5.0)
    assert "B: TensorStore's best loads (fast) 1.2x slower than runai_streamer, the fastest peer (95% CI" in text


def test_tune_recommendation_names_the_fastest_peer():
    from ckptbench.tune import answer
    from ckptbench.tune import report as tune_report

    rng = np.random.default_rng(3)

    def runs(save, load):
        save_s, load_s = list(save * rng.uniform(0.98, 1.02, 5)), list(load * rng.uniform(0.98, 1.02, 5))
        return {"save_s": save_s, "load_s": load_s, "total_s": [s + x for s, x in zip(save_s, load_s)],
                "size_bytes": [4e6] * 5, "save_gbps": [4 / s for s in save_s], "load_gbps": [4 / x for x in load_s]}

    samples = {"winner": runs(1.0, 1.2), "second": runs(1.3, 1.5), PEER: runs(1.5, 1.0), "safetensors": runs(2.0, 2.0),
               "device_ceiling": runs(0.5, 0.5)}
    found = answer.recommend(samples, ["winner", "second"], "load_s", 5.0)
    assert found["peers"]["load_s"]["test"] == PEER and found["peers"]["save_s"]["test"] == PEER
    lines = tune_report.peer_lines(found)
    assert lines[1].startswith("TensorStore's best loads 1.2x slower than Run:ai streamer, the fastest peer (95% CI")
    assert lines[0].startswith("TensorStore's best saves 1.5x faster than Run:ai streamer")


# --- the default console and --details --------------------------------------------------------------------

def test_the_console_puts_the_answer_first_and_details_keep_everything(noisy):
    text = report.console(noisy)
    lines = text.splitlines()
    assert len(lines) <= 40 - 4  # the run adds the Results and Plot lines
    assert lines[3].startswith("Answer:") and len([line for line in lines[4:8] if ":" in line]) == 4
    assert sum(line.startswith("  ! ") for line in lines) <= 5 and lines[-1].startswith("  ! ")
    details = report.full_report(noisy)
    for section in ("Cost", "Device ceiling, per access pattern", "Versus baseline", "Claims check", "Warnings:"):
        assert section in details and section not in text.replace("Claims check (", "")
    assert all(warning in details for warning in noisy["warnings"])
    assert details.startswith("\n".join(lines[:9]))


def test_show_details_on_a_version_1_file_prints_everything(run_cli, tmp_path):
    status, short, err = run_cli("show", V1_FIXTURE, "--no-figures")
    assert status == 0, err
    status, out, err = run_cli("show", V1_FIXTURE, "--no-figures", "--details")
    assert status == 0, err
    document = results.read(V1_FIXTURE).document
    assert out.strip() == report.full_report(document).strip()
    for section in ("Per test (mean +- std", "Which layout to use", "Cost (CPU", "Device ceiling, per access pattern",
                    "Versus baseline", "Claims check (the Phase 4 summary", "Warnings:"):
        assert section in out, section
    for test in document["tests"]:
        assert re.search(rf"^{re.escape(test['name'])}\s+save_s\s", out, re.MULTILINE) or test["name"] == "baseline"
    assert all(warning in out for warning in document["warnings"])
    assert len(short.splitlines()) <= 36 < len(out.splitlines())
    assert "too few runs" in short  # version 1's suite ran 2 runs per test
