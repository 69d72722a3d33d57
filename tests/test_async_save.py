"""Async saves (issue 27): the loop may modify the weights once blocked_s ends, the stand-in step, bad input, the
figures in results.json, Ctrl-C during a background commit, and the shipped sweep on `tiny`."""

from __future__ import annotations

import json
import signal
import statistics

import numpy as np
import pytest
from conftest import REPO, assert_same_bits, run_config
from test_interrupt import _interrupt_at, _journal_runs, _resume, _start

from ckptbench.bench import async_save, measure, storage
from ckptbench.bench.async_save import StandInStep, slowdown, time_lost_s
from ckptbench.bench.references.ceiling import DeviceCeilingBackend
from ckptbench.bench.references.files import SafetensorsBackend, TorchSaveBackend
from ckptbench.bench.references.peers import TorchDCPBackend
from ckptbench.bench.targets import LocalTarget
from ckptbench.documents import results
from ckptbench.reports import results as report
from ckptbench.spec import config as config_mod
from ckptbench.spec import fields

ASYNC_TS = {"name": "ts", "chunk_bytes": "64KB", "concurrency_limit": 8, "compression": "none",
            "save_mode": "async", "train_step_bytes": "1MB"}
# The stand-in step of rows without train_step_bytes (reference rows have none): 1 MiB, as ASYNC_TS's, not 1 GiB
# (seconds of steps timed alone in every such row, for nothing checked here)
STEP_BYTES = 2**20
SYNC_TS = {k: v for k, v in ASYNC_TS.items() if k != "save_mode"}


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {"a.weight": rng.standard_normal((64, 96), dtype=np.float32),
            "b.weight": rng.standard_normal((300,), dtype=np.float32)}


def _tensorstore() -> storage.TensorStoreBackend:
    test = config_mod.from_dict({"model": "tiny", "test_configurations": [ASYNC_TS]}).test("ts")
    return storage.TensorStoreBackend(storage.Layout.of(test, "float32"), 2**30)


INNER = {
    "tensorstore": _tensorstore,
    "torch_save": TorchSaveBackend,
    "safetensors": SafetensorsBackend,
    "torch_dcp": TorchDCPBackend,
    "torch_dcp_process": lambda: TorchDCPBackend(async_checkpointer="process"),
    "device_ceiling": lambda: DeviceCeilingBackend("fadvise"),
}


@pytest.mark.parametrize("kind", list(INNER))
def test_blocked_ends_when_the_weights_may_be_modified(kind, tmp_path):
    """Modify every weight right after the blocking part returns: the checkpoint still holds the original."""
    tensors = _weights()
    original = {name: array.copy() for name, array in tensors.items()}
    backend = async_save.wrap(INNER[kind](), fields.TestSpec("x", save_mode="async", backend=kind,
                                                             train_step_bytes=STEP_BYTES), "fadvise")
    location = LocalTarget(tmp_path).new_run("x")
    backend.prepare(tensors)
    finish, _cancel = async_save.begin(backend.inner, tensors, location)
    for array in tensors.values():
        array[...] = 7.0  # the training loop goes on
    finish()
    backend.before_load(original)
    assert_same_bits(original, backend.load(location))
    backend.release()  # ends a DCP process


def test_the_stand_in_step_alone_is_not_slowed_down():
    step = StandInStep({"w": np.ones(2**20, np.float32)}, 256 * 2**20)
    alone_s = step.alone_s()
    again = [step() for _ in range(10)]
    # Within noise of zero: generous (half the step, or twice the steps' own spread on a shared machine); a step
    # timed alone while still cold (caches, the CPU's clock) would read as a steady speed-up and fail here
    spread = statistics.stdev(again) / statistics.fmean(again)
    assert abs(slowdown(alone_s, again)) < max(0.5, 2 * spread), (alone_s, again)


