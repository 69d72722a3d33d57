"""`tune`: the search on synthetic measurements (no I/O), the budget model, the space file, a simulated
tune against a virtual clock, a real tiny-model tune end to end, a resume after SIGINT, and the
paste-ready spec read back bit for bit."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, STREAMLINED, act_on_stderr_line, assert_same_bits

from ckptbench.bench.capacity import prior_run_s
from ckptbench.core import records, tune_events
from ckptbench.core.errors import UserError
from ckptbench.documents import results
from ckptbench.reports.progress import TuneProgress
from ckptbench.sources import weights
from ckptbench.spec import config, fields
from ckptbench.tune import session
from ckptbench.tune.budget import (
    FINALISTS,
    Durations,
    continuation_s,
    final_s,
    fits,
    halving_sizes,
    plan_budget,
    prior_reference_s,
)
from ckptbench.tune.checkpoint import CHECKPOINT
from ckptbench.tune.document import TUNING_FILE, read
from ckptbench.tune.policy import PRIOR_DF, PRIOR_LOG_SD, halve, noise_model, pareto, rank, separation
from ckptbench.tune.session import Hooks
from ckptbench.tune.settings import DEFAULT_REFERENCES, SPACE_FILE, Settings
from ckptbench.tune.space import candidates, layout_key, load_space, make_universe, sample
from ckptbench.tune.state import STATE_FILE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A small space for the real runs: 16 combinations + t5x_full, every one quick on the tiny model.
SMALL_SPACE = {
    "description": "test space",
    "axes": {"chunk_bytes": ["64KB", "1MB"], "concurrency_limit": [1, 16],
             "compression": ["none", {"id": "zstd", "level": 1}]},
    "formats": {"zarr2": {"format": "zarr2"}, "zarr3": {"format": "zarr3"}},
    "always": [{"name": "t5x_full", "chunk_size_elements": 262144, "concurrency_limit": 128,
                "compression": {"id": "gzip", "level": 1}, "format": "zarr2"}],
}


def _lognormal(rng: np.random.Generator, true_mean: float, log_sd: float) -> float:
    return float(true_mean * math.exp(rng.normal(0.0, log_sd)))


# --- the search on synthetic measurements ----------------------------------------------------------

def test_halve_keeps_the_better_half_and_drops_only_clear_losers():
    values = {"a": [1.0], "b": [1.05], "c": [1.1], "d": [1.2], "close": [1.3], "slow": [2.0], "slower": [4.0]}
    noise = noise_model([])  # the prior alone: 10 % spread, 8 degrees of freedom
    halving = halve(values, noise)
    assert halving.ranking == ["a", "b", "c", "d", "close", "slow", "slower"]
    assert halving.cut == "d"  # ceil(7 / 2) = 4 kept by rank
    # 1.3 vs 1.2 is within the noise (its best case wins): kept; 2.0 and 4.0 lose even at their best.
    assert halving.kept == ["a", "b", "c", "d", "close"]
    assert sorted(halving.eliminated) == ["slow", "slower"]
    reason = halving.eliminated["slow"]
    assert reason["cut"] == "d" and reason["best_case_pct"] > 0 and "best case" in reason["reason"]


def test_halve_drops_nothing_among_ties():
    values = {name: [1.0 + 0.01 * i] for i, name in enumerate("abcdefgh")}
    halving = halve(values, noise_model([]))
    assert halving.eliminated == {}
    assert sorted(halving.kept) == sorted(values)


def test_more_runs_narrow_the_interval_until_a_small_difference_is_dropped():
    noise = noise_model([])
    one = halve({"a": [1.0], "b": [1.0], "c": [1.25]}, noise, keep_at_least=2)
    assert one.eliminated == {}  # 25 % with one run each: the prior's interval is wider
    many = halve({"a": [1.0] * 8, "b": [1.0] * 8, "c": [1.25] * 8}, noise, keep_at_least=2)
    assert list(many.eliminated) == ["c"]


def test_sizes_have_no_noise_and_equal_sizes_are_kept():
    noise = noise_model([[5.0, 5.0]], noisy=False)
    assert noise.log_sd == 0.0 and noise.halfwidth(1, 1) == 0.0
    halving = halve({"a": [100.0], "b": [100.0], "c": [100.0], "d": [101.0]}, noise, keep_at_least=2)
    assert halving.kept == ["a", "b", "c"] and list(halving.eliminated) == ["d"]


def test_noise_model_pools_the_measured_log_spread_with_the_prior():
    wide = [math.exp(x) for x in (-0.3, 0.3)]  # log sd 0.424
    noise = noise_model([wide, wide, [7.0]])  # the single run adds nothing
    assert noise.measured_df == 2 and noise.df == PRIOR_DF + 2
    expected = math.sqrt((PRIOR_DF * PRIOR_LOG_SD ** 2 + 2 * (0.6 / math.sqrt(2)) ** 2) / noise.df)
    assert noise.log_sd == pytest.approx(expected)
    assert noise.log_sd > PRIOR_LOG_SD
    assert noise_model([[1.0, 1.0, 1.0]]).log_sd < PRIOR_LOG_SD  # quiet runs lower it


def test_rank_breaks_ties_with_the_second_figure():
    assert rank({"a": [2.0], "b": [2.0], "c": [1.0]}, {"a": [9.0], "b": [3.0], "c": [0.0]}) == ["c", "b", "a"]
    assert rank({"a": [1.0], "none": []}) == ["a"]


def test_separation_by_welch_p_value():
    tied = separation({"a": [1.0, 1.1, 0.9, 1.05], "b": [1.02, 0.95, 1.1, 1.0]}, "load_s", 5.0)
    assert tied["separated"] is False and tied["comparison"]["p_value"] > 0.05
    clear = separation({"a": [1.0, 1.02, 0.98], "b": [1.5, 1.52, 1.49]}, "load_s", 5.0)
    assert clear["winner"] == "a" and clear["runner_up"] == "b" and clear["separated"] is True
    single = separation({"a": [1.0]}, "total_s", 5.0)
    assert single["winner"] == "a" and single["runner_up"] is None and single["separated"] is False
    sizes = separation({"a": [10.0, 10.0], "b": [11.0, 11.0]}, "size_bytes", 5.0)
    assert sizes["separated"] is True  # exact figures: any difference is real


def _simulated_search(true: dict[str, float], log_sd: float, seed: int, max_final_rounds: int = 30) -> dict:
    """Successive halving then the final, exactly as tune runs them, on lognormal synthetic runs."""
    rng = np.random.default_rng(seed)
    runs: dict[str, list[float]] = {name: [] for name in true}
    alive = list(true)
    while len(alive) > FINALISTS:
        for name in alive:
            runs[name].append(_lognormal(rng, true[name], log_sd))
        halving = halve({n: runs[n] for n in alive}, noise_model(runs.values()))
        alive = halving.kept
    finalists = rank({n: runs[n] for n in alive})[:FINALISTS]
    for _ in range(max_final_rounds):
        decided = separation({n: runs[n] for n in finalists}, "total_s", 5.0)
        if decided["separated"]:
            break
        for name in finalists:
            runs[name].append(_lognormal(rng, true[name], log_sd))
    return {**separation({n: runs[n] for n in finalists}, "total_s", 5.0), "runs": runs}


@pytest.mark.parametrize("seed", range(5))
def test_halving_then_the_final_find_the_known_winner(seed):
    rng = np.random.default_rng(100 + seed)
    true = {f"c{i}": float(x) for i, x in enumerate(rng.uniform(1.5, 10.0, size=30))}
    true["best"] = 1.0  # 33 % faster than anything else, measured with 8 % noise
    decided = _simulated_search(true, 0.08, seed)
    assert decided["winner"] == "best"
    assert decided["separated"] is True


def test_two_identical_finalists_end_tied():
    true = {"a": 1.0, "b": 1.0, **{f"slow{i}": 3.0 + i for i in range(6)}}
    decided = _simulated_search(true, 0.05, seed=3, max_final_rounds=6)
    assert {decided["winner"], decided["runner_up"]} == {"a", "b"}
    assert decided["separated"] is False  # the same distribution: no p < 0.05 (with this seed)
    assert len(decided["runs"]["a"]) > 2  # the final did repeat them


def test_pareto_front():
    points = {"fast_save": (1.0, 5.0), "fast_load": (4.0, 1.0), "middle": (2.0, 2.0), "dominated": (3.0, 3.0),
              "worst": (5.0, 5.0)}
    assert pareto(points) == ["fast_save", "middle", "fast_load"]


# --- the budget model -----------------------------------------------------------------------------------

def test_halving_sizes():
    assert halving_sizes(14) == [14, 7, 4]
    assert halving_sizes(5) == [5, 3]
    assert halving_sizes(3) == [3]
    assert halving_sizes(2) == [2]


def test_plan_fits_the_time_and_grows_with_it():
    plans = [plan_budget(seconds, 5.0, 20.0, 0.5, 2000) for seconds in (100, 300, 600, 1800)]
    for plan in plans:
        n = plan.n_candidates
        used = n * 5.0 + 20.5 + continuation_s(n, 5.0, 20.0, 0.5)
        more = (n + 1) * 5.0 + 20.5 + continuation_s(n + 1, 5.0, 20.0, 0.5)
        assert used <= plan.time_left_s < more  # the largest rung 0 that fits
        assert plan.rung_sizes == (halving_sizes(n) if n else [])
    assert [p.n_candidates for p in plans] == sorted(p.n_candidates for p in plans)
    assert plans[0].n_candidates < plans[-1].n_candidates
    assert plan_budget(10, 5.0, 20.0, 0.5, 2000).n_candidates == 0
    assert plan_budget(1e6, 5.0, 20.0, 0.5, 7).n_candidates == 7  # no more than the space holds


def test_continuation_grows_with_the_first_rung():
    costs = [continuation_s(n, 4.0, 15.0, 0.5, t5x_s=20.0) for n in range(1, 40)]
    assert costs == sorted(costs)
    assert costs[0] == final_s(4.0, 15.0, 0.5, t5x_s=20.0)  # one candidate: only the final follows


def test_durations_predict_from_what_was_measured():
    prior_s = prior_run_s(config.TestSpec("t", concurrency_limit=1, chunk_bytes=2**20), int(1e9), 4)
    durations = Durations(model_bytes=int(1e9), prior_s=prior_s)
    assert durations.of("anything") == pytest.approx(prior_s)
    assert durations.of("device_ceiling") == pytest.approx(prior_reference_s("device_ceiling", int(1e9)))
    durations.add("a", 2.0)
    durations.add("a", 4.0)
    assert durations.of("a") == 3.0
    assert durations.of("unmeasured") == pytest.approx(prior_s)  # < 3 measured: the prior
    durations.add("b", 10.0)
    durations.add("c", 20.0)
    assert durations.of("unmeasured") == 10.0  # the median of a, b, c
    durations.overheads += [1.0, 3.0]
    assert durations.suite_s(["a", "b"]) == 3.0 + 10.0 + 2.0
    assert fits(10.0, 5.0, 15.0) and not fits(10.0, 5.1, 15.0)


def test_twelve_minutes_at_open_llama_3b_are_planned_not_refused(tmp_path):
    """tune --budget 12m at open_llama_3b in bfloat16 (6.85 GB) is planned: the estimate of a candidate's run is
    the median prior of those rung 0 runs first (raw, zstd, blosc), not the space's median, which gzip's candidates
    raise although rung 0 runs them last and skips them once gzip measures hopeless; rung 0 lists at least 6."""
    settings = Settings(output_dir=tmp_path / "out", model="open_llama_3b", dtype="bfloat16", values="bfloat16",
                             budget_s=720.0)
    info = session.dry_run(settings)
    assert info["plan"] is not None, info["refusal"]
    assert info["plan"]["n_candidates"] >= FINALISTS + 1 and info["n_listed"] >= 12
    suite = candidates(load_space(SPACE_FILE), settings)
    priors = [prior_run_s(t, info["weights"]["size_bytes"], 2) for t in suite.tests]
    assert min(priors) < info["run_s"] < float(np.median(priors))
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    # 5 minutes is refused, naming the budget that would do, before anything is made
    with pytest.raises(UserError, match="give at least --budget"):
        session.run(dataclasses.replace(settings, budget_s=300.0))


# --- the space file ---------------------------------------------------------------------------------

def _settings(tmp_path: Path, **changes) -> Settings:
    return Settings(**{"output_dir": tmp_path / "out", "model": "tiny", **changes})


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shipped space and its candidates for smollm2-135m (made once: 2,161 tests to validate)."""
    space = load_space(SPACE_FILE)
    settings = Settings(output_dir=tmp_path_factory.mktemp("shipped") / "out", model="smollm2-135m")
    return space, candidates(space, settings)


