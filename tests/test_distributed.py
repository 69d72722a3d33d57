"""Many writer processes: chunk-aligned slices, real spawned workers, OCDBT's coordinator, worker death."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import act_on_stderr_line

from ckptbench.bench import measure, workspace
from ckptbench.core import records
from ckptbench.parallel import slices
from ckptbench.parallel.spawned import LocalWriters
from ckptbench.spec import config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("rows", "chunk_rows", "processes"), [(100, 10, 3), (7, 3, 2), (5, 5, 3), (960, 960, 4),
                                                               (49152, 6, 4), (1, 1, 2)])
def test_row_slices_are_disjoint_whole_chunks_covering_every_row(rows: int, chunk_rows: int, processes: int) -> None:
    owned = slices.row_slices((rows, 8), chunk_rows, processes)
    assert len(owned) == processes
    covered = []
    for rows_of in owned:
        if rows_of is None:
            continue
        start, stop = rows_of
        assert start % chunk_rows == 0  # starts on a chunk boundary
        assert stop == rows or stop % chunk_rows == 0  # ends on one, or at the end of the array
        covered.extend(range(start, stop))
    assert covered == list(range(rows))  # each row exactly once, in order
    assert owned[0] is not None  # process 0 always owns something (a single chunk row goes to it)


def _suite(tmp_path: Path, processes: list[int], **test) -> config.SuiteConfig:
    raw = {"model": "tiny", "processes": processes, "testing": {"num_runs": 1, "cache_eviction": "fadvise"},
           "output_dir": str(tmp_path / "out"),
           "test_configurations": [{"name": "t", "concurrency_limit": 16, **test}]}
    return config.from_dict(raw)


@pytest.mark.slow  # many processes
@pytest.mark.parametrize("layout", [
    {"chunk_bytes": "16KB", "warm_load": True},
    {"chunk_bytes": "16KB", "format": "zarr3", "kvstore": "ocdbt", "compression": "zstd"},
    {"chunk_bytes": "4KB", "shard_bytes": "64KB", "format": "zarr3"},
], ids=["zarr2", "ocdbt-coordinator", "zarr3-sharded"])
def test_processes_round_trip_bit_exact(tmp_path: Path, tiny_weights, layout: dict) -> None:
    suite = _suite(tmp_path, [2, 3], **layout)
    workspace.prepare_output_dir(suite.output_dir)
    runs = list(records.plan([t.name for t in suite.tests], 1, 0, seed=1))
    writers = LocalWriters()
    try:
        by_test = {r.test: r for r in measure.run_plan(runs, measure.Bench(suite, tiny_weights.tensors, writers=writers))}
    finally:
        writers.close()
    assert set(by_test) == {"t_procs=2", "t_procs=3"}
    for name, record in by_test.items():
        processes = int(name.rsplit("=", 1)[1])
        assert record.error is None and record.verified is True, record.error
        assert len(record.process_save_s) == processes and len(record.process_load_s) == processes
        # The reported duration covers the slowest process (and the parent's metadata and manifest).
        assert record.save_s >= max(record.process_save_s) > 0
        assert record.load_s >= max(record.process_load_s) > 0
        assert record.n_files > 0 and record.size_bytes > 0
        # a warm load (before the eviction) is verified by the writers like the cold one
        assert (record.warm_load_s is not None and record.warm_load_s > 0) == bool(layout.get("warm_load"))
    runs_dir = suite.output_dir / workspace.RUNS_DIR
    assert not runs_dir.exists() or {p.name for p in runs_dir.iterdir()} <= {workspace.RUN_MARKER}


@pytest.mark.slow  # many processes
def test_the_ocdbt_coordinator_starts_before_the_clock(tmp_path: Path, tiny_weights) -> None:
    suite = _suite(tmp_path, [2], chunk_bytes="16KB", format="zarr3", kvstore="ocdbt")
    writers = LocalWriters()
    pools = writers.pools
    backend = measure.backend_for(suite.tests[0], suite, writers=writers)
    try:
        assert backend.pool._coordinator is None
        backend.prepare(tiny_weights.tensors)  # what run_once does before the save's clock starts
        assert backend.pool._coordinator is not None
    finally:
        backend.release()
        for pool in pools.values():
            pool.stop()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow  # many processes
def test_a_worker_killed_mid_save_fails_the_run_without_hanging(tmp_path: Path) -> None:
    config_path = tmp_path / "suite.json"
    config_path.write_text(json.dumps({
        "model": "tiny", "processes": 2, "testing": {"num_runs": 1},
        "test_configurations": [
            {"name": "slow", "chunk_size_elements": 256, "concurrency_limit": 1},
            {"name": "quick", "chunk_bytes": "1MB", "concurrency_limit": 16},
        ]}))
    harness = subprocess.Popen(
        [sys.executable, str(ROOT / "run_phase4_streamlined.py"), "--config", str(config_path),
         "--output-dir", str(tmp_path / "out"), "--seed", "3", "--tests", "slow,quick"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []

    def kill_one_worker() -> None:
        time.sleep(0.3)  # let the workers start writing
        workers.extend(pid for pid in _children(harness.pid) if "spawn" in Path(f"/proc/{pid}/cmdline").read_text())
        os.kill(workers[-1], signal.SIGKILL)

    status, stderr = act_on_stderr_line(harness, "slow round 1/1: save", kill_one_worker)
    assert len(workers) == 2, stderr
    assert status == 1, stderr

    document = json.loads((tmp_path / "out" / "results.json").read_text())
    slow = next(t for t in document["tests"] if t["name"] == "slow")
    quick = next(t for t in document["tests"] if t["name"] == "quick")
    assert "exited with code -9 during save" in slow["runs"][0]["error"]
    assert slow["failed_runs"] == 1
    # The pool was restarted and the other test still ran, verified.
    assert quick["runs"][0]["verified"] is True
    # No worker is left behind, and no partial checkpoint either.
    assert not any(_alive(pid) for pid in workers)
    assert not (tmp_path / "out" / "runs").exists()
