"""Failure handling: a full disk, a failing test, folders the harness does not own, too little memory, bad inputs.

Everything is real: TensorStore writes into pytest folders and into a small tmpfs
mounted for the test (we run as root); where mounting is not permitted the same
outcomes are checked with a back end whose save really writes files and then fails
with ENOSPC. The command line runs in process (`ckptbench.cli.main`), with the
`tiny` preset, one run per test and no progress bar.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import SHIPPED_CONFIG

from ckptbench.bench import capacity, measure, workspace
from ckptbench.core import records, system
from ckptbench.spec import config

KIB, MIB = 2**10, 2**20

# Two raw tests: big chunks (few files) and small chunks (many files); both write every byte of the model.
TWO_TESTS = {
    "model": "tiny",
    "baseline": "big",
    "testing": {"num_runs": 1, "cache_eviction": "fadvise"},
    "test_configurations": [
        {"name": "big", "chunk_size_elements": 262144, "concurrency_limit": 8, "compression": "none"},
        {"name": "small", "chunk_size_elements": 65536, "concurrency_limit": 4, "compression": "none"},
    ],
}


# --- helpers -------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root (root included): kind, size, mtime, content hash. Symlinks are not followed."""
    entries: dict[str, tuple] = {}
    if not root.exists():
        return entries
    for here, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = Path(here) / name if name != "." else Path(here)
            st = os.lstat(path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else None
            entries[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return entries


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _suite_on(output_dir: Path, base_dir: Path) -> config.SuiteConfig:
    return config.from_dict({**TWO_TESTS, "output_dir": str(output_dir)}, base_dir=base_dir)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(fs: Path, leave: int) -> Path:
    """A filler file that leaves about `leave` bytes free on the filesystem of fs."""
    filler = fs / "filler.bin"
    with open(filler, "wb") as handle:
        remaining = _free(fs) - leave
        block = b"\xa5" * MIB
        while remaining > 0:
            remaining -= handle.write(block[: min(MIB, remaining)])
    assert _free(fs) <= leave + 64 * KIB
    return filler


def _run_dirs(output_dir: Path) -> list[str]:
    runs = output_dir / workspace.RUNS_DIR
    return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


def _local_dir(where) -> Path:
    """The local folder of a run, whether the back end gets a RunLocation or a plain path."""
    local = getattr(where, "local_dir", None)
    return Path(local if local is not None else where)


class _Wrapped:
    """A real back end with an extra step around save; everything else is the real one's."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _FullDiskSave(_Wrapped):
    """Fallback where tmpfs cannot be mounted: writes part of the checkpoint for real, then fails as a full disk."""

    def save(self, tensors, where):
        part = dict(list(tensors.items())[:3])
        self._inner.save(part, where)
        assert any(_local_dir(where).iterdir())
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(_local_dir(where)))


class _CorruptAfterSave(_Wrapped):
    """Saves for real, then flips the first bytes of one raw chunk on disk (same length, so it still reads)."""

    def save(self, tensors, where):
        self._inner.save(tensors, where)
        folder = _local_dir(where) / "model.embed_tokens.weight"
        chunk = sorted(p for p in folder.iterdir() if not p.name.startswith("."))[0]
        with open(chunk, "r+b") as handle:
            head = handle.read(64)
            handle.seek(0)
            handle.write(bytes(b ^ 0xFF for b in head))


class _BlockedSave(_Wrapped):
    """A regular file squats where TensorStore must create an array's folder: the real save raises."""

    def save(self, tensors, where):
        (_local_dir(where) / "model.norm.weight").write_text("squatter")
        self._inner.save(tensors, where)


def _wrap_backends(monkeypatch, wrappers: dict) -> None:
    """measure.backend_for, but the back ends of the named tests (or '*': all) wrapped."""
    real = measure.backend_for

    def backend_for(test, *args, **kwargs):
        backend = real(test, *args, **kwargs)
        wrapper = wrappers.get(test.name, wrappers.get("*"))
        return wrapper(backend) if wrapper else backend

    monkeypatch.setattr(measure, "backend_for", backend_for)


@pytest.fixture
def small_fs(tmp_path):
    """small_fs(size) -> (folder, mounted): a tmpfs of that size, unmounted afterwards; mounted False if not permitted."""
    mounted: list[Path] = []

    def make(size: str, name: str = "smallfs") -> tuple[Path, bool]:
        path = tmp_path / name
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if proc.returncode == 0 and os.path.ismount(path):
            mounted.append(path)
            return path, True
        return path, False

    yield make
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _cli(run_cli, cfg: Path, out: Path, *extra):
    return run_cli("--config", cfg, "--output-dir", out, "--runs", "1", "--no-progress", *extra)


# --- 1. a full disk ---------------------------------------------------------------------------


def test_disk_precheck_refuses_a_checkpoint_that_does_not_fit(small_fs, run_cli, tmp_path, monkeypatch):
    fs, mounted = small_fs("3m")
    if not mounted:  # fallback: the same refusal against free space reported as 3 MiB
        monkeypatch.setattr(system, "free_bytes", lambda path: 3 * MIB)
    out = fs / "out"
    before = _snapshot(fs)
    status, stdout, stderr = _cli(run_cli, _write_json(tmp_path / "suite.json", TWO_TESTS), out, "--model", "tiny")
    assert status == 2 and stdout == ""
    line = _one_line(stderr)
    for needle in ("output_dir", str(out), "free space", "--output-dir", "--dtype bfloat16"):
        assert needle in line, (needle, line)
    assert not out.exists() and _snapshot(fs) == before


def test_full_disk_during_a_save_is_fatal_and_leaves_nothing(small_fs, tmp_path, tiny_weights):
    fs, mounted = small_fs("3m")
    suite = _suite_on(fs / "out", tmp_path)
    workspace.prepare_output_dir(suite.output_dir)
    backend = measure.backend_for(suite.test("big"), suite)
    if mounted:
        _fill(fs, leave=512 * KIB)  # the save starts, writes some chunks, then runs out of space
    else:
        backend = _FullDiskSave(backend)
    free_before = _free(fs)
    planned = records.PlannedRun("big", 0, 0)
    run_dir = suite.output_dir / workspace.RUNS_DIR / planned.label
    existed = []

    def on_phase(run, phase):
        if phase == "save":
            existed.append(run_dir.is_dir() and (run_dir / workspace.RUN_MARKER).is_file())

    record = measure.run_once(planned, backend, measure.Bench(suite, tiny_weights.tensors), on_phase=on_phase)
    assert existed == [True]
    assert not record.ok and "No space left on device" in record.error and "\n" not in record.error
    assert record.fatal is True
    assert record.save_s is None and record.load_s is None and record.verified is None
    assert not run_dir.exists()
    if mounted:  # a private filesystem: the partial checkpoint's space came back
        assert _free(fs) >= free_before - 64 * KIB


def test_run_suite_stops_after_a_full_disk(small_fs, tmp_path, tiny_weights, monkeypatch):
    fs, mounted = small_fs("3m")
    suite = _suite_on(fs / "out", tmp_path)
    workspace.prepare_output_dir(suite.output_dir)
    if mounted:
        _fill(fs, leave=512 * KIB)
    else:
        _wrap_backends(monkeypatch, {"*": _FullDiskSave})
    runs = list(records.plan(["big", "small"], num_runs=2, warmup_rounds=0, seed=3))
    attempted = []
    done = list(measure.run_plan(runs, measure.Bench(suite, tiny_weights.tensors),
                                 on_phase=lambda run, phase: attempted.append(run) if phase == "save" else None))
    assert len(runs) == 4
    assert len(done) == 1 and attempted == [runs[0]]  # the other three planned runs were never started
    assert (done[0].test, done[0].round) == (runs[0].test, runs[0].round)
    assert done[0].fatal and "No space left on device" in done[0].error
    assert _run_dirs(suite.output_dir) == []


def test_cli_full_disk_after_the_precheck_stops_and_resume_retries(small_fs, run_cli, tmp_path, tiny_weights,
                                                                   monkeypatch):
    """The pre-check passes; then the disk fills up (another writer) and the first save hits ENOSPC."""
    shapes = [a.shape for a in tiny_weights.tensors.values()]
    suite = _suite_on(tmp_path / "unused", tmp_path)
    need = max(capacity.run_bytes_upper(t, shapes, 4) for t in suite.tests) + tiny_weights.size_bytes  # + the source
    fs, mounted = small_fs(f"{math.ceil(need * 1.3 / MIB) + 1}m")
    out = fs / "out"
    fillers = []
    real_run_plan = measure.run_plan

    def fill_then_run(*args, **kwargs):  # the pre-check passed and the source weights are written
        if mounted:
            fillers.append(_fill(fs, leave=384 * KIB))
        return real_run_plan(*args, **kwargs)

    monkeypatch.setattr(measure, "run_plan", fill_then_run)
    if not mounted:
        _wrap_backends(monkeypatch, {"*": _FullDiskSave})
    cfg = _write_json(tmp_path / "suite.json", TWO_TESTS)
    status, stdout, stderr = _cli(run_cli, cfg, out, "--seed", "5")
    assert status == 1, stderr
    assert "stopped early after a storage failure" in stderr and "--resume" in stderr
    document = json.loads((out / "results.json").read_text())
    assert document["complete"] is False
    runs = [r for t in document["tests"] for r in t["runs"]]
    assert len(runs) == 1  # two planned, the second never attempted
    assert runs[0]["fatal"] is True and "No space left on device" in runs[0]["error"]
    journal_lines = (out / "journal.jsonl").read_text().splitlines()
    assert len(journal_lines) == 2 and json.loads(journal_lines[1])["fatal"] is True
    assert not (out / workspace.RUNS_DIR).exists()
    assert not (out / "optimization_analysis.png").exists()  # nothing succeeded, nothing to draw

    # Fixed: space is freed (or the failing back end is gone); --resume must complete the whole suite,
    # the run that hit the full disk included, as the error line promised.
    for filler in fillers:
        filler.unlink()
    monkeypatch.undo()
    status, stdout, stderr = _cli(run_cli, cfg, out, "--resume")
    document = json.loads((out / "results.json").read_text())
    assert document["complete"] is True, (status, stderr, [(r["test"], r["round"], r["error"]) for t in document["tests"] for r in t["runs"]])
    assert {t["name"]: [r["error"] for r in t["runs"]] for t in document["tests"]} == {"big": [None], "small": [None]}, \
        "the run that hit the full disk was not retried by --resume"
    assert status == 0, stderr


# --- 2. a failing test is recorded and the suite goes on -----------------------------------------------


FOUR_TESTS = {
    **TWO_TESTS,
    "test_configurations": TWO_TESTS["test_configurations"] + [
        {"name": "corrupt", "chunk_size_elements": 65536, "concurrency_limit": 4, "compression": "none"},
        {"name": "blocked", "chunk_size_elements": 262144, "concurrency_limit": 4, "compression": "none"},
    ],
}


def test_failing_tests_are_recorded_and_the_suite_goes_on(run_cli, tmp_path, monkeypatch):
    names = [t["name"] for t in FOUR_TESTS["test_configurations"]]
    # a seed whose single round starts with both failing tests, so good runs come after the failures
    seed = next(s for s in range(1000)
                if [r.test for r in list(records.plan(names, 1, 0, s))][:2] in (["corrupt", "blocked"], ["blocked", "corrupt"]))
    _wrap_backends(monkeypatch, {"corrupt": _CorruptAfterSave, "blocked": _BlockedSave})
    out = tmp_path / "out"
    status, stdout, stderr = _cli(run_cli, _write_json(tmp_path / "suite.json", FOUR_TESTS), out, "--seed", str(seed))
    assert status == 1, stderr
    assert "stopped early" not in stderr
    document = json.loads((out / "results.json").read_text())
    assert document["complete"] is True
    tests = {t["name"]: t for t in document["tests"]}
    assert set(tests) == set(names)

    corrupt = tests["corrupt"]["runs"][0]
    assert corrupt["verified"] is False and corrupt["fatal"] is False
    assert corrupt["error"].startswith("verification failed") and "model.embed_tokens.weight" in corrupt["error"]
    assert corrupt["load_s"] > 0  # the load itself happened
    blocked = tests["blocked"]["runs"][0]
    assert blocked["fatal"] is False and blocked["save_s"] is None
    assert "model.norm.weight" in blocked["error"] and "Not a directory" in blocked["error"]
    assert "\n" not in blocked["error"] and "\n" not in corrupt["error"]

    for name in ("corrupt", "blocked"):  # failed runs are listed but excluded from statistics
        assert tests[name]["failed_runs"] == 1
        assert all(s["n"] == 0 and s["mean"] is None for s in
                   (tests[name]["stats"][m] for m in ("save_s", "load_s", "size_bytes")))
        assert any("failed" in w for w in tests[name]["warnings"])
    for name in ("big", "small"):  # the tests after the failures ran and count
        run = tests[name]["runs"][0]
        assert run["error"] is None and run["verified"] is True
        assert tests[name]["failed_runs"] == 0 and tests[name]["stats"]["save_s"]["n"] == 1
    assert any("2 run(s) failed and are excluded" in w for w in document["warnings"])
    assert _run_dirs(out) == []  # failed runs' folders were removed too
    assert (out / "optimization_analysis.png").is_file()


# --- 3. folders the harness does not own --------------------------------------------------------


def _foreign_folder(path: Path) -> Path:
    """A user's folder that looks a little like ours: a journal, a results file, a runs folder with a run marker."""
    (path / "runs" / "baseline-r0").mkdir(parents=True)
    (path / "runs" / workspace.RUN_MARKER).write_text("")
    (path / "runs" / "baseline-r0" / "weights.bin").write_bytes(os.urandom(4096))
    (path / "journal.jsonl").write_text('{"type": "suite"}\n')
    (path / "results.json").write_text("{}")
    (path / "notes.txt").write_text("precious")
    return path


@pytest.mark.parametrize("extra", [(), ("--resume",), ("--keep",)], ids=["plain", "resume", "keep"])
def test_foreign_non_empty_output_dir_is_left_untouched(run_cli, tmp_path, extra):
    target = _foreign_folder(tmp_path / "mine")
    before = _snapshot(target)
    status, stdout, stderr = _cli(run_cli, SHIPPED_CONFIG, target, "--model", "tiny", *extra)
    assert status == 2 and stdout == ""
    line = _one_line(stderr)
    assert "output_dir" in line and "not empty" in line and "not made by this harness" in line
    assert _snapshot(target) == before


@pytest.mark.parametrize("where", ["root", "home"])
def test_root_and_home_are_refused_as_output_dir(run_cli, where):
    target = Path("/") if where == "root" else Path.home()
    before = sorted(os.listdir(target))
    status, stdout, stderr = _cli(run_cli, SHIPPED_CONFIG, target, "--model", "tiny")
    assert status == 2 and stdout == ""
    line = _one_line(stderr)
    assert "root or home folder" in line and "dedicated folder" in line
    assert sorted(os.listdir(target)) == before
    assert not (target / workspace.OUTPUT_MARKER).exists()


def test_config_output_dir_of_its_own_folder_is_refused(run_cli, tmp_path):
    """output_dir "." in a config means the config's folder, which holds the user's config: refused."""
    folder = tmp_path / "project"
    folder.mkdir()
    cfg = _write_json(folder / "suite.json", {**TWO_TESTS, "output_dir": "."})
    before = _snapshot(folder)
    status, stdout, stderr = run_cli("--config", cfg, "--runs", "1", "--no-progress")
    assert status == 2 and "not empty" in _one_line(stderr) and str(folder) in stderr
    assert _snapshot(folder) == before


@pytest.mark.parametrize("how", ["symlinked-weights", "config-file", "weights-folder-itself"])
def test_output_dir_inside_the_weights_folder_is_refused(run_cli, tmp_path, checkpoint, how):
    weights_dir = shutil.copytree(checkpoint / "single", tmp_path / "ckpt")
    before = _snapshot(weights_dir)
    if how == "symlinked-weights":  # weights named through a link, output named by the real path
        (tmp_path / "link").symlink_to(weights_dir)
        status, _, stderr = _cli(run_cli, SHIPPED_CONFIG, weights_dir / "bench", "--weights", tmp_path / "link")
        needle = "inside the weights folder"
    elif how == "config-file":  # both in the config, relative to it
        cfg = _write_json(tmp_path / "suite.json", {**TWO_TESTS, "weights": "ckpt", "output_dir": "ckpt/results"})
        status, _, stderr = run_cli("--config", cfg, "--runs", "1", "--no-progress")
        needle = "inside the weights folder"
    else:  # the checkpoint folder itself: not empty and not ours
        status, _, stderr = _cli(run_cli, SHIPPED_CONFIG, weights_dir, "--weights", weights_dir)
        needle = "not empty"
    assert status == 2
    assert needle in _one_line(stderr)
    assert _snapshot(weights_dir) == before


@pytest.mark.parametrize("case", ["no-marker", "marker-is-a-folder", "output-marker-only"])
def test_remove_owned_refuses_folders_without_the_run_marker(tmp_path, case):
    folder = tmp_path / "victim"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "data.bin").write_bytes(b"\x01" * 100)
    if case == "marker-is-a-folder":
        (folder / workspace.RUN_MARKER).mkdir()
    elif case == "output-marker-only":
        (folder / workspace.OUTPUT_MARKER).write_text("")
    before = _snapshot(folder)
    with pytest.raises(RuntimeError, match="refusing to delete"):
        workspace.remove_owned(folder)
    assert _snapshot(folder) == before


def test_a_foreign_folder_in_a_run_slot_is_not_deleted(tmp_path, tiny_weights):
    """Someone's folder sits where a run folder goes: the run fails (not fatally) and the folder survives."""
    suite = _suite_on(tmp_path / "out", tmp_path)
    workspace.prepare_output_dir(suite.output_dir)
    squatter = suite.output_dir / workspace.RUNS_DIR / "big-r0"
    squatter.mkdir(parents=True)
    (squatter / "keep.txt").write_text("mine")
    before = _snapshot(squatter)
    record = measure.run_once(records.PlannedRun("big", 0, 0),
                              measure.backend_for(suite.test("big"), suite), measure.Bench(suite, tiny_weights.tensors))
    assert not record.ok and "refusing to delete" in record.error and record.fatal is False
    assert _snapshot(squatter) == before


# --- 4. too little memory -------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["preset", "weights-folder"])
def test_memory_precheck_refuses_before_loading(run_cli, tmp_path, monkeypatch, checkpoint, source):
    monkeypatch.setattr(system, "available_memory_bytes", lambda: 1000)
    out = tmp_path / "out"
    if source == "preset":
        extra = ("--model", "tiny")
    else:  # a damaged file proves the weights were never read: the memory refusal comes first
        folder = shutil.copytree(checkpoint / "single", tmp_path / "ckpt")
        (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:5000])
        extra = ("--weights", folder)
    status, stdout, stderr = _cli(run_cli, SHIPPED_CONFIG, out, *extra)
    assert status == 2 and stdout == ""
    line = _one_line(stderr)
    assert "memory" in line and "--model" in line and "--dtype bfloat16" in line
    assert not out.exists()


