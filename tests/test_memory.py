"""Any checkpoint that fits in RAM: the anonymous peak within 1.25 x the model + 1 GB, the source weights as
a mapped file, the memory pre-check counting what the process holds, the device ceiling's grid measured
once, and dry runs that print the plan and write nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, STREAMLINED, minimal_config

from ckptbench.bench import capacity, measure, workspace
from ckptbench.bench.context import RunContext
from ckptbench.bench.references.ceiling import FIO_PREFIX, GRID
from ckptbench.bench.suite import run_suite
from ckptbench.core import records, system
from ckptbench.core.errors import Stopped
from ckptbench.sources import weights
from ckptbench.spec import config

MODEL = "smollm2-135m"  # 0.54 GB in float32: large enough that holding the source twice would show


@pytest.mark.slow  # smollm2-135m in float32: 0.54 GB
def test_the_anonymous_peak_stays_within_the_bound(tmp_path):
    """Every row of a suite, in a process of its own: the whole process's anonymous peak stays within the bound
    (1.25 x the model + 1 GB), and each operation's growth above the process's anonymous memory at the start
    (the fixed part) stays well under the 2 x of a design that holds the source weights and the loaded copy:
    the source is a mapped file, file-backed memory reported apart."""
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({
        "model": MODEL, "references": {"safetensors": True, "torch_save": True, "device_ceiling": True},
        "testing": {"num_runs": 1, "max_inflight_bytes": 2**26, "cache_eviction": "fadvise"},
        "test_configurations": [{"name": "ts", "chunk_bytes": "1MB", "concurrency_limit": 16}]}))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(STREAMLINED), "--config", str(suite), "--output-dir", str(out),
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "results.json").read_text())
    model_bytes = document["weights"]["size_bytes"]
    start = document["environment"]["rss_anon_at_start_bytes"]
    scale = document["scale"]
    assert scale["anon_bound_bytes"] == int(1.25 * model_bytes + 1e9)
    assert scale["anon_peak_bytes"] <= scale["anon_bound_bytes"]
    for test in document["tests"]:
        run = test["runs"][0]
        assert run["verified"] is True
        for op in ("save", "load"):
            assert run[f"{op}_rss_anon_bytes"] <= scale["anon_bound_bytes"]
            growth = run[f"{op}_rss_anon_bytes"] - start  # the loaded copy, and a tensor's chunks in flight
            assert growth <= 1.5 * model_bytes, (test["name"], op, growth / model_bytes)
        # the source file is mapped: while a save reads it, it is file-backed memory of the process
        assert run["save_rss_file_bytes"] >= 0.9 * model_bytes
    assert not any("anonymous memory peaked" in w for w in document["warnings"])
    assert not list(out.glob("source-*"))  # the suite removed the source file it made


def test_memory_the_process_already_holds_counts_as_available(monkeypatch):
    """A later stage of tune or explain runs in a process that already holds memory: the pre-check counts it
    as available (it is part of the estimate's fixed part), so the stage is not refused for it."""
    suite = config.from_dict(minimal_config(model=MODEL))
    model_bytes = weights.PRESETS[MODEL].n_params * 4
    need, _ = capacity.memory_need(suite, model_bytes)
    held = np.ones(300 * 2**20, dtype=np.uint8)  # 300 MB of anonymous memory this process holds
    available = int(need * capacity.SAFETY) - 200 * 2**20  # what the kernel reports: 200 MB short of the need
    monkeypatch.setattr(system, "available_memory_bytes", lambda: available)
    assert capacity.memory_refusal(suite, model_bytes) is None  # the 300 MB held count
    del held
    monkeypatch.setattr(system, "resident_bytes", lambda: (0, 0))  # a process holding nothing is refused
    assert capacity.memory_refusal(suite, model_bytes) is not None


def _ceiling_suite(tmp_path, runs: int):
    return config.from_dict({"model": "tiny", "references": {"device_ceiling": True}, "output_dir": str(tmp_path),
                             "testing": {"num_runs": runs, "cache_eviction": "fadvise", "seed": 2},
                             "test_configurations": [{"name": "t", "chunk_bytes": "1MB", "concurrency_limit": 4}]})


def _patterns(document, op: str) -> list[list[str]]:
    runs = sorted(next(t for t in document["tests"] if t["name"] == "device_ceiling")["runs"],
                  key=lambda r: r["round"])
    return [sorted(r["patterns"][op]) for r in runs]


GRID_SIZE = len(GRID)


def _grid_only(names: list[str]) -> list[str]:
    """The harness's own buffered patterns: not fio's, not the O_DIRECT read."""
    return [n for n in names if not n.startswith(("direct", FIO_PREFIX))]


@pytest.mark.slow  # the device ceiling's full grid
def test_the_device_ceiling_runs_its_grid_once_and_a_resume_keeps_it_so(tmp_path):
    """The full grid in the first round; later rounds the two fastest writes, the two fastest reads, fio's
    pattern (where fio runs) and the O_DIRECT read. A suite stopped after the first round and resumed narrows
    from the journal's first run."""
    suite = _ceiling_suite(tmp_path / "out", 3)
    document = run_suite(RunContext(suite)).document
    saves, loads = _patterns(document, "save"), _patterns(document, "load")
    assert len(_grid_only(saves[0])) == GRID_SIZE and len(_grid_only(loads[0])) == GRID_SIZE
    ceiling = next(t for t in document["tests"] if t["name"] == "device_ceiling")
    first = min(ceiling["runs"], key=lambda r: r["round"])["patterns"]["save"]
    fastest_writes = sorted(sorted(_grid_only(list(first)), key=first.get)[:2])
    for later in saves[1:]:
        assert _grid_only(later) == fastest_writes
        assert [n for n in later if n not in fastest_writes] == [n for n in saves[0] if n.startswith("fio")]
    for later in loads[1:]:
        assert len(_grid_only(later)) == 2 and any(p.startswith("direct") for p in later)

    stopped_suite = _ceiling_suite(tmp_path / "again", 2)

    def first_round_only(planned: records.PlannedRun) -> str | None:
        return "stop after round 1" if planned.round >= 1 else None

    with pytest.raises(Stopped):
        run_suite(RunContext(stopped_suite, may_start=first_round_only))
    resumed = run_suite(RunContext(stopped_suite, resume=True)).document
    saves = _patterns(resumed, "save")
    assert [len(_grid_only(s)) for s in saves] == [GRID_SIZE, 2]  # the resumed round measured the fastest two


@pytest.mark.slow  # the device ceiling's full grid
def test_the_ceiling_backend_narrows_from_earlier_records(tmp_path, tiny_weights):
    suite = _ceiling_suite(tmp_path / "out", 1)
    workspace.prepare_output_dir(suite.output_dir)
    backend = measure.backend_for(suite.test("device_ceiling"), suite)
    first = measure.run_once(records.PlannedRun("device_ceiling", 0, 0), backend, measure.Bench(suite, tiny_weights.tensors))
    assert first.ok and len(_grid_only(list(first.patterns["save"]))) == GRID_SIZE
    backend.before_run([first])
    second = measure.run_once(records.PlannedRun("device_ceiling", 1, 0), backend, measure.Bench(suite, tiny_weights.tensors))
    assert second.ok and second.verified and len(_grid_only(list(second.patterns["save"]))) == 2
    assert second.size_bytes == first.size_bytes


@pytest.mark.parametrize("argv, status", [
    (["--model", "tiny"], 0),
    (["--model", "llama-2-7b", "--dtype", "float32"], 2),  # 27 GB: refused, and said why
    (["tune", "--model", "tiny", "--budget", "5m"], 0),
    (["tune", "--model", "open_llama_3b", "--dtype", "bfloat16", "--budget", "2m"], 2),
])
def test_a_dry_run_prints_the_plan_and_writes_nothing(run_cli, tmp_path, argv, status, monkeypatch):
    monkeypatch.setattr(system, "available_memory_bytes", lambda: int(23.5e9))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(*argv, "--output-dir", out, "--dry-run")
    assert code == status, stderr
    assert stdout.startswith("dry run of ") and "nothing is measured or written" in stdout
    assert ("pre-check: passes" in stdout) == (status == 0)
    assert "estimated wall time" in stdout or "estimate:" in stdout
    assert not out.exists()


@pytest.mark.slow  # tp readers: many processes
def test_a_tp_load_counts_every_reader_of_the_host(tmp_path, write_config, run_cli):
    """--tp 3: each run records the host's anonymous peak, every reader process's included. torch.load has no slice
    request, so each of its readers holds the whole model before it copies its slice out: about tp - 1 models more
    than safetensors' get_slice readers, whose slices add up to one. The pre-check's estimate covers both."""
    path = write_config({"model": MODEL, "dtype": "bfloat16",
                         "references": {"safetensors": True, "torch_save": True},
                         "testing": {"num_runs": 1, "cache_eviction": "fadvise"},
                         "test_configurations": [{"name": "aligned", "chunk_bytes": "1MB", "concurrency_limit": 16,
                                                  "chunk_strategy": "tp_aligned", "compression": "none"}]})
    out = tmp_path / "out"
    status, _, err = run_cli("run", "--config", path, "--tp", "3", "--output-dir", out, "--no-progress")
    assert status == 0, err
    document = json.loads((out / "results.json").read_text())
    model_bytes = document["weights"]["size_bytes"]
    suite = config.from_dict(json.loads(path.read_text()), tp=[3])
    host = {}
    for test in document["tests"]:
        run = test["runs"][0]
        assert run["verified"] is True
        # three reader processes besides this one, each with Python and its libraries (0.1 GB at least)
        assert run["load_host_rss_anon_bytes"] >= run["load_rss_anon_bytes"] + 3 * 10**8, test["name"]
        estimate = capacity.peak_memory_bytes(suite.test(test["name"]), model_bytes, suite.max_inflight_bytes)
        assert run["load_host_rss_anon_bytes"] <= estimate, (test["name"], run["load_host_rss_anon_bytes"], estimate)
        host[test["name"].split("_tp=")[0]] = run["load_host_rss_anon_bytes"]
    assert host["torch_save"] - host["safetensors"] >= 0.8 * 2 * model_bytes
    assert document["scale"]["anon_peak_bytes"] >= host["torch_save"]
    _, hungriest = capacity.memory_need(suite, model_bytes)
    assert hungriest.split("_tp=")[0] == "torch_save"


def test_a_whole_file_reader_under_tp_is_refused_naming_the_row(monkeypatch):
    """Four torch.load readers of a 6.85 GB checkpoint hold four copies: refused on 24 GB, the row named."""
    raw = {"model": "open_llama_3b", "dtype": "bfloat16", "references": {"safetensors": True, "torch_save": True},
           "test_configurations": [{"name": "a", "chunk_bytes": "16MB", "concurrency_limit": 16,
                                    "chunk_strategy": "tp_aligned"}]}
    monkeypatch.setattr(system, "available_memory_bytes", lambda: 24 * 10**9)
    model_bytes = weights.PRESETS["open_llama_3b"].n_params * 2
    refusal = capacity.memory_refusal(config.from_dict(raw, tp=[4]), model_bytes)
    assert refusal is not None and "(test 'torch_save')" in refusal and "references.torch_save: false" in refusal
    raw["references"]["torch_save"] = False  # slices only: the model once, and four readers' own parts
    assert capacity.memory_refusal(config.from_dict(raw, tp=[4]), model_bytes) is None