def test_the_shipped_space(shipped):
    assert (REPO / "sweeps" / "tune_space.json").resolve() == SPACE_FILE.resolve()
    space, suite = shipped
    tests = [t for t in suite.tests if t.name != "t5x_full"]
    assert len(tests) == 2160  # the valid part of the 3,456 combinations
    assert len(suite.skipped) == 1296 and all("direct" in reason for _, reason in suite.skipped)
    assert {t.chunk_bytes for t in tests} == {2 ** k for k in range(18, 27)}  # 256 KiB .. 64 MiB
    assert {t.concurrency_limit for t in tests} == {1, 4, 16, 64, 128, 256}
    assert {(t.format, t.kvstore, t.shard_bytes is not None) for t in tests} == {
        ("zarr2", "file", False), ("zarr3", "file", False), ("zarr3", "file", True), ("zarr3", "ocdbt", False)}
    assert {json.dumps(t.compression, sort_keys=True) for t in tests} == {
        "null", '{"id": "zstd", "level": 1}', '{"id": "gzip", "level": 1}',
        '{"clevel": 5, "cname": "lz4", "id": "blosc", "shuffle": 1}'}
    assert {t.file_io_mode for t in tests} == {"default", "direct"}
    assert space["load_into"] == "new" and {t.load_into for t in tests} == {"new"}  # one destination, peers' too
    assert {t.chunk_strategy for t in tests} == {"halve", "divisor"}
    t5x = suite.test("t5x_full")
    assert (t5x.format, t5x.chunk_size_elements, t5x.concurrency_limit, t5x.compression) == (
        "zarr2", 262144, 128, {"id": "gzip", "level": 1})


