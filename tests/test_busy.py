"""A run that knows when the machine was busy: other processes' CPU and disk bytes during each timed operation.

The sampler (core.host) is checked on real /proc reads: the run's own processes (children, grandchildren, a
launch's ranks) are left out of "other". A real run with a competing CPU spinner and a writer fsync'ing a file
beside it says the machine was busy and names the row; `compare` reports a busy side's difference without calling
it significant unless --allow-busy. Quietness cannot be asserted on a shared machine; what makes a quiet run quiet
(the own tree subtracted, the thresholds) is checked at the unit level.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest
from conftest import REPO
from test_compare import ENVIRONMENT, RUNS_S, SLOWER_S, WEIGHTS, make_document

from ckptbench.analysis import busy, versus
from ckptbench.core import host
from ckptbench.core.records import RunRecord
from ckptbench.documents import results
from ckptbench.reports import results as report

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the sampler reads Linux's /proc")

# Overwrites one file 16 MiB at a time, fsync'ing each time, until killed; marks its first fsync.
WRITER = """
import os, sys
block = os.urandom(4 << 20)
with open(sys.argv[1], "wb") as handle:
    while True:
        handle.seek(0)
        for _ in range(4):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
        open(sys.argv[1] + ".started", "w").close()
"""
SPIN = "import time\nend = time.process_time() + {cpu_s}\nwhile time.process_time() < end:\n    pass\n"


def _quiet(seconds: float = 1.0, cpu_s: float = 0.0, write_bytes: int = 0, read_bytes: int = 0,
           own_bytes: int = 0) -> dict[str, float]:
    return {"seconds": seconds, "cpu_s": cpu_s, "read_bytes": read_bytes, "write_bytes": write_bytes,
            "own_cpu_s": 0.5, "own_read_bytes": 0, "own_write_bytes": own_bytes}


# --- the sampler ---------------------------------------------------------------------------------------

def test_others_is_the_host_less_the_own_processes():
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    before = host.Sample(10.0, busy_ticks=1000, own_ticks=300, kernel_ticks={2: 40}, device_read_bytes=5000,
                         device_write_bytes=7000, own_read_bytes=100, own_write_bytes=200)
    after = host.Sample(12.5, busy_ticks=1400, own_ticks=450, kernel_ticks={2: 90}, device_read_bytes=9000,
                        device_write_bytes=7100, own_read_bytes=600, own_write_bytes=1200)
    figures = host.others(before, after)
    assert figures["seconds"] == pytest.approx(2.5)
    assert figures["cpu_s"] == pytest.approx((400 - 150 - 50) * tick_s)  # less the own and the kernel's threads
    assert figures["own_cpu_s"] == pytest.approx(150 * tick_s)
    assert figures["kernel_cpu_s"] == pytest.approx(50 * tick_s)
    assert figures["read_bytes"] == 4000 - 500
    assert figures["write_bytes"] == 0  # the own processes wrote more than the disk saw yet: never negative
    assert host.others(None, after) is None and host.others(before, None) is None  # not measured: no figures


def test_a_kernel_thread_that_ends_in_the_window_does_not_pass_its_past_to_the_others():
    """Seen at 6.85 GB: a kworker with 15 s of past CPU ended during a 5 s load, and the sum over kernel threads
    fell by 15 s, so "others" gained 15 s (301 % of a core on a 2-core machine). Each thread counts its own
    change; a thread that ended counts nothing, one that started counts what it used."""
    tick_s = 1.0 / os.sysconf("SC_CLK_TCK")
    common = dict(device_read_bytes=0, device_write_bytes=0, own_read_bytes=0, own_write_bytes=0)
    before = host.Sample(0.0, busy_ticks=1000, own_ticks=300, kernel_ticks={2: 40, 77: 1500}, **common)
    after = host.Sample(5.0, busy_ticks=1700, own_ticks=900, kernel_ticks={2: 60, 91: 30}, **common)
    figures = host.others(before, after)
    assert figures["kernel_cpu_s"] == pytest.approx(50 * tick_s)  # thread 2's 20 and the new thread 91's 30
    assert figures["cpu_s"] == pytest.approx((700 - 600 - 50) * tick_s)


def test_a_spinning_child_and_grandchild_and_their_writes_count_as_own(tmp_path):
    """A child that starts a grandchild, both spinning 0.3 s of CPU, the grandchild writing 8 MiB fsync'd, both
    gone (reaped) before the second sample: their CPU and bytes are this run's own, not another's."""
    target = tmp_path / "written.bin"
    grandchild = SPIN.format(cpu_s=0.3) + textwrap.dedent(f"""
        with open({str(target)!r}, "wb") as handle:
            handle.write(b"x" * (8 << 20))
            handle.flush()
            import os
            os.fsync(handle.fileno())
    """)
    child = (f"import subprocess, sys\nworker = subprocess.Popen([sys.executable, '-c', {grandchild!r}])\n"
             + SPIN.format(cpu_s=0.3) + "sys.exit(worker.wait())\n")
    watch = host.watch_for(tmp_path)
    before = watch.sample()
    subprocess.run([sys.executable, "-c", child], check=True)
    figures = host.others(before, watch.sample())
    assert figures["own_cpu_s"] >= 0.55  # 0.6 s spun, counted in 10 ms ticks
    assert figures["own_write_bytes"] >= 8 << 20
    assert figures["cpu_s"] >= 0 and figures["write_bytes"] >= 0


def _cpu_s(pid: int) -> float:
    """A process's own CPU seconds (utime + stime), as /proc/<pid>/stat counts them."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _written(pid: int) -> float:
    """Bytes a process caused to be written (/proc/<pid>/io write_bytes)."""
    return float(dict(line.split(":") for line in Path(f"/proc/{pid}/io").read_text().splitlines())["write_bytes"])


