"""`tune`'s verdicts: the runner-up is "tied" only when Welch's test ran and could not separate it, "not compared"
when there are not two runs a side; a candidate far slower than the best is skipped before it runs (predicted by
its compression's time measured earlier) or not run again (censored), and recorded as such; rung 0 runs the cheap
candidates first; the answer against the fastest peer says which runs it stands on."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptbench.bench.context import RunContext
from ckptbench.bench.suite import run_suite
from ckptbench.core.errors import Skip
from ckptbench.spec import config
from ckptbench.tune import policy, report
from ckptbench.tune.answer import fastest_peers, recommend
from ckptbench.tune.budget import Durations, Plan
from ckptbench.tune.space import CANDIDATES_BEFORE_CEILING, Universe, rung0_order
from ckptbench.tune.state import HALVING, Stage, TuneState

# The numbers: the gzip runner-up saved in 75.3 and 74.5 s, the winner in 5.3 and 5.9 s.
SLOW, FAST = [75.3, 74.5], [5.3, 5.9]


def _runner_up_line(values: dict[str, list[float]], stopped_by: str = "budget") -> tuple[dict, str]:
    samples = {name: {m: list(v) for m in policy.FIGURES} for name, v in values.items()}
    found = recommend(samples, list(values), "save_s", 5.0)
    return found, report.runner_up_words(found["runner_up"], stopped_by)


def test_ten_times_slower_in_both_of_two_runs_is_slower_not_tied():
    decided = policy.separation({"winner": FAST, "gzip": SLOW}, "save_s", 5.0)
    assert decided["winner"] == "winner" and decided["runner_up"] == "gzip"
    assert decided["judgement"] == policy.SEPARATED and decided["separated"] is True
    assert decided["comparison"]["p_value"] < 0.05 and decided["comparison"]["verdict"] == "slower"
    found, line = _runner_up_line({"winner": FAST, "gzip": SLOW})
    assert found["runner_up"]["judgement"] == "separated"
    assert line.startswith("distinguishable") and "tied" not in line and "either will do" not in line


def test_one_run_a_side_is_not_compared_never_tied():
    decided = policy.separation({"winner": [5.3], "other": [5.4]}, "save_s", 5.0)
    assert decided["judgement"] == policy.NOT_COMPARED and decided["separated"] is False
    assert decided["comparison"]["p_value"] is None
    # one side with two runs, the other with one: still no test
    assert policy.separation({"winner": FAST, "other": [75.0]}, "save_s", 5.0)["judgement"] == policy.NOT_COMPARED
    _, line = _runner_up_line({"winner": [5.3], "other": [5.4]})
    assert line.startswith("not compared") and "tied" not in line and "either will do" not in line


def test_tied_only_when_the_test_ran_and_found_no_difference():
    values = {"a": [1.0, 1.1, 0.9, 1.05], "b": [1.02, 0.95, 1.1, 1.0]}
    decided = policy.separation(values, "load_s", 5.0)
    assert decided["judgement"] == policy.NOT_DISTINGUISHABLE and decided["comparison"]["p_value"] >= 0.05
    _, line = _runner_up_line(values)
    assert "tied" in line and "Welch" in line


def test_a_document_without_a_judgement_reads_by_its_p_value():
    """tuning.json written before "judgement": separated or not by its p-value, never tied without a test."""
    untested = {"test": "b", "distinguishable": False, "comparison": {"p_value": None, "change_pct": 965.2}}
    assert report.runner_up_judgement(untested) == "not compared"
    assert "tied" not in report.runner_up_words(untested, "budget")
    tested = {"test": "b", "distinguishable": False, "comparison": {"p_value": 0.4, "change_pct": 1.0,
                                                                   "verdict": "no significant difference"}}
    assert report.runner_up_judgement(tested) == "not distinguishable"


def test_censoring_a_candidate_past_the_factor_keeps_the_finalists():
    values = {"best": [5.0], "near": [9.0], "gzip": [75.0], "also_slow": [21.0]}
    hopeless = policy.censored(values, "total_s", "rung-0")
    assert set(hopeless) == {"gzip", "also_slow"}  # 15x and 4.2x; 1.8x stays
    assert hopeless["gzip"]["censored"] is True and "more than 4x slower" in hopeless["gzip"]["reason"]
    assert hopeless["gzip"]["mean"] == 75.0 and hopeless["gzip"]["best"] == "best"
    # at least the finalists are kept, however slow; sizes are never censored
    assert policy.censored({"best": [5.0], "gzip": [75.0]}, "total_s", "rung-0") == {}
    assert policy.censored({"a": [1.0], "b": [2.0], "c": [100.0]}, "size_bytes", "rung-0") == {}


def _state(members: list[str]) -> TuneState:
    plan = Plan(9, [9, 5, 3], 10.0, 10.0, 0.5, 60.0, 100.0, 600.0)
    stage = Stage("rung-0", HALVING, members, 1, 600.0)
    return TuneState(settings={}, seed=1, budget_s=720.0, spent_s=0.0, setup_s=0.0, keep_checkpoint=False,
                     space_path="space.json", space={}, weights={"size_bytes": 6_850_000_000}, plan=plan,
                     rung0_order=list(members), durations=Durations(6_850_000_000), stages=[stage])


def _situation(measured: dict[str, float], codecs: dict[str, str], metric: str = "total_s") -> policy.Situation:
    runs = [{"test": name, "round": 0, "position": i, "warmup": False, "save_s": seconds / 2, "load_s": seconds / 2,
             "size_bytes": 100, "disk_bytes": 100, "n_files": 1, "load_cache": "cold", "verified": True,
             "error": None} for i, (name, seconds) in enumerate(measured.items())]
    document = {"weights": {"size_bytes": 6_850_000_000},
                "tests": [{"name": run["test"], "runs": [run]} for run in runs]}
    return policy.Situation({"rung-0": document}, metric, 5.0, 1, 100.0, ("safetensors", "device_ceiling"), True,
                            codecs, 6_850_000_000)


CODECS = {"raw_a": "none", "raw_b": "none", "gzip_a": "gzip-1", "gzip_b": "gzip-1", "zstd_a": "zstd-1",
          "t5x_full": "gzip-1"}


def test_a_candidate_its_codec_predicts_hopeless_is_skipped_with_the_prediction():
    state = _state(list(CODECS))
    situation = _situation({"raw_a": 11.0, "gzip_a": 150.0}, CODECS)
    skip = policy.skip_reason(state, state.stages[0], "gzip_b", situation)
    assert skip is not None and skip["skipped"] is True and skip["predicted"] == pytest.approx(150.0)
    assert skip["best"] == "raw_a" and skip["best_mean"] == pytest.approx(11.0)
    assert "skipped before running" in skip["reason"] and "gzip-1" in skip["reason"] and "4x" in skip["reason"]
    # a codec not measured yet predicts nothing; a codec within the factor is run
    assert policy.skip_reason(state, state.stages[0], "zstd_a", situation) is None
    assert policy.skip_reason(state, state.stages[0], "raw_b", situation) is None
    # t5x_full (the answer's point of comparison), the reference rows, later stages and sizes: never skipped
    assert policy.skip_reason(state, state.stages[0], "t5x_full", situation) is None
    assert policy.skip_reason(state, state.stages[0], "safetensors", situation) is None
    later = Stage("rung-1", HALVING, ["gzip_b"], 1, 600.0)
    assert policy.skip_reason(state, later, "gzip_b", situation) is None
    by_size = _situation({"raw_a": 11.0, "gzip_a": 150.0}, CODECS, metric="size_bytes")
    assert policy.skip_reason(state, state.stages[0], "gzip_b", by_size) is None
    # within the factor: measured, not skipped
    close = _situation({"raw_a": 11.0, "gzip_a": 40.0}, CODECS)
    assert policy.skip_reason(state, state.stages[0], "gzip_b", close) is None


def test_a_skipped_candidate_is_recorded_as_skipped_not_as_not_measured():
    members = ["safetensors", "raw_a", "gzip_a", "gzip_b", "device_ceiling"]
    state = _state(members)
    situation = _situation({"safetensors": 20.0, "raw_a": 11.0, "gzip_a": 150.0, "device_ceiling": 30.0}, CODECS)
    state.eliminated["gzip_b"] = policy.skip_reason(state, state.stages[0], "gzip_b", situation)
    concluded = policy.conclude(state, "complete", situation)
    assert "gzip_b" not in concluded.not_measured and concluded.eliminated["gzip_b"]["skipped"] is True
    assert concluded.stages[0].decision["skipped"] == ["gzip_b"]
    # t5x's gzip at 150 s against 11 s: the final keeps no room for t5x_full
    assert policy.t5x_in_final(situation) is True  # t5x_full not measured yet
    with_t5x = _situation({"raw_a": 11.0, "t5x_full": 150.0}, CODECS)
    assert policy.t5x_in_final(with_t5x) is False


def test_rung0_runs_the_cheap_candidates_first_and_the_always_one_after_the_ceiling():
    names = [f"cheap{i}" for i in range(8)] + [f"gzip{i}" for i in range(4)]
    priors = {**{n: 10.0 for n in names if n.startswith("cheap")}, **{n: 80.0 for n in names if n.startswith("gzip")},
              "t5x_full": 90.0}
    axes = {n: {"formats": "zarr2", "compression": n[:4]} for n in names}
    universe = Universe({n: None for n in ["t5x_full", *names]}, ("t5x_full",), axes, (), ())
    order = rung0_order(universe, 13, seed=3, priors_s=priors)
    assert order.index("t5x_full") == CANDIDATES_BEFORE_CEILING
    rest = [n for n in order if n != "t5x_full"]
    assert all(n.startswith("cheap") for n in rest[:8]) and all(n.startswith("gzip") for n in rest[8:])


def test_the_answer_against_the_peer_says_which_runs_it_stands_on():
    samples = {"winner": {m: [1.0, 1.1, 0.9, 1.0] for m in policy.FIGURES},
               "other": {m: [2.0] for m in policy.FIGURES},
               "safetensors": {m: [2.0, 2.1, 1.9] for m in policy.FIGURES}}
    selected = fastest_peers(samples, "winner", 5.0)
    assert selected["total_s"]["basis"] == "best of 2 candidates, selected from these runs"
    assert selected["total_s"]["winner_n"] == 4
    final_runs = {"winner": {m: [1.1, 1.0] for m in policy.FIGURES}}
    confirmed = fastest_peers(samples, "winner", 5.0, final_runs)
    assert "final rounds" in confirmed["total_s"]["basis"] and confirmed["total_s"]["winner_n"] == 2
    line = report.peer_lines({"peers": confirmed})[0]
    assert "the fastest peer" in line and "final rounds" in line


def test_a_skip_from_may_start_drops_that_run_and_the_suite_goes_on(tmp_path: Path):
    suite = config.from_dict({"model": "tiny", "output_dir": str(tmp_path / "out"),
                              "testing": {"num_runs": 1, "seed": 2},
                              "test_configurations": [
                                  {"name": "kept", "chunk_bytes": "1MB", "concurrency_limit": 4},
                                  {"name": "skipped", "chunk_bytes": "1MB", "concurrency_limit": 4,
                                   "compression": {"id": "gzip", "level": 1}}]})
    document = run_suite(RunContext(suite, may_start=lambda p: Skip("predicted hopeless") if p.test == "skipped"
                                    else None)).document
    tests = {t["name"]: t for t in document["tests"]}
    assert document["complete"] is True
    assert len(tests["kept"]["runs"]) == 1 and tests["kept"]["runs"][0]["error"] is None
    assert tests["skipped"]["runs"] == []


def _point(save_s: float, load_s: float, status: str) -> dict:
    return {"status": status, "stats": {"save_s": {"n": 2, "mean": save_s}, "load_s": {"n": 2, "mean": load_s},
                                        "size_bytes": {"n": 2, "mean": 5e6}}}


def test_the_figure_labels_points_with_letters_and_names_them_inside_the_figure(tmp_path, monkeypatch):
    """The issue's figure: a 95-character winner's name beside its point ran off the plot and squeezed the axes
    until the subtitle was clipped. Now: letters beside the points, the names in a key, every text inside."""
    from ckptbench.tune import plot

    long_winner = "zarr2_chunk=256KB_strategy=halve_conc=16_comp=blosc-lz4-5-shuffle_io=default_into=preallocated"
    long_second = "zarr3_chunk=256KB_strategy=halve_conc=16_comp=blosc-lz4-5-shuffle_io=default_into=new"
    candidates = {long_winner: _point(0.9, 1.0, "winner"), long_second: _point(9.0, 9.5, "runner-up"),
                  "t5x_full": _point(12.0, 3.0, "eliminated")}
    document = {"candidates": candidates, "pareto": [long_winner], "metric": "total_s", "objective": "balanced",
                "references": {"safetensors": {"stats": {"save_s": {"mean": 1.5}, "load_s": {"mean": 0.7}}}},
                "weights": {"name": "tiny", "size_bytes": 5_200_000, "dtype": "float32"},
                "recommendation": {"test": long_winner, "runner_up": {"test": long_second}, "peers": {}}}
    drawn = []
    real_save = plot.save
    monkeypatch.setattr(plot, "save", lambda fig, path: drawn.append(fig) or real_save(fig, path))
    assert plot.draw(document, tmp_path / "tuning.png").is_file()
    fig = drawn[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # the constrained layout, as savefig placed it
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts if hasattr(t, "xy")]  # the annotations
    assert sorted(labels) == ["R", "T", "W"]
    key = next(t.get_text() for t in ax.texts if not hasattr(t, "xy"))
    assert f"W = winner: {long_winner}" in key and f"R = runner-up: {long_second}" in key
    page = fig.bbox
    for text in [*ax.texts, ax.title, fig._suptitle]:
        box = text.get_window_extent(renderer)
        assert box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1, (text.get_text()[:40], box, page)
    assert ax.get_position().width > 0.7  # the axes keep the figure's width, not squeezed by a long label