def test_the_space_tries_each_peer_with_its_settings(tmp_path):
    """The space's `references` block is the peers' axes: one row per setting of each kind the tune measures, named
    by its settings and run with them; a kind it does not list runs at its defaults; a kind not measured, not at
    all."""
    space = load_space(SPACE_FILE)
    settings = dataclasses.replace(_settings(tmp_path), reference_rows=space["references"],
                                   reference_kinds=("safetensors", "runai_streamer", "torch_dcp", "device_ceiling"))
    assert settings.references == ["safetensors", "runai_streamer", "runai_streamer_conc=64_chunk=8MB", "torch_dcp",
                                   "torch_dcp_threads=4", "device_ceiling"]
    data = settings.suite_data([fields.entry(config.TestSpec("t", chunk_bytes=2**20, concurrency_limit=4))],
                               tmp_path / "stage", references=True, seed=1)
    suite = config.from_dict(data)
    rows = {t.name: t for t in suite.tests if t.is_reference}
    assert list(rows) == settings.references
    assert rows["runai_streamer_conc=64_chunk=8MB"].reference_settings["chunk_bytesize"] == 8 * 2**20
    assert rows["torch_dcp_threads=4"].reference_settings == {"thread_count": 4}
    assert prior_reference_s("runai_streamer_conc=64_chunk=8MB", 10**9) == prior_reference_s(
        "runai_streamer", 10**9)


def test_every_row_of_a_tune_loads_into_the_spaces_one_destination(tmp_path):
    """The space's load_into is every row's, the peers' as the candidates': a stage's suite holds no row of another
    destination (before, the peers loaded into new arrays beside candidates that loaded into preallocated ones)."""
    space = {**SMALL_SPACE, "load_into": "preallocated"}
    settings = session._setup(_settings(tmp_path), space, "space").settings
    entries = [fields.entry(t) for t in candidates(space, settings).tests[:2]]
    rows = config.from_dict(settings.suite_data(entries, tmp_path / "stage", references=True, seed=1)).tests
    assert [t.name for t in rows if t.is_reference] == settings.references and len(rows) == len(settings.references) + 2
    assert {(t.load_into, t.load_into_note) for t in rows} == {("preallocated", None)}


