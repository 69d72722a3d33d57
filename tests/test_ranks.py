"""Ranks of a launch: the launchers' variables, and real `torchrun --standalone` launches on loopback.

Every launch runs the tiny model with two ranks; rank 0 runs the suite, both ranks write
and read their slices. The S3 launch uses the moto server on 127.0.0.1 (test_remote.py's
fixture). A rank is killed with SIGKILL in the middle of a save, and a worker is frozen
with SIGSTOP to stand for a hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import act_on_stderr_line, assert_same_bits
from test_remote import BUCKET, _keys, s3_env  # noqa: F401  (s3_env is a fixture)

from ckptbench.bench import measure, storage, targets, workspace
from ckptbench.core import records
from ckptbench.core.errors import UserError
from ckptbench.parallel import launch as launch_mod
from ckptbench.parallel import session
from ckptbench.parallel import writers as writers_mod
from ckptbench.parallel.spawned import LocalWriters
from ckptbench.spec import config

ROOT = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")
TESTS = [{"name": "zarr2", "chunk_bytes": "16KB", "concurrency_limit": 16},
         {"name": "orbax", "chunk_bytes": "16KB", "concurrency_limit": 16, "format": "zarr3", "kvstore": "ocdbt",
          "compression": "zstd"}]


# --- the launchers' variables ---------------------------------------------------------------------

def test_torchrun_variables() -> None:
    launch = launch_mod.detect({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node0",
                           "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "abc", "TORCHELASTIC_RESTART_COUNT": "2",
                           "TORCHELASTIC_USE_AGENT_STORE": "True"})
    assert launch == launch_mod.Launch("torchrun", 1, 4, 1, "node0", 29400, agent_store=True, store_prefix="abc/2")
    plain = launch_mod.detect({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1234"})
    assert (plain.launcher, plain.local_rank, plain.agent_store) == ("env", None, False)


def test_slurm_variables() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "16",
           "SLURM_LOCALID": "1", "SLURM_STEP_NODELIST": "gpu[007-010,12],cpu1", "SLURM_JOB_ID": "123456"}
    launch = launch_mod.detect(env)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == ("slurm", 5, 8, 1)
    assert launch.master_addr == "gpu007"  # the step's first host, zero padding kept
    assert launch.master_port == launch_mod.SLURM_PORT_BASE + 123456 % 20000  # one job's port differs from another's
    assert launch_mod.detect({**env, "MASTER_ADDR": "login", "MASTER_PORT": "5000"}).master_addr == "login"
    # The batch script itself (no srun step) is not a rank, even inside an allocation of many tasks.
    assert launch_mod.detect({k: v for k, v in env.items() if k != "SLURM_STEP_ID"}) is None


def test_open_mpi_variables() -> None:
    one_host = {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "2",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    launch = launch_mod.detect(one_host)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == ("mpi", 2, 4, 2)
    assert (launch.master_addr, launch.master_port) == ("127.0.0.1", launch_mod.DEFAULT_PORT)
    with pytest.raises(UserError, match="MASTER_ADDR: not set"):  # several hosts: rank 0's host must be named
        launch_mod.detect({**one_host, "OMPI_COMM_WORLD_LOCAL_SIZE": "2"})


def test_which_launcher_wins_and_bad_values() -> None:
    torchrun_under_srun = {"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "a", "MASTER_PORT": "1",
                           "SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1"}
    assert launch_mod.detect(torchrun_under_srun).launcher == "env"
    mpirun_under_slurm = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "MASTER_ADDR": "a",
                          "SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1"}
    assert launch_mod.detect(mpirun_under_slurm).rank == 1
    assert launch_mod.detect({}) is None
    assert launch_mod.detect({"RANK": "0", "WORLD_SIZE": "1"}) is None  # one rank: an ordinary run
    with pytest.raises(UserError, match="^RANK: 'x' is not a whole number"):
        launch_mod.detect({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="rank 2 is outside the world of 2"):
        launch_mod.detect({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"})
    assert launch_mod.first_host("node1") == "node1" and launch_mod.first_host("a,b") == "a"


# --- real launches --------------------------------------------------------------------------------

def _torchrun(*args: str, env: dict | None = None, script: Path | None = None) -> list[str]:
    runner = Path(sys.executable).with_name("torchrun")
    launcher = [str(runner)] if runner.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", "--nproc-per-node", "2", str(script or ROOT / "run_phase4_streamlined.py"),
            "--no-progress", *args]


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(extra or {})}


def _suite_file(tmp_path: Path, tests: list[dict], **top) -> Path:
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"model": "tiny", "testing": {"num_runs": 1, "cache_eviction": "fadvise"},
                                "test_configurations": tests, **top}))
    return path


def _shm_files() -> set[str]:
    return {p.name for p in SHM.glob("ckptbench-*")} if SHM.is_dir() else set()


def _leaked_shm_files(before: set[str]) -> set[str]:
    """Weight files made since `before` that no live process maps or holds (other tests may run meanwhile)."""
    held = set()
    for proc in Path("/proc").iterdir():
        try:
            held.update(line.rsplit("/", 1)[-1].split()[0] for line in (proc / "maps").read_text().splitlines()
                        if str(SHM) in line)
            held.update(os.readlink(fd).rsplit("/", 1)[-1] for fd in (proc / "fd").iterdir())
        except (OSError, ValueError):
            continue
    return (_shm_files() - before) - held


@pytest.mark.slow  # torchrun
def test_two_ranks_write_one_checkpoint_bit_exact(tmp_path: Path, tiny_weights) -> None:
    shm_before = _shm_files()
    out = tmp_path / "out"
    done = subprocess.run(_torchrun("--config", str(_suite_file(tmp_path, TESTS)), "--output-dir", str(out), "--keep"),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Results:") == 1  # only rank 0 reports

    document = json.loads((out / "results.json").read_text())
    assert document["complete"] is True
    assert document["environment"]["launch"] == {"launcher": "torchrun", "world_size": 2, "n_hosts": 1,
                                                 "ranks_per_host": 2, "hosts": [{"name": os.uname().nodename,
                                                                                 "ranks": [0, 1]}]}
    for test in document["tests"]:
        run = test["runs"][0]
        assert test["settings"]["processes"] == 2 and run["verified"] is True, run["error"]
        assert len(run["process_save_s"]) == 2 and len(run["process_load_s"]) == 2  # each rank's own time
        assert run["save_s"] >= max(run["process_save_s"]) > 0 and run["load_s"] >= max(run["process_load_s"]) > 0
        assert run["load_cache"] == "cold" and run["eviction"] == "fadvise"
        # rank 1, torchrun's child and not rank 0's, is the run's own: its writes are not another process's
        assert run["other_processes"]["save"]["own_write_bytes"] >= run["disk_bytes"]
    # One suite in the journal: the other rank wrote nothing but its slices.
    lines = (out / "journal.jsonl").read_text().splitlines()
    assert len(lines) == 1 + len(TESTS)
    assert {p.name for p in out.iterdir()} == {"results.json", "journal.jsonl", "optimization_analysis.png",
                                               workspace.OUTPUT_MARKER, workspace.RUNS_DIR}

    # The kept checkpoints, read back here with TensorStore, hold every tensor bit for bit.
    suite = config.load(tmp_path / "suite.json", output_dir=str(out), processes=2)
    for name in ("zarr2", "orbax"):
        location = targets.RunLocation.local(out / workspace.RUNS_DIR / f"{name}-r0")
        layout = storage.Layout.of(suite.test(name), "float32")
        manifest = json.loads((location.local_dir / storage.MANIFEST).read_text())
        assert manifest["processes"] == 2
        assert_same_bits(tiny_weights.tensors, storage.load(location, layout, 2**30))
        workspace.remove_owned(location.local_dir)
    assert not _leaked_shm_files(shm_before)  # the weights shared through /dev/shm are gone


@pytest.mark.slow  # torchrun
def test_two_ranks_on_s3_with_ocdbt(s3_env, tmp_path: Path) -> None:  # noqa: F811
    env, client = s3_env
    client.put_object(Bucket=BUCKET, Key="ranks/keep-me.txt", Body=b"not ours")
    done = subprocess.run(_torchrun("--config", str(_suite_file(tmp_path, TESTS)), "--output-dir",
                                    str(tmp_path / "out"), "--storage", f"s3://{BUCKET}/ranks"),
                          env=_env(env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    runs = [t["runs"][0] for t in document["tests"]]
    assert [r["verified"] for r in runs] == [True, True] and {r["load_cache"] for r in runs} == {"remote"}
    assert all(len(r["process_load_s"]) == 2 for r in runs)
    assert _keys(client, "ranks/") == ["ranks/keep-me.txt"]  # cleanup removed the runs' prefixes, nothing else
    assert not (tmp_path / "out" / workspace.RUNS_DIR).exists()


def _rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of a rank torchrun started, found by its RANK variable."""
    for _ in range(100):
        for task in Path(f"/proc/{launcher_pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                if f"RANK={rank}".encode() in environ:
                    return int(child)
        time.sleep(0.05)
    raise AssertionError(f"no rank {rank} under pid {launcher_pid}")


@pytest.mark.slow  # torchrun
def test_a_rank_killed_mid_save_stops_the_launch_and_resume_completes(tmp_path: Path) -> None:
    suite = _suite_file(tmp_path, [{"name": "slow", "chunk_size_elements": 256, "concurrency_limit": 1},
                                   {"name": "quick", "chunk_bytes": "1MB", "concurrency_limit": 16}])
    out = tmp_path / "out"
    args = ["--config", str(suite), "--output-dir", str(out), "--seed", "3"]
    command = [a for a in _torchrun(*args) if a != "--no-progress"]  # the progress lines mark the phases
    launch = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed: list[int] = []

    def kill_rank_1() -> None:
        time.sleep(0.3)  # let both ranks start writing
        killed.append(_rank_pid(launch.pid, 1))
        os.kill(killed[0], signal.SIGKILL)

    status, stderr = act_on_stderr_line(launch, "slow round 1/1: save", kill_rank_1, timeout=180)
    assert killed and status != 0, stderr
    ours = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and f"rank 1 (pid {killed[0]}" in ours[0] and "--resume" in ours[0], stderr
    assert not (out / workspace.RUNS_DIR).exists()  # the half-written checkpoint is gone
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    assert [(e["test"], e["error"]) for e in journal[1:]] == [("quick", None)]  # what finished is kept

    resumed = subprocess.run(_torchrun(*args, "--resume"), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    document = json.loads((out / "results.json").read_text())
    assert document["complete"] is True
    assert {t["name"]: [r["verified"] for r in t["runs"]] for t in document["tests"]} == {"slow": [True],
                                                                                        "quick": [True]}
    assert not (out / workspace.RUNS_DIR).exists()


@pytest.mark.slow  # torchrun
def test_every_host_is_watched_and_the_busiest_is_recorded(tmp_path: Path) -> None:
    """Rank 1 stands for a second host (its own host name) on which a neighbour keeps 50 cores busy (its /proc/stat
    busy time grows by 50 cores' ticks a second): each host's first rank watches its own, and every run records the
    busy one's figures, named, from both hosts' watches."""
    wrapper = tmp_path / "rank_1_elsewhere.py"
    wrapper.write_text(
        "import os, runpy, socket, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "if os.environ['RANK'] == '1':\n"
        "    from ckptbench.core import host\n"
        "    socket.gethostname = lambda: 'elsewhere'\n"
        "    measured = host._busy_ticks\n"
        "    host._busy_ticks = lambda: measured() + int(50 * host._ticks_per_second() * time.perf_counter())\n"
        f"sys.argv[0] = {str(ROOT / 'run_phase4_streamlined.py')!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    out = tmp_path / "out"
    done = subprocess.run(_torchrun("--config", str(_suite_file(tmp_path, TESTS[:1])), "--output-dir", str(out),
                                    script=wrapper), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "results.json").read_text())
    assert [h["name"] for h in document["environment"]["launch"]["hosts"]] == [os.uname().nodename, "elsewhere"]
    run = document["tests"][0]["runs"][0]
    assert run["verified"] is True, run["error"]
    for op in ("save", "load"):
        figures = run["other_processes"][op]
        assert (figures["host"], figures["hosts"]) == ("elsewhere", 2), op
        assert figures["cpu_s"] > 10 * figures["seconds"], op
    assert document["busy"]["operations"] == 2 and "the machine was busy" in done.stdout


@pytest.mark.slow  # torchrun
def test_a_rank_given_another_config_is_refused(tmp_path: Path) -> None:
    wrapper = tmp_path / "rank_1_differs.py"  # the same command, except that rank 1 also gets --runs 2
    wrapper.write_text(
        "import os, runpy, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "if os.environ['RANK'] == '1':\n    sys.argv += ['--runs', '2']\n"
        f"sys.argv[0] = {str(ROOT / 'run_phase4_streamlined.py')!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    done = subprocess.run(_torchrun("--model", "tiny", "--tests", "baseline", "--runs", "1", "--output-dir",
                                    str(tmp_path / "out"), script=wrapper),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1, done.stderr
    assert "rank 1" in ours[0] and "different suite" in ours[0] and "num_runs: was 1, now 2" in ours[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


# --- a hang, on the same world code, with --processes workers ------------------------------------------

@pytest.mark.slow  # many processes
def test_a_frozen_worker_is_named_within_the_timeout(tmp_path: Path, tiny_weights, monkeypatch) -> None:
    monkeypatch.setattr(writers_mod, "PHASE_TIMEOUT_S", 3.0)
    suite = config.from_dict({"model": "tiny", "processes": 2, "output_dir": str(tmp_path / "out"),
                              "testing": {"num_runs": 1, "cache_eviction": "fadvise"},
                              "test_configurations": [{"name": "t", "chunk_bytes": "16KB", "concurrency_limit": 8}]})
    workspace.prepare_output_dir(suite.output_dir)
    frozen: list[int] = []
    writers = LocalWriters()
    pools = writers.pools
    backend = measure.backend_for(suite.tests[0], suite, writers=writers)

    def freeze_worker_1(run: records.PlannedRun, phase: str) -> None:
        if phase == "save":  # the workers are up (prepare ran); worker 1 stops answering
            frozen.append(next(iter(pools.values())).pids()[1])
            os.kill(frozen[0], signal.SIGSTOP)

    started = time.monotonic()
    record = measure.run_once(records.PlannedRun("t", 0, 0), backend, measure.Bench(suite, tiny_weights.tensors), freeze_worker_1)
    assert record.error is not None and f"worker 1 (pid {frozen[0]}" in record.error, record.error
    assert "did not answer within 3 s during save" in record.error
    assert time.monotonic() - started < 60
    assert not Path(f"/proc/{frozen[0]}").exists()  # stopped for good, not left behind
    assert {p.name for p in (suite.output_dir / workspace.RUNS_DIR).iterdir()} == {workspace.RUN_MARKER}
    # The next run starts a fresh pool and succeeds.
    again = measure.run_once(records.PlannedRun("t", 1, 0), backend, measure.Bench(suite, tiny_weights.tensors))
    assert again.error is None and again.verified is True
    next(iter(pools.values())).stop()



# --- one launch per world size, compared -----------------------------------------------------------

def test_launches_of_several_world_sizes_draw_one_scaling_figure(tmp_path: Path) -> None:
    from test_compare import RUNS_S, make_document

    from ckptbench.cli import app as cli
    from ckptbench.documents import results
    from ckptbench.figures import scaling as sweep_plot

    paths = []
    for world_size, factor in ((1, 1.0), (2, 0.6), (4, 0.4)):
        document = make_document({"base": [s * factor for s in RUNS_S], "device_ceiling": [0.1] * len(RUNS_S)})
        document["tests"][0]["settings"]["processes"] = world_size  # what a launch of that many ranks records
        document["tests"][1]["settings"]["backend"] = "device_ceiling"  # a reference row, as a suite records it
        document["tests"][1]["kind"] = "reference"
        (tmp_path / str(world_size)).mkdir()
        paths.append(results.write(document, tmp_path / str(world_size)))
    merged = sweep_plot.scaling_document([results.read(p).document for p in paths])
    assert [(t["name"], t["settings"].get("sweep")) for t in merged["tests"]] == [
        ("device_ceiling", None),  # once, for the dashed line
        ("base_procs=1", {"processes": 1}), ("base_procs=2", {"processes": 2}), ("base_procs=4", {"processes": 4})]
    assert cli.main(["compare", *map(str, paths), "--scaling-plot", str(tmp_path / "scaling.png")]) == 0
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # One world size only: refused in one line, nothing drawn.
    assert cli.main(["compare", str(paths[0]), str(paths[0]), "--scaling-plot", str(tmp_path / "no.png")]) == 2
    assert not (tmp_path / "no.png").exists()



def test_what_a_launch_refuses_before_joining(tmp_path: Path, run_cli, monkeypatch) -> None:
    launch = launch_mod.Launch("torchrun", 0, 2, 0, "127.0.0.1", 29500)
    raw = {"model": "tiny", "output_dir": str(tmp_path / "out"),
           "test_configurations": [{"name": "a", "chunk_bytes": "1MB", "concurrency_limit": 8},
                                   {"name": "b", "chunk_bytes": "1MB", "concurrency_limit": 8, "values": "float16"}]}
    with pytest.raises(UserError, match="test 'b': its own values"):  # the other ranks hold the suite's weights
        session.suite_for_launch(config.from_dict(raw), launch)
    with pytest.raises(UserError, match="^--processes: started by torchrun with 2 ranks"):
        session.suite_for_launch(config.from_dict(raw, processes=[1, 4], tests=["a"]), launch)
    suite = session.suite_for_launch(config.from_dict(raw, tests=["a"]), launch)
    assert [(t.name, t.processes) for t in suite.tests] == [("a", 2)]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    for name in ("tune",):  # it plans suites from earlier results: one host only
        status, _, err = run_cli(name, "--output-dir", tmp_path / name)
        assert status == 2 and err.startswith(f"error: {name}: runs on one host") and err.count("\n") == 1
        assert not (tmp_path / name).exists()