# --- 5. bad inputs not covered by test_config.py --------------------------------------------------------


def _assert_refused(result, out: Path, needles) -> str:
    status, stdout, stderr = result
    assert status == 2 and stdout == "", stderr
    line = _one_line(stderr)
    for needle in needles:
        assert str(needle) in line, (needle, line)
    assert not out.exists(), "the output folder was created although the run was refused"
    return line


@pytest.mark.parametrize("damage", ["truncated", "garbage-header"])
def test_cli_weights_with_a_corrupted_safetensors_file(run_cli, tmp_path, checkpoint, damage):
    folder = shutil.copytree(checkpoint / "single", tmp_path / "ckpt")
    target = folder / "model.safetensors"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"\xff" * 8 + data[8:])
    out = tmp_path / "out"
    _assert_refused(_cli(run_cli, SHIPPED_CONFIG, out, "--weights", folder), out,
                    ["--weights", target, "cannot be read"])


@pytest.mark.parametrize("damage", ["missing-shard", "index-not-json", "index-without-weight-map"])
def test_cli_weights_with_a_broken_sharded_index(run_cli, tmp_path, checkpoint, damage):
    folder = shutil.copytree(checkpoint / "sharded", tmp_path / "ckpt")
    index = folder / "model.safetensors.index.json"
    if damage == "missing-shard":
        shard = sorted(folder.glob("model-*.safetensors"))[0]
        shard.unlink()
        needles = ["--weights", index.name, shard.name, "missing"]
    elif damage == "index-not-json":
        index.write_text('{"weight_map": ')
        needles = ["--weights", index.name, "weight_map"]
    else:
        index.write_text('{"metadata": {}}')
        needles = ["--weights", index.name, "weight_map"]
    out = tmp_path / "out"
    _assert_refused(_cli(run_cli, SHIPPED_CONFIG, out, "--weights", folder), out, needles)