def test_identical_layouts_are_measured_once(shipped):
    space, suite = shipped
    shapes = sorted({shape for _, shape in weights.preset_shapes("smollm2-135m")})
    universe = make_universe(space, suite, shapes)
    assert universe.always == ("t5x_full",)
    assert len(universe.tests) + len(universe.duplicates) == 2161
    assert 0 < len(universe.duplicates) < 2161
    for name, same in universe.duplicates[::25]:
        twin, kept = suite.test(name), universe.tests[same]
        assert name not in universe.tests
        assert twin.to_json() != kept.to_json()  # different settings...
        assert layout_key(twin, "float32", shapes) == layout_key(kept, "float32", shapes)  # ...same layout
    # t5x_full's twin in the grid (zarr2, 1 MB, halve, 128, gzip-1, default) is the duplicate, not t5x_full
    assert any(same == "t5x_full" for _, same in universe.duplicates)
    # the sample spreads every axis evenly and is the same for the same seed
    chosen = sample(universe, 40, seed=7)
    assert chosen == sample(universe, 40, seed=7) != sample(universe, 40, seed=8)
    assert len(set(chosen)) == 40 and "t5x_full" not in chosen
    formats = [universe.axes[n]["formats"] for n in chosen]
    assert all(formats.count(f) == 10 for f in ("zarr2", "zarr3", "zarr3_sharded", "ocdbt"))


def test_test_entries_read_back_to_the_same_layout(shipped):
    from ckptbench.bench.storage import Layout

    _, suite = shipped
    for test in suite.tests[::97]:
        entry = fields.entry(test)
        again = config.from_dict({"model": "tiny", "test_configurations": [entry]}).tests[0]
        assert Layout.of(again, "float32") == Layout.of(test, "float32"), entry


@pytest.mark.parametrize(("change", "expected"), [
    (lambda s: s["axes"].update(chunk_byte=["1MB"]),
     "field axes: unknown key 'chunk_byte'; did you mean 'chunk_bytes'?"),
    (lambda s: s["axes"].update(concurrency_limit=["many"]), "field axes.concurrency_limit"),
    (lambda s: s["axes"].update(file_io_mode=["fast"]), "field axes.file_io_mode"),
    (lambda s: s.update(formats={}), "field formats: is empty"),
    (lambda s: s["formats"].update({"bad name!": {"format": "zarr2"}}), "format name 'bad name!' is not valid"),
    (lambda s: s["formats"].update(zarr4={"format": "zarr4"}), "field formats.zarr4.format"),
    (lambda s: s.pop("formats"), "missing required field 'formats'"),
    (lambda s: s["axes"].update(compression=["lz5"]), "unknown compression id 'lz5'"),
    (lambda s: s["axes"].pop("concurrency_limit"), "missing required field 'concurrency_limit'"),
    (lambda s: s["always"].append(dict(s["always"][0])), "duplicate test name 't5x_full'"),
    (lambda s: s.update(references={"runai_streamer": [{"concurrency": 0}]}),
     "field references.runai_streamer.0.concurrency: must be at least 1"),
    (lambda s: s.update(references={"fastsafetensors": {"threads": 4}}),
     "field references.fastsafetensors: unknown key 'threads'"),
    (lambda s: s["axes"].update(load_into=["new", "preallocated"]), "load_into is not an axis"),
    (lambda s: s.update(load_into="mapped"), "field load_into"),
])
def test_bad_space_files_are_one_line_errors(tmp_path, change, expected):
    space = json.loads(json.dumps(SMALL_SPACE))
    change(space)
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    with pytest.raises(UserError) as caught:
        candidates(load_space(path), _settings(tmp_path), str(path))
    message = str(caught.value)
    assert "\n" not in message and expected in message, message


@pytest.mark.parametrize(("text", "expected"), [("{not json", "invalid JSON at line 1"), ("[1, 2]", "top level")])
def test_unreadable_space_files(tmp_path, text, expected):
    path = tmp_path / "space.json"
    path.write_text(text)
    with pytest.raises(UserError, match=expected):
        load_space(path)
    with pytest.raises(UserError, match="no such file"):
        load_space(tmp_path / "missing.json")


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, run_cli):
    bad = tmp_path / "space.json"
    bad.write_text(json.dumps({**SMALL_SPACE, "axes": {**SMALL_SPACE["axes"], "concurrency_limit": [0]}}))
    out = tmp_path / "out"
    for argv, field in ((["--space", bad], "concurrency_limit"), (["--budget", "ten minutes"], "--budget"),
                        (["--budget", "5s"], "--budget"), (["--objective", "speed"], "--objective"),
                        (["--storage", "memory://"], "--storage"), (["--budget", "10s"], "too short")):
        status, stdout, stderr = run_cli("tune", "--model", "tiny", "--output-dir", out, "--no-progress", *argv)
        assert status == 2, (argv, stderr)
        assert stderr.count("\n") == 1 and field in stderr, stderr
        assert not out.exists()
    status, _, stderr = run_cli("tune", "--resume", "--output-dir", out, "--no-progress")
    assert status == 2 and "no tune to resume" in stderr and not out.exists()


# --- the files the previous version wrote --------------------------------------------------------------

# tune_state.json (version 1) and tuning.json (version 1) of a tune stopped by SIGINT in its second final round
V1 = Path(__file__).with_name("fixtures") / "tune_v1.json"