def _window(watch: host.Watch, progress: Callable[[], float], amount: float) -> tuple[dict[str, float], float]:
    """host.others over a window in which `progress` (a process's CPU seconds, or bytes written) grew by at least
    `amount`, however busy the machine; and how much it grew."""
    start = progress()
    before = watch.sample()
    deadline = time.monotonic() + 30
    while progress() - start < amount and time.monotonic() < deadline:
        time.sleep(0.02)
    figures = host.others(before, watch.sample())
    return figures, progress() - start


def _orphan(code: str, *args: str) -> int:
    """Start `code` (with `args`) in a Python process whose parent exits at once: nobody's child here, as a
    neighbour's process (or a launch's other rank) is. Its pid."""
    argv = [sys.executable, "-c", code, *args]
    starter = subprocess.run(
        [sys.executable, "-c", f"import subprocess\nprint(subprocess.Popen({argv!r}, start_new_session=True, "
                               "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"],
        check=True, capture_output=True, text=True)
    return int(starter.stdout)


def test_a_live_child_counts_as_own_while_it_runs(tmp_path):
    spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(cpu_s=60)])
    try:
        figures, spun_s = _window(host.watch_for(tmp_path), lambda: _cpu_s(spinner.pid), 0.3)
    finally:
        spinner.kill()
        spinner.wait()
    assert spun_s >= 0.3
    assert figures["own_cpu_s"] >= spun_s - 0.05  # its CPU is this process's own (ticks: 10 ms each end)


def test_a_launchs_rank_on_this_host_counts_as_own_once_registered(tmp_path, monkeypatch):
    """A process that is not this one's descendant (a launch's other rank: torchrun's child, not ours) is another's
    until `count_as_own` names it."""
    monkeypatch.setattr(host, "_own_roots", set())
    pid = _orphan(SPIN.format(cpu_s=60))
    try:
        watch = host.watch_for(tmp_path)
        not_own, spun_before_s = _window(watch, lambda: _cpu_s(pid), 0.3)
        host.count_as_own([pid])
        own, spun_after_s = _window(watch, lambda: _cpu_s(pid), 0.3)
    finally:
        os.kill(pid, 9)
    assert spun_before_s >= 0.3 and not_own["own_cpu_s"] < spun_before_s - 0.2
    assert spun_after_s >= 0.3 and own["own_cpu_s"] >= spun_after_s - 0.05