# test_config.py already covers --runs 0 and --runs three (non-numeric); these are the others.
@pytest.mark.parametrize("value", ["-1", "2.5", "", "1e3", "0x10"])
def test_cli_rejects_other_bad_run_counts(run_cli, tmp_path, value):
    out = tmp_path / "out"
    result = run_cli("--config", SHIPPED_CONFIG, "--model", "tiny", "--output-dir", out, "--runs", value,
                     "--no-progress")
    _assert_refused(result, out, ["--runs"])


@pytest.mark.parametrize("mode", [0o644, 0o755], ids=["plain-file", "executable-file"])
def test_cli_output_dir_under_a_regular_file(run_cli, tmp_path, mode):
    """Root ignores permission bits, so an unwritable place is a path through a regular file."""
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    blocker.chmod(mode)
    out = blocker / "sub"
    status, stdout, stderr = _cli(run_cli, SHIPPED_CONFIG, out, "--model", "tiny")
    assert status == 2 and stdout == ""
    line = _one_line(stderr)
    assert "output_dir" in line and str(blocker) in line
    assert blocker.is_file() and blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somefile"]


@pytest.mark.parametrize("value", ["", ",", " , ,"], ids=["empty", "comma", "blanks"])
def test_cli_rejects_an_empty_tests_list(run_cli, tmp_path, value):
    out = tmp_path / "out"
    _assert_refused(_cli(run_cli, _write_json(tmp_path / "suite.json", TWO_TESTS), out, "--tests", value), out,
                    ["--tests"])