def test_a_state_the_previous_version_wrote_reads_for_a_resume(tmp_path):
    from ckptbench.tune import state as tune_state

    old = json.loads(V1.read_text())["tune_state"]
    (tmp_path / STATE_FILE).write_text(json.dumps(old))
    state = tune_state.load(tmp_path)
    assert state.phase == "final" and [(s.name, s.status) for s in state.stages] == [
        ("rung-0", "budget"), ("final-1", "complete"), ("final-2", "running")]
    assert state.durations.runs == old["durations"]["runs"] and state.plan.to_json() == old["plan"]
    expected = {key: value for key, value in old.items() if key != "format"}
    # nothing lost; the upgrade adds the reference rows version 1 always ran
    expected["settings"] = {"reference_kinds": ["safetensors", "torch_save", "device_ceiling"], **old["settings"]}
    assert state.to_json() == expected
    tune_state.save(state, tmp_path)
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert (saved["kind"], saved["schema_version"]) == ("tune state", 2)
    assert tune_state.load(tmp_path).to_json() == state.to_json()


def test_a_tuning_document_the_previous_version_wrote_reads(tmp_path):
    old = json.loads(V1.read_text())["tuning"]
    path = tmp_path / TUNING_FILE
    path.write_text(json.dumps(old))
    document = read(path).document
    assert (document["kind"], document["schema_version"]) == ("tuning", 3)
    # every summary's symmetric ci95 gives way to its log-scale interval, which version 2 held as ci95_log
    text = json.dumps(document)
    assert "ci95_log" not in text and text.count('"ci95"') == json.dumps(old).count('"ci95_log"') > 0
    for name, candidate in old["candidates"].items():
        assert {m: s["ci95"] for m, s in document["candidates"][name]["stats"].items()} == {
            m: s["ci95_log"] for m, s in candidate["stats"].items()}

    def without_intervals(node):
        if isinstance(node, dict):
            return {k: without_intervals(v) for k, v in node.items() if k not in ("ci95", "ci95_log", "kind")}
        return [without_intervals(v) for v in node] if isinstance(node, list) else node

    assert without_intervals(document) == without_intervals({**old, "schema_version": 3})  # nothing else changed