def test_a_neighbours_fsyncd_writes_are_others_bytes(tmp_path):
    """Another process writing 16 MiB and fsync'ing, over and over, on the disk of the watched folder: what it made
    durable within the window shows as others' bytes."""
    pid = _orphan(WRITER, str(tmp_path / "neighbour.bin"))
    try:
        figures, written = _window(host.watch_for(tmp_path), lambda: _written(pid), 64 << 20)
    finally:
        os.kill(pid, 9)
    assert written >= 64 << 20
    assert figures["write_bytes"] >= written - (32 << 20)  # all but the 16 MiB it may not have fsync'd yet
    assert figures["own_write_bytes"] < 1 << 20


@pytest.mark.slow  # many processes
def test_spawned_writers_cpu_and_bytes_are_the_runs_own(tmp_path, tiny_weights):
    """--processes 2: the two workers write and read every byte; their CPU and bytes are this run's, not others'."""
    from ckptbench.bench import measure, workspace
    from ckptbench.core import records
    from ckptbench.parallel.spawned import LocalWriters
    from ckptbench.spec import config

    suite = config.from_dict({"model": "tiny", "processes": [2], "output_dir": str(tmp_path / "out"),
                              "testing": {"num_runs": 1, "cache_eviction": "fadvise"},
                              "test_configurations": [{"name": "t", "chunk_bytes": "16KB", "concurrency_limit": 4,
                                                       "compression": {"id": "gzip", "level": 6}}]})
    workspace.prepare_output_dir(suite.output_dir)
    writers = LocalWriters()
    try:
        [record] = measure.run_plan(list(records.plan([t.name for t in suite.tests], 1, 0, seed=1)),
                                    measure.Bench(suite, tiny_weights.tensors, writers=writers))
    finally:
        writers.close()
    assert record.error is None and record.load_cache == "cold", record.error
    save, load = record.other_processes["save"], record.other_processes["load"]
    assert "hosts" not in save and "hosts" not in load  # one host, one watch: the workers on it do not watch it
    assert save["own_write_bytes"] >= record.disk_bytes  # written by the workers
    assert load["own_read_bytes"] >= 0.9 * record.disk_bytes  # read by the workers, cold
    assert save["own_cpu_s"] >= record.save_cpu_s - 0.1  # gzip in the workers (ticks: 10 ms per process and end)
    assert load["own_cpu_s"] >= record.load_cpu_s - 0.1


def test_the_disk_under_a_folder_is_a_whole_disk_of_diskstats(tmp_path):
    devices = host.watch_for(tmp_path).devices
    listed = {line.split()[2] for line in Path("/proc/diskstats").read_text().splitlines()}
    assert devices and set(devices) <= listed
    assert not any((Path("/sys/class/block") / name / "partition").exists() for name in devices)


# --- the judgement -----------------------------------------------------------------------------------------

def test_busy_needs_a_quarter_core_and_a_tenth_of_a_second():
    assert busy.busy(_quiet(seconds=1.0, cpu_s=0.3))
    assert not busy.busy(_quiet(seconds=1.0, cpu_s=0.2))  # under a quarter of a core
    assert not busy.busy(_quiet(seconds=0.02, cpu_s=0.05))  # 250 % of a core, but five ticks: rounding
    assert busy.busy(_quiet(seconds=0.2, cpu_s=0.12))


def test_busy_bytes_allow_for_the_runs_own_bytes_and_its_files_metadata():
    wrote_80_mib = _quiet(write_bytes=80 << 20)
    assert busy.busy(wrote_80_mib, n_files=10)
    assert not busy.busy(wrote_80_mib, n_files=1000)  # 1000 fsync'd files: ~31 MiB of the journal's own
    assert not busy.busy(_quiet(write_bytes=80 << 20, own_bytes=200 << 20), n_files=10)  # 10 % of its own 200 MiB
    assert not busy.busy(_quiet(read_bytes=40 << 20), n_files=1)  # idle processes reading back a dropped cache
    assert busy.busy(_quiet(read_bytes=100 << 20), n_files=10)


