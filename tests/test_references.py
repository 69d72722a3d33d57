"""Reference rows (safetensors, torch.save, the device ceiling): real files in temporary folders, one timed run
through measure.run_once, and an end-to-end CLI run whose results.json reports against the ceiling."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from conftest import assert_same_bits, run_config

from ckptbench.bench import measure, workspace
from ckptbench.bench.references import BACKENDS
from ckptbench.bench.references.ceiling import (
    FIO,
    FIO_PREFIX,
    GRID,
    DeviceCeilingBackend,
    fio_pattern_name,
    pattern_name,
)
from ckptbench.bench.references.files import TorchSaveBackend
from ckptbench.core import records
from ckptbench.documents import results
from ckptbench.spec import config
from ckptbench.spec.references import CEILING

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
FILENAMES = {"safetensors": "model.safetensors", "torch_save": "model.pt"}
COST = ("save_cpu_s", "load_cpu_s", "save_peak_rss_bytes", "load_peak_rss_bytes")


def _tensors(dtype: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    special = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-40], dtype=np.float32)
    first = rng.standard_normal((33, 17), dtype=np.float32)
    first.reshape(-1)[: special.size] = special
    arrays = {"model.embed_tokens.weight": first,
              "model.norm.weight": rng.standard_normal(129, dtype=np.float32),
              "lm_head.weight": rng.standard_normal((8, 4, 3), dtype=np.float32)}
    return {k: np.ascontiguousarray(v.astype(DTYPES[dtype])) for k, v in arrays.items()}


@pytest.fixture
def fsynced(monkeypatch):
    """The real os.fsync, recording the path of every descriptor it syncs."""
    paths: list[Path] = []
    real = os.fsync

    def spy(fd):
        paths.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return paths


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", list(FILENAMES))
def test_reference_round_trip_is_bit_exact_and_durable(tmp_path, name, dtype, fsynced):
    tensors = _tensors(dtype)
    backend = BACKENDS[name]()
    directory = tmp_path / name
    directory.mkdir()
    backend.save(tensors, directory)
    file = directory / FILENAMES[name]
    assert [p.name for p in directory.iterdir()] == [file.name]
    # the file and its folder were fsync'd (the new directory entry must survive a crash too)
    assert file in fsynced and directory in fsynced, fsynced
    loaded = backend.load(directory)
    assert_same_bits(tensors, loaded)
    size_bytes, disk_bytes, n_files = backend.footprint(directory)
    assert (size_bytes, n_files) == (file.stat().st_size, 1)
    assert disk_bytes == file.stat().st_blocks * 512
    data_bytes = sum(a.nbytes for a in tensors.values())
    assert data_bytes < size_bytes < data_bytes + 64 * 1024  # the data plus a header


@pytest.mark.parametrize("name", ["safetensors", "torch_save"])
def test_reference_files_are_readable_by_their_own_libraries(tmp_path, name):
    tensors = _tensors("bfloat16")
    BACKENDS[name]().save(tensors, tmp_path)
    if name == "safetensors":
        from safetensors import safe_open

        with safe_open(str(tmp_path / FILENAMES[name]), framework="pt") as handle:
            shapes = {key: tuple(handle.get_tensor(key).shape) for key in handle.keys()}
            dtypes = {str(handle.get_tensor(key).dtype) for key in handle.keys()}
    else:
        import torch

        state = torch.load(tmp_path / FILENAMES[name], weights_only=True)
        shapes = {key: tuple(t.shape) for key, t in state.items()}
        dtypes = {str(t.dtype) for t in state.values()}
    assert shapes == {k: v.shape for k, v in tensors.items()}
    assert dtypes == {"torch.bfloat16"}


def _ceiling_tensors() -> dict[str, np.ndarray]:
    """996,028 bytes: with 64 KiB blocks the 16-stream set really is 16 files, split inside tensors."""
    rng = np.random.default_rng(11)
    return {"a": rng.standard_normal((250, 600), dtype=np.float32), "b": rng.standard_normal(7, dtype=np.float32),
            "c": rng.standard_normal((99, 1000), dtype=np.float32)}


SMALL_GRID = tuple((streams, block) for streams in (1, 4, 16) for block in (4096, 65536))
SMALL_DIRECT = (16, 65536)


def _small_ceiling(fio=None) -> DeviceCeilingBackend:
    """The ceiling over a grid for a 1 MB model (fio None: without fio's pattern)."""
    return DeviceCeilingBackend("fadvise", grid=SMALL_GRID, direct=SMALL_DIRECT, fio=fio)


def test_device_ceiling_writes_every_pattern_fsyncd_and_in_order(tmp_path, fsynced):
    tensors = _ceiling_tensors()
    backend = _small_ceiling()
    backend.save(tensors, tmp_path)
    expected = b"".join(a.tobytes() for a in tensors.values())
    for streams in (1, 4, 16):
        parts = sorted((tmp_path / f"{streams}-streams").iterdir())
        assert len(parts) == streams
        assert b"".join(part.read_bytes() for part in parts) == expected  # the bytes back to back, in order
        assert all(part in fsynced for part in parts) and (tmp_path / f"{streams}-streams") in fsynced
    assert set(backend.pattern_seconds()) == {f"{s}x{b // 1024}KiB" for s, b in SMALL_GRID}
    assert all(seconds > 0 for seconds in backend.pattern_seconds().values())
    size_bytes, _, n_files = backend.footprint(tmp_path)
    assert (size_bytes, n_files) == (len(expected), 1)  # one copy of the bytes counts as the checkpoint


def test_device_ceiling_reads_every_pattern_and_an_o_direct_read_bit_exact(tmp_path):
    tensors = _ceiling_tensors()
    backend = _small_ceiling()
    backend.prepare(tensors)
    backend.save(tensors, tmp_path)
    loaded = backend.load(tmp_path)
    assert_same_bits(tensors, loaded)
    patterns = backend.pattern_seconds()
    assert len(patterns) == 7 and "direct 16x64KiB" in patterns  # six buffered patterns and the O_DIRECT one
    assert backend.bypass_resident_bytes(10**9) == 0  # its O_DIRECT read's files: no page entered the cache
    backend.release()


def test_device_ceiling_default_grid_has_deeper_queues_than_16_streams_of_16_mib():
    names = {pattern_name(*p) for p in GRID}
    assert {"32x16MiB", "16x64MiB"} <= names and {"1x1MiB", "16x16MiB"} <= names


def test_device_ceiling_without_fio_on_path_runs_its_own_patterns_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))
    tensors = _ceiling_tensors()
    backend = _small_ceiling(fio=FIO)
    assert not backend.uses_fio
    backend.prepare(tensors)
    backend.save(tensors, tmp_path)
    backend.load(tmp_path)
    assert not any(n.startswith(FIO_PREFIX) for n in backend.pattern_seconds())
    assert not (tmp_path / "fio").exists()