@pytest.mark.parametrize(("text", "expected"), [
    ("{not json", "not a readable tune state file"),
    ('{"kind": "results", "schema_version": 3}', "a ckptbench results file, not a tune state file"),
    ('{"format": "ckptbench-tune-state-0"}', "schema_version None is not one this tool reads"),
    ('{"format": "ckptbench-tune-state-1", "seed": 1}', "not a valid ckptbench tune state file: top level: 'settings'"),
])
def test_a_state_that_cannot_be_read_is_one_line_saying_start_afresh(tmp_path, text, expected):
    from ckptbench.tune import state as tune_state

    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(UserError) as caught:
        tune_state.load(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and expected in message and message.endswith("start afresh without --resume"), message


# --- a whole tune against a virtual clock -----------------------------------------------------------------

# What results.json's schema requires of a machine (results.write validates); no decision reads it.
_ENVIRONMENT = {"timestamp": "2025-01-01T00:00:00", "cpu_count": 2, "ram_bytes": 8 * 2**30}


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _true_seconds(test: config.TestSpec) -> tuple[float, float]:
    """A made-up disk: bigger chunks and more concurrency help, compression costs CPU; seconds for 0.5 GB."""
    if test.is_reference:  # the streamer's row of the space's tuned settings loads faster than its defaults
        return {"safetensors": (1.0, 2.0), "torch_save": (2.4, 1.1), "device_ceiling": (0.4, 0.3),
                "runai_streamer": (1.0, 0.9), "runai_streamer_conc=64_chunk=8MB": (1.0, 0.6)}[test.name]
    chunk = test.chunk_bytes or test.chunk_size_elements * 4
    io = 0.3 + 2.0 / math.sqrt(chunk / 2 ** 18) / math.sqrt(test.concurrency_limit)
    cpu = {None: 0.0, "zstd": 0.6, "blosc": 0.4, "gzip": 5.0}[(test.compression or {}).get("id")]
    direct = 0.8 if test.file_io_mode == "direct" else 1.0
    return io + cpu + 0.2 * (test.format == "zarr3"), io * direct + cpu / 3


def _true_size(test: config.TestSpec) -> int:
    codec = (test.compression or {}).get("id")
    ratio = {None: 1.0, "zstd": 0.93, "blosc": 0.97, "gzip": 0.92}[codec]
    return int(5_000_000 * ratio) + 4096 * (test.format == "zarr3")


@pytest.mark.slow  # a whole tune
@pytest.mark.parametrize(("objective", "budget_s"), [("balanced", 600.0), ("size", 200.0)])
def test_a_simulated_tune_keeps_its_budget_and_finds_the_best_measured(tmp_path, monkeypatch, capsys, objective,
                                                                       budget_s):
    """The whole orchestration (sampling, rungs, the runner's guard, the final, the checkpoint) with a fake
    runner whose runs take simulated seconds on a virtual clock: the budget is kept, and the answer is the
    truly best of what rung 0 sampled."""
    from ckptbench.core.errors import Skip, Stopped

    clock = _Clock()
    rng = np.random.default_rng(11)
    measured_by_stage: dict[str, list[str]] = {}
    heard: list = []

    def fake_run(context):
        suite, source = context.config, context.source
        done = []
        stopped = None
        for position, test in enumerate(suite.tests):
            planned = records.PlannedRun(test.name, 0, position)
            reason = context.may_start(planned)
            if isinstance(reason, Skip):  # this run alone is skipped, as the runner does
                continue
            if reason is not None:  # the guard's stop, as the runner raises it
                stopped = Stopped.by_budget(reason)
                break
            context.observer.phase(planned, "save")
            save_s, load_s = (_lognormal(rng, t, 0.05) for t in _true_seconds(test))
            seconds = save_s + load_s + 1.5  # + eviction, verification, deletion
            clock.now += seconds
            size = 5_000_000 if test.is_reference else _true_size(test)
            record = records.RunRecord(test.name, 0, position, False, save_s=save_s, load_s=load_s,
                                       size_bytes=size, disk_bytes=size, n_files=10, load_cache="cold", verified=True)
            record.started_at -= seconds
            done.append(record)
            context.observer.record(record)
        measured_by_stage[suite.output_dir.name] = [r.test for r in done]
        document = results.build(suite, source.describe(), done, _ENVIRONMENT, 1, complete=stopped is None)
        outcome = results.Results(document, results.write(document, suite.output_dir))
        if stopped is not None:
            stopped.partial = outcome
            raise stopped
        return outcome

    tuning = session.run(Settings(output_dir=tmp_path / "out", model="tiny", budget_s=budget_s, seed=4,
                                  objective=objective), Hooks(on_event=heard.append, clock=clock, execute=fake_run))
    document = tuning.document
    # the budget: nothing started that would not end in time (the run estimates come from measured runs)
    assert clock.now <= budget_s * 1.1
    assert document["budget"]["spent_s"] <= budget_s * 1.1
    assert clock.now > budget_s * 0.5  # and the budget was used, not wasted
    # rung 0 sampled more candidates than the prior (0.7 s per run) could tell, and stopped by the budget
    stages = document["stages"]
    assert stages[0]["name"] == "rung-0" and stages[0]["status"] == "budget"
    # the peers first (each setting the space tries the streamer with is a row), then the candidates the plan
    # expects, the ceiling, the rest (the ceiling is what a slow machine leaves out, not the candidates)
    peers = ["safetensors", "runai_streamer", "runai_streamer_conc=64_chunk=8MB"]
    members = stages[0]["members"]
    assert members[:len(peers)] == peers
    assert members.index("device_ceiling") == len(peers) + 3
    assert "t5x_full" in measured_by_stage["rung-0"]
    # on a time objective, once t5x_full's gzip measured more than 4x the best, rung 0 skips the other gzip
    # candidates before they run, each recorded with its prediction (and not as "not measured")
    skipped = document["space"]["predicted_hopeless"]
    assert bool(skipped) == (objective != "size")
    for name, why in skipped.items():
        assert name not in measured_by_stage["rung-0"] and name not in document["candidates"]
        assert name not in document["space"]["not_measured"] and "comp=gzip" in name
        assert why["predicted"] > 4 * why["best_mean"] and "skipped before running" in why["reason"]
    assert document["budget"]["corrected"]["run_s_measured"] > 2 * document["budget"]["estimate"]["run_s"]
    # the reference rows all ran in rung 0; the final repeats only rung 0's fastest peer on the objective (what
    # the answer needs: the winner against it), in final-1 and until it has 3 runs; halving rungs run none; the final repeated t5x_full
    references = {*peers, "device_ceiling"}
    peers = set(peers)
    for stage in stages:
        ran = set(measured_by_stage[stage["name"]])
        if stage["name"] == "rung-0":
            assert references <= ran
        elif stage["kind"] == "final":
            assert len(ran & peers) <= 1 and "device_ceiling" not in ran, ran
            assert stage["name"] != "final-1" or len(ran & peers) == 1
        else:
            assert not references & ran
    assert any(s["kind"] == "final" for s in stages)
    # t5x_full is repeated in the final unless it measured more than 4x slower than the leader: then it is not run
    # again (the simulated gzip costs 5 s against about 1 s)
    metric = document["metric"]
    t5x = document["candidates"]["t5x_full"]["stats"][metric]
    best = min(c["stats"][metric]["mean"] for c in document["candidates"].values())
    if "t5x_full" not in measured_by_stage["final-1"]:
        assert t5x["n"] == 1 and t5x["mean"] > 3.5 * best, (t5x, best)
    # the answer: the truly best candidate among those measured
    suite = candidates(load_space(SPACE_FILE), Settings(output_dir=tmp_path, model="tiny"))
    tests = [t for t in suite.tests if t.name in document["candidates"]]
    winner = document["recommendation"]["test"]
    if objective == "size":
        assert _true_size(suite.test(winner)) == min(_true_size(t) for t in tests)
        assert document["noise_model"]["last"]["log_sd"] == 0.0
    else:
        truth = {t.name: sum(_true_seconds(t)) for t in tests}
        assert truth[winner] <= min(truth.values()) * 1.05, (winner, sorted(truth.items(), key=lambda kv: kv[1])[:3])
        # the fastest peer got the runs an interval needs before the final stopped on separation
        fastest_peer = document["recommendation"]["peers"][document["metric"]]
        assert fastest_peer["test"] == "runai_streamer_conc=64_chunk=8MB"  # the peer's best setting, tuned
        assert measured_by_stage["final-1"].count("runai_streamer_conc=64_chunk=8MB") == 1
        peer_runs = fastest_peer["n"]
        assert peer_runs >= 3 or document["stopped_by"] == "budget", (peer_runs, document["stopped_by"])
        assert (fastest_peer["ratio_ci95"] is not None) == (peer_runs >= 3), fastest_peer
        versus_t5x = document["recommendation"]["versus"]["t5x_full"]
        # the final stops once the finalists separate; t5x_full measured twice has no interval then, once (not run
        # again, more than 4x slower) no test
        expected = {1: "insufficient data", 2: "too few runs"}.get(versus_t5x["n"], "faster")
        assert versus_t5x["verdict"] == expected, versus_t5x
        assert versus_t5x["ratio"] < 1.0
    assert document["paste"]["verified"] is True
    # the progress: typed events in the order the tune went, which the display renders line by line
    kinds = [type(event) for event in heard]
    assert kinds[0] is tune_events.Estimate and kinds[-1] is tune_events.Finishing
    assert kinds.count(tune_events.Corrected) == 1 and kinds.index(tune_events.Corrected) < kinds.index(
        tune_events.StageStarted, kinds.index(tune_events.StageEnded))  # after rung 0, before the next stage
    assert kinds.count(tune_events.StageStarted) == kinds.count(tune_events.StageEnded) == len(stages)
    assert sum(k is tune_events.RunEnded for k in kinds) == sum(len(v) for v in measured_by_stage.values())
    assert {e.test for e in heard if isinstance(e, tune_events.Skipped)} == set(skipped)
    assert heard[0].n_listed == len(document["space"]["sampled"]) and heard[0].references == [
        "safetensors", "runai_streamer", "runai_streamer_conc=64_chunk=8MB", "device_ceiling"]
    capsys.readouterr()
    display = TuneProgress()
    display._lines = True  # a log's lines, as in CI (no bar)
    for event in heard:
        display.event(event)
    display.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("tune: tiny") and any(line.startswith("after rung 0: measured") for line in lines)
    assert sum(line.startswith("[rung-0 ") for line in lines) == len(measured_by_stage["rung-0"])
    assert lines[-1].startswith("writing the tuned checkpoint")
    eliminated = [c for c in document["candidates"].values() if c["status"] == "eliminated"]
    # each eliminated for a reason: its best case loses, or it measured more than 4x slower than the best (not run
    # again, the figures its runs gave), or every run failed
    assert eliminated and all("best case" in c["eliminated"]["reason"] or c["eliminated"].get("censored")
                              for c in eliminated if not c["eliminated"]["reason"].startswith("failed"))
    for candidate in eliminated:
        if candidate["eliminated"].get("censored"):
            assert candidate["eliminated"]["mean"] > 4 * candidate["eliminated"]["best_mean"]
            assert "more than 4x slower" in candidate["eliminated"]["reason"]


# --- a real tune of the tiny model: interrupted by SIGINT, resumed, read back ----------------------------

BUDGET = "45s"  # enough for the pre-check on a loaded 2-core machine; a tune's wall time is its budget at most


@pytest.fixture(scope="module")
def tiny_tune(tmp_path_factory):
    """One real tune of the tiny model: started as a subprocess of the entry script, stopped by SIGINT in
    rung 0, refused a resume with other settings, then resumed through the CLI in this process.
    Returns what each step left, for the tests below to check."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from ckptbench.cli import app as cli

    root = tmp_path_factory.mktemp("tune")
    space = root / "space.json"
    space.write_text(json.dumps(SMALL_SPACE))
    out = root / "out"
    proc = subprocess.Popen(
        [sys.executable, str(STREAMLINED), "tune", "--model", "tiny", "--values", "random", "--budget", BUDGET,
         "--space", str(space), "--output-dir", str(out), "--seed", "9", "--keep", "--objective", "load"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    facts: dict = {"out": out}
    facts["stopped"] = act_on_stderr_line(proc, "[rung-0 7/", lambda: proc.send_signal(signal.SIGINT), timeout=180)
    facts["state"] = json.loads((out / STATE_FILE).read_text())
    facts["partial"] = json.loads((out / TUNING_FILE).read_text())
    facts["journal"] = (out / "rung-0" / "journal.jsonl").read_text().splitlines()
    facts["runs_left"] = (out / "rung-0" / "runs").exists()

    def cli_run(*argv: str) -> tuple[int, str, str]:
        stdout, stderr = io.StringIO(), io.StringIO()
        with redirect_stdout(stdout), redirect_stderr(stderr):
            status = cli.main([str(a) for a in argv])
        return status, stdout.getvalue(), stderr.getvalue()

    facts["refused"] = cli_run("tune", "--resume", "--output-dir", out, "--model", "smollm2-135m", "--no-progress")
    facts["journal_after_refusal"] = (out / "rung-0" / "journal.jsonl").read_text().splitlines()
    facts["resumed"] = cli_run("tune", "--resume", "--output-dir", out)
    return facts


@pytest.mark.slow  # a real tune (tiny_tune)
def test_a_stop_keeps_what_was_measured(tiny_tune):
    status, stderr = tiny_tune["stopped"]
    assert status == 130, stderr
    assert "tune --resume" in stderr
    state = tiny_tune["state"]
    assert state["stages"][0]["name"] == "rung-0" and state["stages"][0]["status"] == "running"
    assert state["durations"]["runs"]  # the measured run times are kept for the budget
    partial = tiny_tune["partial"]
    assert partial["complete"] is False and partial["stopped_by"] == "interrupted"
    assert partial["recommendation"] is None
    assert len(tiny_tune["journal"]) - 1 >= 5  # the header, then the runs finished before SIGINT
    assert not tiny_tune["runs_left"]  # no half-written checkpoint left


@pytest.mark.slow  # a real tune (tiny_tune)
def test_resume_refuses_other_settings_and_changes_nothing(tiny_tune):
    status, _, err = tiny_tune["refused"]
    assert status == 2 and err.count("\n") == 1 and "model" in err, err
    assert tiny_tune["journal_after_refusal"] == tiny_tune["journal"]


@pytest.mark.slow  # a real tune (tiny_tune)
def test_resume_continues_and_finishes(tiny_tune):
    status, stdout, stderr = tiny_tune["resumed"]
    out = tiny_tune["out"]
    assert status == 0, stderr
    document = read(out / TUNING_FILE).document
    assert document["complete"] is True and document["seed"] == 9
    before = [json.loads(line)["test"] for line in tiny_tune["journal"][1:]]
    after = [json.loads(line)["test"] for line in (out / "rung-0" / "journal.jsonl").read_text().splitlines()[1:]]
    assert after[:len(before)] == before  # the runs before SIGINT were kept, not run again
    assert len(after) == len(set(after)) > len(before)
    assert stdout.startswith("Recommendation for tiny")
    assert "resumed" in stderr


@pytest.mark.slow  # a real tune (tiny_tune)
def test_a_tiny_tune_end_to_end(tiny_tune):
    status, stdout, stderr = tiny_tune["resumed"]
    out = tiny_tune["out"]
    assert status == 0, stderr
    document = read(out / TUNING_FILE).document
    assert document["objective"] == "load" and document["metric"] == "load_s"
    # the wall time of both sessions, as recorded, within the budget (and one run of slack)
    assert document["budget"]["spent_s"] <= 45 * 1.1 + 5
    found = document["recommendation"]
    assert found["test"] in document["candidates"] and document["candidates"][found["test"]]["status"] == "winner"
    assert found["objective"]["n"] >= 2 and found["objective"]["ci95"] is not None
    assert set(found["versus"]) >= set(DEFAULT_REFERENCES) - {"device_ceiling"}
    assert found["pct_of_ceiling"]["load_gbps"] > 0
    assert found["runner_up"] is not None and isinstance(found["runner_up"]["distinguishable"], bool)
    # "tied" is printed only when Welch's test ran on both (two runs a side at least) and did not separate them
    second = found["runner_up"]
    runs = (found["objective"]["n"], second["objective"]["n"])
    assert second["judgement"] == ("not compared" if min(runs) < 2 else
                                   "separated" if second["comparison"]["p_value"] < 0.05 else "not distinguishable")
    assert ("tied" in stdout) == (second["judgement"] == "not distinguishable"), stdout
    # printed: the recommendation first, then what to paste, then how it was found
    assert stdout.index("runner-up") < stdout.index("TensorStore spec") < stdout.index("Phase 4 test entry")
    assert str(out / TUNING_FILE) in stdout and "Tuned in" in stdout
    assert "candidates left" in stderr and "left" in stderr
    # every stage is a normal suite: its results.json, every run verified and cold, no run folder left
    assert document["stages"][0]["name"] == "rung-0"
    assert any(stage["kind"] == "final" for stage in document["stages"])
    for stage in document["stages"]:
        suite_document = results.read(out / stage["results"]).document
        runs = [r for t in suite_document["tests"] for r in t["runs"]]
        assert runs and all(r["verified"] for r in runs if r["error"] is None)
        assert {r["load_cache"] for r in runs} <= {"cold"}
        assert not (out / stage["name"] / "runs").exists()
        # one destination, the space's (default new), for every row, peers too; the ceiling reads into its buffer
        assert {t["settings"]["load_into"] for t in suite_document["tests"] if t["name"] != "device_ceiling"} == {"new"}
    assert set(DEFAULT_REFERENCES) <= set(document["references"])
    assert document["load_into"] == "new"
    assert {n: r["load_into"] for n, r in document["references"].items()} == {
        n: "preallocated" if n == "device_ceiling" else "new" for n in document["references"]}
    assert (out / "tuning.png").read_bytes()[:8] == PNG_MAGIC
    assert document["pareto"] and set(document["pareto"]) <= set(document["candidates"])
    assert json.loads((out / STATE_FILE).read_text())["phase"] == "done"


@pytest.mark.slow  # a real tune (tiny_tune)
def test_the_pasted_spec_reads_the_tuned_checkpoint_back_bit_for_bit(tiny_tune, tiny_weights):
    import tensorstore as ts

    from ckptbench.bench.storage import Layout

    out = tiny_tune["out"]
    assert tiny_tune["resumed"][0] == 0
    document = read(out / TUNING_FILE).document
    paste = document["paste"]
    assert paste["verified"] is True and paste["checkpoint"] == str(out / "runs" / CHECKPOINT)
    context = ts.Context(paste["context"])
    # the spec exactly as printed (its metadata must match what is on disk)
    example = ts.open(paste["spec"], open=True, context=context).result().read().result()
    assert_same_bits({paste["example_array"]: tiny_weights.tensors[paste["example_array"]]},
                     {paste["example_array"]: np.asarray(example)})
    # every other array: its own name in the kvstore path, its shape and chunks from its own metadata
    loaded = {}
    for name in tiny_weights.tensors:
        spec = json.loads(json.dumps(paste["spec"]))
        spec.pop("metadata")
        spec["kvstore"]["path"] = spec["kvstore"]["path"].replace(paste["example_array"], name)
        loaded[name] = np.asarray(ts.open(spec, open=True, context=context).result().read().result())
    assert_same_bits(tiny_weights.tensors, loaded)
    # the Phase 4 test entry loads as a config test with the winner's layout
    pasted = config.from_dict({"model": "tiny", "test_configurations": [paste["test_entry"]]}).tests[0]
    winner = config.from_dict({"model": "tiny", "test_configurations": [document["recommendation"]["settings"]]})
    assert Layout.of(pasted, "float32") == Layout.of(winner.tests[0], "float32")