def test_of_several_hosts_the_busiest_is_kept_and_named():
    quiet, spinning, writing = _quiet(cpu_s=0.05), _quiet(cpu_s=0.3), _quiet(write_bytes=200 << 20)
    assert busy.busiest({"a": quiet, "b": spinning}) == {**spinning, "host": "b", "hosts": 2}
    # a host judged busy by its disk beats a quiet one that used more CPU; of two busy ones, the larger share of a core
    assert busy.busiest({"a": _quiet(cpu_s=0.2), "b": writing, "c": quiet})["host"] == "b"
    assert busy.busiest({"a": spinning, "b": _quiet(seconds=0.5, cpu_s=0.3)})["host"] == "b"
    assert busy.busiest({"a": quiet}) == quiet  # one host: its figures as they are, no name


def test_a_documents_busy_section_counts_measured_operations_and_names_the_answers_rows():
    calm = _quiet(cpu_s=0.01)
    loud = _quiet(cpu_s=0.9, write_bytes=1 << 30)
    records = []
    for name, scale in (("base", 1.0), ("fast", 0.5)):  # fast wins: the answer is fast against base
        for i, s in enumerate(scale * t for t in RUNS_S[:3]):
            figures = {"save": loud if (name, i) == ("fast", 1) else calm, "load": calm}
            records.append(RunRecord(name, i, 0, False, save_s=s, load_s=s, size_bytes=5_000_000, n_files=10,
                                     eviction="drop_caches", load_cache="cold", verified=True,
                                     other_processes=figures))
    records.append(RunRecord("fast", -1, 0, True, save_s=1.0, load_s=1.0, size_bytes=5_000_000, n_files=10,
                             eviction="drop_caches", load_cache="cold", verified=True,
                             other_processes={"save": loud, "load": loud}))  # a warm-up: not in the statistics
    document = _build(records, {"base": 3, "fast": 3})
    assert document["busy"]["operations"] == 1 and document["busy"]["timed"] == 12
    assert document["busy"]["tests"] == ["fast"] and "fast" in document["busy"]["answer_tests"]
    assert next(t for t in document["tests"] if t["name"] == "fast")["busy"]["by_op"] == {"save": 1}
    results.RESULTS.validate(document)
    line = report.busy_lines(document)
    assert len(line) == 1
    assert line[0].startswith("! the machine was busy: other processes used 90 % of a core and wrote 1.07 GB")
    assert "during 1 of 12 timed operations, in fast; the answer's rows were affected (fast)" in line[0]


def test_a_quiet_document_has_no_busy_line_and_an_unwatched_one_says_so():
    calm = _quiet(cpu_s=0.01)
    quiet = [RunRecord("base", i, 0, False, save_s=s, load_s=s, size_bytes=1, n_files=1, load_cache="cold",
                       verified=True, other_processes={"save": calm, "load": calm}) for i, s in enumerate(RUNS_S)]
    assert report.busy_lines(_build(quiet, {"base": 5})) == []
    unwatched = make_document({"base": RUNS_S})  # records without figures: no /proc, or an older file
    assert report.busy_lines(unwatched) == [
        "! other processes' use of the machine was not measured during 10 of 10 timed operations (no /proc, or a "
        "file written before it was): the machine may have been busy"]


def _build(records: list[RunRecord], runs: dict[str, int]) -> dict:
    from ckptbench.spec import config

    suite = config.SuiteConfig(tests=tuple(config.TestSpec(name=n, concurrency_limit=1, chunk_size_elements=16384)
                                           for n in runs), baseline=next(iter(runs)), output_dir=Path("/nonexistent"))
    return results.build(suite, WEIGHTS, records, ENVIRONMENT, seed=1, complete=True)


# --- a real run beside real competitors ------------------------------------------------------------------------