def test_the_memory_pre_check_counts_the_staged_copy():
    from ckptbench.bench import capacity

    sync, asynchronous = fields.TestSpec("s", backend="torch_save"), fields.TestSpec("a", backend="torch_save",
                                                                                       save_mode="async")
    assert capacity.peak_memory_bytes(asynchronous, 10**9, 2**30) - capacity.peak_memory_bytes(sync, 10**9, 2**30) \
        == 10**9


def test_training_time_lost_is_blocked_plus_the_steps_extra_time():
    assert time_lost_s(0.5, 0.1, [0.15, 0.1, 0.3]) == pytest.approx(0.5 + 0.05 + 0.0 + 0.2)
    assert slowdown(0.1, []) is None


@pytest.mark.parametrize(("change", "words"), [
    ({"in_flight": "one_tensor"}, "in_flight"),
    ({"timed_conversion": True}, "timed_conversion"),
    ({"train_step_bytes": 0}, "train_step_bytes"),
    ({"train_step_bytes": "-1MB"}, "train_step_bytes"),
    ({"save_mode": "later"}, "save_mode"),
])
def test_bad_async_input_is_one_line_exit_2_nothing_written(change, words, run_cli, write_config, tmp_path):
    out = tmp_path / "out"
    path = write_config({"model": "tiny", "output_dir": str(out), "testing": {"num_runs": 1},
                         "test_configurations": [{**ASYNC_TS, **change}]})
    status, stdout, stderr = run_cli("--config", path)
    assert status == 2 and stdout == "" and stderr.count("\n") == 1 and words in stderr, stderr
    assert not out.exists()