@pytest.mark.parametrize("text, needles", [
    ("[]", ["top level", "object", "list"]),
    ('"x"', ["top level", "object", "str"]),
    ("null", ["top level", "object", "NoneType"]),
    ("0", ["top level", "object", "int"]),
    ("", ["invalid JSON", "line 1", "column 1"]),
    ("\ufeff{}", ["invalid JSON", "line 1"]),
], ids=["list", "string", "null", "number", "empty-file", "bom"])
def test_cli_rejects_a_config_that_is_not_an_object(run_cli, tmp_path, text, needles):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    _assert_refused(_cli(run_cli, cfg, out, "--model", "tiny"), out, ["cfg.json", *needles])


def test_cli_rejects_a_config_that_is_not_utf8(run_cli, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_bytes(b'{"model": "tiny\xff\xfe"}')
    out = tmp_path / "out"
    _assert_refused(_cli(run_cli, cfg, out), out, ["cfg.json", "cannot be read", "encoding"])


# Numbers JSON allows but the harness cannot use: each must be one line at validation, exit 2, nothing written.
def _fast(**fields):
    return {**TWO_TESTS, "test_configurations": [TWO_TESTS["test_configurations"][0],
                                                  {**TWO_TESTS["test_configurations"][1], **fields}]}


NUMERIC_EDGE_CONFIGS = {
    "num-runs-2.0": ({**TWO_TESTS, "testing": {"num_runs": 2.0}}, ["num_runs"]),
    "warmup-rounds-1.0": ({**TWO_TESTS, "testing": {"num_runs": 1, "warmup_rounds": 1.0}}, ["warmup_rounds"]),
    "noise-pct-NaN": ({**TWO_TESTS, "testing": {"num_runs": 1, "noise_pct": float("nan")}}, ["noise_pct"]),
    "expected-NaN": (_fast(expected={"save_pct": [float("nan"), 5]}), ["'small'", "save_pct"]),
    "chunk-bytes-65536.0": (_fast(chunk_size_elements=None, chunk_bytes=65536.0), ["'small'", "chunk_bytes"]),
    "chunk-bytes-huge-string": (_fast(chunk_size_elements=None, chunk_bytes="9" * 400 + "KB"), ["'small'", "chunk_bytes"]),
}


@pytest.mark.parametrize("case", list(NUMERIC_EDGE_CONFIGS))
def test_cli_rejects_numbers_it_cannot_use(run_cli, tmp_path, case):
    data, needles = NUMERIC_EDGE_CONFIGS[case]
    data = json.loads(json.dumps(data))  # a deep copy, NaN kept
    for test in data["test_configurations"]:
        if test.get("chunk_size_elements", 0) is None:
            del test["chunk_size_elements"]
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(data))  # json writes NaN, and Python's json reads it back
    out = tmp_path / "out"
    try:  # no --runs: the config's own counts must be what is checked
        result = run_cli("--config", cfg, "--output-dir", out, "--no-progress")
    except Exception as exc:  # a crash instead of a one-line refusal
        pytest.fail(f"{case}: the CLI raised {type(exc).__name__}: {exc}")
    _assert_refused(result, out, needles)