@pytest.mark.slow  # many processes
def test_a_run_beside_a_spinner_and_a_writer_says_the_machine_was_busy_and_names_the_row(tmp_path):
    """The suite runs in its own process; the competitors are its siblings, not its children: other processes."""
    suite = {"model": "tiny", "baseline": "baseline", "testing": {"num_runs": 2},
             "references": {name: False for name in ("safetensors", "torch_save", "runai_streamer", "fastsafetensors",
                                                     "torch_dcp", "device_ceiling")},
             "test_configurations": [{"name": "baseline", "chunk_size_elements": 16384, "concurrency_limit": 1,
                                      "compression": "none"}]}
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    written = tmp_path / "competitor.bin"
    competitors = [subprocess.Popen([sys.executable, "-c", SPIN.format(cpu_s=600)]),
                   subprocess.Popen([sys.executable, "-c", WRITER, str(written)])]
    try:
        deadline = time.monotonic() + 10
        while not Path(f"{written}.started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        run = subprocess.run([sys.executable, str(REPO / "run_phase4_streamlined.py"), "--config",
                              str(tmp_path / "suite.json"), "--output-dir", str(tmp_path / "out"), "--no-progress"],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        for competitor in competitors:
            competitor.kill()
            competitor.wait()
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if "the machine was busy" in line]
    assert len(lines) == 1, run.stdout
    assert "in baseline; the answer's rows were affected (baseline)" in lines[0]
    document = results.read(tmp_path / "out" / "results.json").document
    assert document["busy"]["operations"] >= 1
    saves = [r["other_processes"]["save"] for r in document["tests"][0]["runs"]]
    assert all(figures["own_write_bytes"] > 0 for figures in saves)  # the suite's own writes are its own
    assert document["environment"]["host_load"]["start"] is not None


# --- compare ---------------------------------------------------------------------------------------------

def _with_busy_saves(document: dict, test: str) -> dict:
    """The document with every save of `test` made during a busy machine (another process wrote 1 GiB)."""
    for run in next(t for t in document["tests"] if t["name"] == test)["runs"]:
        run["other_processes"] = {"save": _quiet(write_bytes=1 << 30), "load": _quiet()}
    return results.derive(document)


def test_compare_does_not_call_a_busy_sides_difference_significant_unless_allowed(tmp_path, capsys):
    from ckptbench.cli import app as cli

    a = results.write(make_document({"base": RUNS_S, "fast": RUNS_S}), _folder(tmp_path / "a"))
    b = results.write(_with_busy_saves(make_document({"base": RUNS_S, "fast": SLOWER_S}), "fast"),
                      _folder(tmp_path / "b"))
    capsys.readouterr()
    status = cli.main(["compare", str(a), str(b), "--fail-on-regression", "10"])
    out = capsys.readouterr().out
    save_row = next(line for line in out.splitlines() if line.split()[:2] == ["fast", "save_s"])
    load_row = next(line for line in out.splitlines() if line.split()[:2] == ["fast", "load_s"])
    assert "+100.0%" in save_row and "not judged: busy machine (B: 5 of 5 saves busy)" in save_row
    assert "slower" in load_row  # the loads were not busy: judged as usual
    assert "1 not judged (the machine was busy)" in out and "--allow-busy" in out
    assert "  A: other processes were not watched during its timed operations" in out  # A's runs have no figures
    regressions = out.split("Regressions beyond 10%")[1]
    assert status == 1 and "fast load_s" in regressions and "fast save_s" not in regressions

    status = cli.main(["compare", str(a), str(b), "--fail-on-regression", "10", "--allow-busy"])
    out = capsys.readouterr().out
    save_row = next(line for line in out.splitlines() if line.split()[:2] == ["fast", "save_s"])
    assert "slower" in save_row and "[busy: B: 5 of 5 saves busy]" in save_row
    assert status == 1 and "fast save_s" in out.split("Regressions beyond 10%")[1]

def test_a_busy_side_of_a_size_is_judged_a_size_does_not_depend_on_the_load():
    doc_a = make_document({"base": RUNS_S})
    doc_b = _with_busy_saves(make_document({"base": RUNS_S}, size_bytes=2 * 5_000_000), "base")
    rows = {r["metric"]: r["comparison"] for r in versus.compare_documents(doc_a, doc_b, 5.0)}
    assert rows["size_bytes"]["verdict"] == "larger" and "busy" not in rows["size_bytes"]
    assert rows["save_s"]["busy"] == "B: 5 of 5 saves busy"


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def test_a_file_written_before_the_machine_was_watched_does_not_pass_for_quiet():
    document = make_document({"base": RUNS_S})
    del document["busy"]  # as a version-4 file written before this feature has it
    assert report.busy_lines(document) == [
        "! other processes' use of the machine was not measured (a file written before ckptbench watched it): the "
        "machine may have been busy"]