def test_device_ceiling_with_fio_times_its_io_uring_pattern(tmp_path):
    if shutil.which("fio") is None:
        pytest.skip("fio is not on PATH (apt-get install fio): its pattern cannot run here")
    tensors = _ceiling_tensors()
    backend = _small_ceiling(fio=FIO)
    backend.prepare(tensors)
    backend.save(tensors, tmp_path)
    name = fio_pattern_name(FIO)
    if not backend.uses_fio:
        pytest.skip("fio is on PATH but failed here (io_uring or O_DIRECT refused); its message is on stderr")
    assert backend.pattern_seconds()[name] > 0
    files = sorted((tmp_path / "fio").iterdir())
    assert sum(f.stat().st_size for f in files) >= sum(a.nbytes for a in tensors.values())
    loaded = backend.load(tmp_path)
    assert backend.pattern_seconds()[name] > 0
    assert_same_bits(tensors, loaded)  # the buffer is the grid's reads', untouched by fio
    backend.release()


def test_device_ceiling_after_its_full_grid_runs_its_two_fastest_patterns_fio_and_o_direct(tmp_path):
    """Later rounds: the grid's two fastest writes and reads (lowest mean over the full-grid runs)."""
    names = [pattern_name(*p) for p in SMALL_GRID]
    seconds = {name: 1.0 + index for index, name in enumerate(names)}
    seconds["4x64KiB"], seconds["16x4KiB"] = 0.1, 0.2  # the two fastest writes
    reads = {**{name: 1.0 for name in names}, "1x4KiB": 0.3, "16x64KiB": 0.1, "direct 16x64KiB": 0.01}
    full = records.RunRecord("device_ceiling", 0, 0, False, save_s=0.1, load_s=0.01,
                             patterns={"save": seconds, "load": reads})
    backend = _small_ceiling()
    backend.before_run([full])
    tensors = _ceiling_tensors()
    backend.prepare(tensors)
    backend.save(tensors, tmp_path)
    assert set(backend.pattern_seconds()) == {"4x64KiB", "16x4KiB"}
    assert_same_bits(tensors, backend.load(tmp_path))
    assert set(backend.pattern_seconds()) == {"16x64KiB", "1x4KiB", "direct 16x64KiB"}
    backend.release()