@pytest.mark.parametrize("flags", [("--tp", "2"), ("--processes", "2")])
def test_async_with_several_processes_is_refused(flags, run_cli, write_config, tmp_path):
    out = tmp_path / "out"
    sync_ts = {k: v for k, v in ASYNC_TS.items() if k not in ("save_mode", "train_step_bytes")}
    path = write_config({"model": "tiny", "output_dir": str(out), "testing": {"num_runs": 1},
                         "references": {"torch_save": {"save_mode": "async"}}, "test_configurations": [sync_ts]})
    status, stdout, stderr = run_cli("--config", path, *flags)
    assert status == 2 and stdout == "" and stderr.count("\n") == 1 and "save_mode" in stderr, stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def async_suite(tmp_path_factory):
    cfg = {"model": "tiny", "testing": {"num_runs": 1, "seed": 4}, "baseline": "ts_mode=sync",
           "references": {"torch_save": [{}, {"save_mode": "async"}], "torch_dcp": {"save_mode": "async"}},
           "test_configurations": [{**ASYNC_TS, "save_mode": ["sync", "async"]}]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(async_save, "DEFAULT_STEP_BYTES", STEP_BYTES)
        return run_config(tmp_path_factory.mktemp("async"), cfg, "async.json")


def test_results_record_every_async_figure(async_suite):
    status, document, out = async_suite
    assert status == 0 and document["complete"] is True
    results.RESULTS.validate(document)
    console = report.console(document)
    assert "checkpoint while training" in console and "same cores" in console
    by_name = {t["name"]: t for t in document["tests"]}
    assert set(by_name) == {"ts_mode=sync", "ts_mode=async", "torch_save", "torch_save_mode=async",
                            "torch_dcp_mode=async"}
    for name, test in by_name.items():
        run = test["runs"][0]
        assert run["verified"] is True, name
        if test["settings"]["save_mode"] == "sync":
            assert run["blocked_s"] is None and run["training_lost_s"] is None, name
            continue
        assert 0 <= run["blocked_s"] <= run["commit_s"] == run["save_s"], name
        assert run["staging_bytes"] >= 0 and run["step_alone_s"] > 0, name
        assert run["training_lost_s"] == pytest.approx(
            run["blocked_s"] + sum(s - run["step_alone_s"] for s in run["steps_during_s"])), name
        assert test["stats"]["training_lost_s"]["n"] == 1, name
    # the staged copies' peak is reported apart from the bound's, which only sync rows are held to
    assert document["scale"]["async_anon_peak_bytes"] > 0 and document["scale"]["anon_peak_bytes"] > 0
    answer = document["while_training"]
    rows = {row["test"]: row for row in answer["rows"]}
    assert set(rows) == {"ts_mode=async", "torch_save_mode=async", "torch_dcp_mode=async"}
    assert rows["ts_mode=async"]["sync_test"] == "ts_mode=sync"
    assert rows["torch_save_mode=async"]["sync_test"] == "torch_save"
    assert rows["torch_dcp_mode=async"]["sync_test"] is None
    assert answer["least_training_lost"] == min(rows, key=lambda n: rows[n]["training_lost_s"])
    assert all(not name.endswith("=async") for entry in document["best"].values() for name in [entry["test"]])


def test_the_async_sweep_runs_on_tiny(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(async_save, "DEFAULT_STEP_BYTES", STEP_BYTES)
    out = tmp_path / "sweep"
    status, stdout, stderr = run_cli("--config", REPO / "sweeps" / "async_save.json", "--model", "tiny",
                                     "--runs", "1", "--output-dir", out)
    assert status == 0, stderr
    document = json.loads((out / "results.json").read_text())
    modes = {t["name"]: t["settings"]["save_mode"] for t in document["tests"]}
    for kind in ("ts_1mb_conc64", "safetensors", "torch_save", "runai_streamer", "torch_dcp", "device_ceiling"):
        assert {modes.get(kind, modes.get(f"{kind}_mode=sync")), modes.get(f"{kind}_mode=async")} == {"sync", "async"}
    assert modes["torch_dcp_checkpointer=process_mode=async"] == "async"  # DCP's process-based async save too
    twins = {row["test"]: row["sync_test"] for row in document["while_training"]["rows"]}
    assert twins["torch_dcp_checkpointer=process_mode=async"] == "torch_dcp"  # the same checkpoint, saved sync
    assert all(r["verified"] for t in document["tests"] for r in t["runs"])
    assert "checkpoint while training" in stdout


def test_ctrl_c_during_an_async_save_counts_nothing_and_resumes(tmp_path):
    # some 1,300 chunk files, each fsync'd: the save outlasts the signal's way to it by far
    suite = {"model": "tiny", "testing": {"num_runs": 1},
             "test_configurations": [{"name": "slow", "chunk_size_elements": 1024, "concurrency_limit": 1,
                                      "compression": "none", "save_mode": "async", "train_step_bytes": "1MB"}]}
    config = tmp_path / "suite.json"
    config.write_text(json.dumps(suite))
    out = tmp_path / "out"
    code, stderr = _interrupt_at(_start(config, out), "slow round 1/1: save", signal.SIGINT)
    assert code == 130, stderr
    assert not (out / "runs").exists()
    assert _journal_runs(out) == []  # the interrupted save is not a result
    resumed = _resume(config, out)
    assert resumed.returncode == 0, resumed.stderr
    runs = json.loads((out / "results.json").read_text())["tests"][0]["runs"]
    assert len(runs) == 1 and all(r["verified"] and r["commit_s"] is not None for r in runs)


def test_a_stop_during_the_background_write_waits_for_it_and_leaves_nothing(tmp_path, tiny_weights):
    from ckptbench.bench import workspace
    from ckptbench.core.errors import Stopped
    from ckptbench.core.records import PlannedRun

    # some 330 chunk files, each fsync'd: the background write is still going when the first step runs
    suite = config_mod.from_dict({"model": "tiny", "output_dir": str(tmp_path / "out"),
                                  "test_configurations": [{**ASYNC_TS, "chunk_bytes": "16KB"}]})
    workspace.prepare_output_dir(suite.output_dir)
    backend = async_save.wrap(measure.backend_for(suite.test("ts"), suite), suite.test("ts"), "fadvise")
    inner_prepare = backend.prepare

    def stopped_step() -> float:
        raise Stopped.by_signal(signal.SIGINT)

    def prepare(tensors):
        inner_prepare(tensors)
        backend._step = stopped_step  # Ctrl-C lands in the first training step beside the write

    backend.prepare = prepare
    with pytest.raises(Stopped):
        measure.run_once(PlannedRun("ts", 0, 0), backend, measure.Bench(suite, tiny_weights.tensors))
    assert [p for p in (suite.output_dir / workspace.RUNS_DIR).iterdir() if p.is_dir()] == []  # no run folder


def _dcp_process():
    from torch.distributed.checkpoint import _async_process_executor as executor

    return executor._CHECKPOINT_PROCESS


def test_dcp_process_based_async_save_is_measured_and_its_process_ended(tmp_path):
    status, document, _ = run_config(tmp_path, {
        "model": "tiny", "testing": {"num_runs": 1, "seed": 2},
        "references": {"torch_dcp": [{"save_mode": "async", "async_checkpointer": "process"},
                                     {"save_mode": "async"}]},
        "test_configurations": [SYNC_TS]})
    assert status == 0
    tests = {t["name"]: t for t in document["tests"]}
    process_row, thread_row = tests["torch_dcp_checkpointer=process_mode=async"], tests["torch_dcp_mode=async"]
    assert process_row["settings"]["reference_settings"]["async_checkpointer"] == "process"
    assert "async_checkpointer" not in (thread_row["settings"]["reference_settings"] or {})  # the default: threads
    for test in (process_row, thread_row):
        run = test["runs"][0]
        assert run["verified"] is True and 0 < run["blocked_s"] <= run["commit_s"], test["name"]
        assert run["training_lost_s"] is not None, test["name"]
    assert _dcp_process() is None  # ended after its run


def test_a_stop_during_dcp_process_based_save_ends_its_process_and_leaves_nothing(tmp_path, tiny_weights):
    from ckptbench.bench import workspace
    from ckptbench.core.errors import Stopped
    from ckptbench.core.records import PlannedRun

    suite = config_mod.from_dict({"model": "tiny", "output_dir": str(tmp_path / "out"),
                                  "test_configurations": [SYNC_TS],
                                  "references": {"torch_dcp": {"save_mode": "async",
                                                               "async_checkpointer": "process"}}})
    workspace.prepare_output_dir(suite.output_dir)
    test = suite.test("torch_dcp_mode=async")
    backend = async_save.wrap(measure.backend_for(test, suite), test, "fadvise")
    inner_prepare, started = backend.prepare, []

    def stopped_step() -> float:
        raise Stopped.by_signal(signal.SIGINT)

    def prepare(tensors):
        inner_prepare(tensors)
        started.append(_dcp_process()._save_process)  # started before the clock
        backend._step = stopped_step

    backend.prepare = prepare
    with pytest.raises(Stopped):
        measure.run_once(PlannedRun(test.name, 0, 0), backend, measure.Bench(suite, tiny_weights.tensors))
    assert started[0].exitcode is not None and _dcp_process() is None
    assert [p for p in (suite.output_dir / workspace.RUNS_DIR).iterdir() if p.is_dir()] == []


def test_a_process_checkpointer_on_a_sync_row_is_one_line_exit_2(run_cli, write_config, tmp_path):
    out = tmp_path / "out"
    path = write_config({"model": "tiny", "output_dir": str(out), "testing": {"num_runs": 1},
                         "references": {"torch_dcp": {"async_checkpointer": "process"}},
                         "test_configurations": [SYNC_TS]})
    status, stdout, stderr = run_cli("--config", path)
    assert status == 2 and stdout == "" and stderr.count("\n") == 1 and "async_checkpointer" in stderr, stderr
    assert not out.exists()


def test_an_answer_of_async_tensorstore_rows_only_points_to_their_own(async_suite):
    _, document, _ = async_suite
    only_async = {**document, "best": {}, "tests": [t for t in document["tests"] if t["name"] != "ts_mode=sync"]}
    console = report.console(only_async)
    assert "every TensorStore test that ran saved async" in console and "no TensorStore test has" not in console
    assert "checkpoint while training" in console
