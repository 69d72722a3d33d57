"""`tune` with a save_mode axis (issue 27): an async candidate is ranked by the training time it loses per checkpoint,
a sync one by its save; objectives and flags that cannot rank async candidates are refused."""

from __future__ import annotations

import json
import statistics

import pytest
from conftest import run_config

from ckptbench.documents import results
from ckptbench.tune import policy
from ckptbench.tune.answer import recommend
from ckptbench.tune.document import TUNING_FILE, read

ASYNC_SPACE = {
    "axes": {"chunk_bytes": ["64KB", "1MB"], "concurrency_limit": [16], "compression": "none",
             "save_mode": ["sync", "async"]},
    "formats": {"zarr2": {"format": "zarr2"}},
}


def _save_figure(run: dict, asynchronous: bool) -> float:
    return run["training_lost_s"] if asynchronous else run["save_s"]


def _runs(document: dict, name: str) -> list[dict]:
    test = next(t for t in document["tests"] if t["name"] == name)
    return sorted((r for r in test["runs"] if r["error"] is None and not r["warmup"]), key=lambda r: r["round"])


def test_an_async_row_is_ranked_by_training_time_lost_and_a_sync_row_by_its_save(tmp_path):
    status, document, _ = run_config(tmp_path, {
        "model": "tiny", "testing": {"num_runs": 2, "seed": 3},
        "test_configurations": [{"name": "ts", "chunk_bytes": "64KB", "concurrency_limit": 8, "compression": "none",
                                 "save_mode": ["sync", "async"], "train_step_bytes": "1MB"}]})
    assert status == 0
    samples = policy.gather([document])
    for name, asynchronous in (("ts_mode=sync", False), ("ts_mode=async", True)):
        runs = _runs(document, name)
        assert samples[name]["save_s"] == [_save_figure(r, asynchronous) for r in runs]
        assert samples[name]["total_s"] == [_save_figure(r, asynchronous) + r["load_s"] for r in runs]
        assert bool(samples[name]["commit_s"]) == asynchronous
    # the async row's save figure is not its time to durable (which results.json records as its save_s)
    assert samples["ts_mode=async"]["save_s"] != [r["save_s"] for r in _runs(document, "ts_mode=async")]
    names = ["ts_mode=sync", "ts_mode=async"]
    by_figure = sorted(names, key=lambda n: statistics.fmean(samples[n]["save_s"]))
    assert policy.ranked(names, samples, "save_s") == by_figure
    found = recommend(samples, names, "save_s", 5.0)
    assert found is not None and found["test"] == by_figure[0]
    assert found["figures"]["commit_s"]["n"] == (2 if by_figure[0] == "ts_mode=async" else 0)


def _write_space(tmp_path, space: dict) -> str:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    return str(path)


@pytest.mark.parametrize(("flags", "words"), [
    (["--objective", "load"], "--objective load"),
    (["--objective", "size"], "--objective size"),
    (["--tp", "2"], "save_mode"),
])
def test_async_candidates_with_an_objective_or_flag_that_cannot_rank_them_are_refused(tmp_path, run_cli, flags, words):
    out = tmp_path / "out"
    status, stdout, stderr = run_cli("tune", "--model", "tiny", "--space", _write_space(tmp_path, ASYNC_SPACE),
                                     "--output-dir", out, "--no-progress", *flags)
    assert status == 2 and stdout == "" and stderr.count("\n") == 1 and words in stderr, stderr
    assert not out.exists()


@pytest.mark.slow  # a real tune of the tiny model
def test_a_tune_ranks_async_candidates_by_training_time_lost(tmp_path, run_cli):
    out = tmp_path / "out"
    status, stdout, stderr = run_cli("tune", "--model", "tiny", "--space", _write_space(tmp_path, ASYNC_SPACE),
                                     "--budget", "45s", "--seed", "5", "--references", "safetensors",
                                     "--output-dir", out, "--no-progress")
    assert status == 0, stderr
    document = read(out / TUNING_FILE).document
    stages = {s["name"]: results.read(out / s["results"]).document for s in document["stages"]}
    measured = {name: c for name, c in document["candidates"].items() if c["stats"]["save_s"]["n"]}
    is_async = {name: c["settings"].get("save_mode") == "async" for name, c in measured.items()}
    assert set(is_async.values()) == {False, True}
    for name, asynchronous in is_async.items():
        runs = [r for stage in stages.values() if any(t["name"] == name for t in stage["tests"])
                for r in _runs(stage, name)]
        assert measured[name]["stats"]["save_s"]["mean"] == pytest.approx(
            statistics.fmean(_save_figure(r, asynchronous) for r in runs)), name
        assert bool(measured[name]["stats"]["commit_s"]["n"]) == asynchronous, name
    # rung 0 ranked its candidates by save + load, an async save's save being its training time lost
    ranking = document["stages"][0]["decision"]["ranking"]
    totals = {name: statistics.fmean(_save_figure(r, is_async[name]) + r["load_s"]
                                     for r in _runs(stages["rung-0"], name)) for name in ranking}
    assert len(ranking) >= 2 and ranking == sorted(totals, key=totals.__getitem__)
    assert "training time lost per checkpoint" in stdout
    assert ("saved async: blocked" in stdout) == is_async[document["recommendation"]["test"]]