def test_device_ceiling_run_records_its_fastest_pattern(tmp_path):
    tensors = _ceiling_tensors()
    suite = config.from_dict({"references": {"device_ceiling": True}, "testing": {"cache_eviction": "fadvise"},
                              "test_configurations": [{"name": "raw", "chunk_bytes": "64KB", "concurrency_limit": 1}]},
                             output_dir=tmp_path / "out")
    workspace.prepare_output_dir(suite.output_dir)
    backend = _small_ceiling()
    record = measure.run_once(records.PlannedRun("device_ceiling", 0, 0), backend, measure.Bench(suite, tensors))
    assert record.ok and record.verified
    assert record.save_s == min(record.patterns["save"].values())
    assert record.load_s == min(record.patterns["load"].values())
    assert len(record.patterns["save"]) == 6 and len(record.patterns["load"]) == 7
    assert record.resident_bytes_after_load is not None  # every row's figure is recorded (here: the whole folder)
    assert record.bypass_resident_bytes == 0  # the O_DIRECT read's claim, measured on its own files


# the device ceiling's full grid is slow
@pytest.mark.parametrize("name", [pytest.param(k, marks=pytest.mark.slow) if k == CEILING else k for k in BACKENDS])
def test_run_once_with_a_reference_records_a_cold_verified_load(tmp_path, name):
    tensors = _tensors("bfloat16")
    suite = config.from_dict({"dtype": "bfloat16", "references": {name: True}, "test_configurations": [
        {"name": "raw", "chunk_bytes": "64KB", "concurrency_limit": 1}]}, base_dir=tmp_path,
        output_dir=tmp_path / "out")
    test = suite.test(name)
    assert (test.backend, test.durable) == (name, True)
    backend = measure.backend_for(test, suite)
    assert isinstance(backend, BACKENDS[name])
    workspace.prepare_output_dir(suite.output_dir)
    record = measure.run_once(records.PlannedRun(name, 0, 0), backend, measure.Bench(suite, tensors))
    assert record.error is None, record.error
    assert record.verified is True
    assert record.load_cache == "cold"
    assert record.eviction in ("drop_caches", "fadvise")
    assert all(getattr(record, metric) is not None for metric in COST)
    assert record.resident_bytes_after_load is not None  # every row's, measured right after its load
    if backend.bypasses_page_cache:  # the Run:ai streamer's O_DIRECT claim, measured: nothing entered the cache
        assert record.bypass_resident_bytes is not None
        assert record.bypass_resident_bytes <= 0.05 * record.disk_bytes
    elif name != "device_ceiling":
        assert record.bypass_resident_bytes is None
    assert record.size_bytes >= sum(a.nbytes for a in tensors.values())
    assert not (suite.output_dir / workspace.RUNS_DIR / "raw-r0").exists()
    assert not any((suite.output_dir / workspace.RUNS_DIR).glob(f"{name}-r0"))  # the run folder is gone


def test_run_once_catches_a_corrupted_reference_load(tmp_path):
    """The verification a reference run reports is able to fail."""
    tensors = _tensors("float32")

    class Corrupting(TorchSaveBackend):
        def load(self, location):
            loaded = super().load(location)
            loaded["model.norm.weight"] = loaded["model.norm.weight"] + np.float32(1)
            return loaded

    suite = config.from_dict({"references": {"torch_save": True}, "test_configurations": [
        {"name": "raw", "chunk_bytes": "64KB", "concurrency_limit": 1}]}, output_dir=tmp_path / "out")
    workspace.prepare_output_dir(suite.output_dir)
    record = measure.run_once(records.PlannedRun("torch_save", 0, 0), Corrupting(), measure.Bench(suite, tensors))
    assert record.verified is False
    assert "model.norm.weight" in record.error


# --- end to end: the CLI on the tiny preset -----------------------------------------------------------------


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """One real CLI run on `tiny`: a raw baseline, gzip, a not-durable test and all three references, 2 runs."""

    root = tmp_path_factory.mktemp("refs")
    cfg = {
        "model": "tiny",
        "baseline": "raw",
        "references": {"safetensors": True, "torch_save": True, "device_ceiling": True},
        "testing": {"num_runs": 2, "seed": 7},
        "test_configurations": [
            {"name": "raw", "chunk_bytes": "256KB", "concurrency_limit": 8, "compression": "none"},
            {"name": "gzip", "chunk_bytes": "256KB", "concurrency_limit": 8, "compression": {"id": "gzip", "level": 1}},
            {"name": "nosync", "chunk_bytes": "256KB", "concurrency_limit": 8, "compression": "none",
             "file_io_sync": False},
        ],
    }
    return run_config(root, cfg, "refs.json")


def _by_name(document):
    return {t["name"]: t for t in document["tests"]}


@pytest.mark.slow  # the device ceiling's full grid (e2e)
def test_e2e_runs_every_reference_and_verifies(e2e):
    status, document, out = e2e
    assert status == 0
    assert document["complete"] is True
    tests = _by_name(document)
    assert list(tests) == ["raw", "gzip", "nosync", "safetensors", "torch_save", "device_ceiling"]
    for name in ("safetensors", "torch_save", "device_ceiling"):
        assert tests[name]["settings"]["backend"] == name
    for test in tests.values():
        assert len(test["runs"]) == 2 and test["failed_runs"] == 0, test["name"]
        assert all(r["verified"] is True for r in test["runs"]), test["name"]
    assert not (out / workspace.RUNS_DIR).exists()  # every run folder was removed


@pytest.mark.slow  # the device ceiling's full grid (e2e)
def test_e2e_no_row_is_above_100_pct_of_its_rounds_ceiling_and_every_beater_is_named(e2e):
    _, document, _ = e2e
    tests = _by_name(document)
    data_bytes = document["weights"]["size_bytes"]
    by_round = tests["device_ceiling"]["ceiling"]["rounds"]
    for metric, seconds in (("save_gbps", "save_s"), ("load_gbps", "load_s")):
        assert [entry["round"] for entry in by_round[metric]] == [0, 1]
        fastest = {entry["round"]: entry["fastest_gbps"] for entry in by_round[metric]}
        for name, test in tests.items():
            pct = test["pct_of_ceiling"][metric]
            if name == "nosync" and metric == "save_gbps":
                assert pct is None  # not durable: its saves are not the device's figures
                continue
            assert 0 < pct <= 100.0 + 1e-9, (name, metric, pct)
            # recomputed from the raw runs: the mean share of each round's fastest figure
            shares = [100.0 * data_bytes / 1e9 / run[seconds] / fastest[run["round"]] for run in test["runs"]]
            assert pct == pytest.approx(sum(shares) / len(shares)), (name, metric)
    beaters = {name for metric in ("save_gbps", "load_gbps") for entry in by_round[metric]
               for name in entry["beaten_by"]}
    alerted = [a for a in document["alerts"] if a["kind"] == "ceiling beaten"]
    assert {name for a in alerted for name in a["tests"]} == beaters
    assert all(name in a["text"] for a in alerted for name in a["tests"])


@pytest.mark.slow  # the device ceiling's full grid (e2e)
def test_e2e_every_row_records_the_page_cache_its_load_left(e2e):
    _, document, _ = e2e
    tests = _by_name(document)
    for name, test in tests.items():
        assert all(isinstance(run["resident_bytes_after_load"], int) for run in test["runs"]), name
    buffered = tests["torch_save"]
    assert buffered["page_cache"]["claim"] is None and buffered["page_cache"]["claim_held"] is None
    assert buffered["page_cache"]["resident_after_load_bytes_max"] > 0  # a buffered load leaves its pages
    assert not any("page cache" in w for w in buffered["warnings"])
    ceiling = tests["device_ceiling"]["page_cache"]
    assert ceiling["claim"] == "its O_DIRECT read pattern" and ceiling["claim_runs"] == 2
    assert ceiling["claim_held"] is True  # O_DIRECT on this disk: no page of that read's files was cached


@pytest.mark.slow  # the device ceiling's full grid (e2e)
def test_e2e_cost_stats_exist_per_test(e2e):
    _, document, _ = e2e
    for test in document["tests"]:
        for metric in COST:
            summary = test["stats"][metric]
            assert summary["n"] == 2, (test["name"], metric)
            assert summary["mean"] is not None and summary["mean"] >= 0, (test["name"], metric)
            assert all(run[metric] is not None for run in test["runs"]), (test["name"], metric)
            assert all(isinstance(run[metric], (int, float)) and run[metric] >= 0 for run in test["runs"])
        assert all(isinstance(run["save_peak_rss_bytes"], int) for run in test["runs"]), test["name"]


@pytest.mark.slow  # the device ceiling's full grid (e2e)
def test_e2e_not_durable_test_is_labelled_and_warned(e2e):
    _, document, _ = e2e
    tests = _by_name(document)
    nosync = tests["nosync"]
    assert nosync["durable"] is False
    assert nosync["settings"]["file_io_sync"] is False
    assert results.NOT_DURABLE in nosync["labels"]
    assert any("not durable" in w and w.startswith("nosync:") for w in nosync["warnings"])
    assert any("nosync" in w and "not durable" in w for w in document["warnings"])
    for name in ("raw", "gzip", "safetensors", "torch_save", "device_ceiling"):
        assert tests[name]["durable"] is True and results.NOT_DURABLE not in tests[name]["labels"], name
        assert not any("not durable" in w for w in tests[name]["warnings"]), name
