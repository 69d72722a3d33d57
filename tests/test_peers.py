"""The peer loaders (Run:ai streamer, fastsafetensors, torch DCP) and TensorStore's load_into: real files of the
tiny preset in temporary folders, cold loads, bit-for-bit checks, a row skipped with its reason when its library
cannot be imported, row settings reaching the library, and one end-to-end run whose results.json records it all."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_bits, bits, minimal_config, run_config

from ckptbench.bench import cache, capacity, measure, references, storage, workspace
from ckptbench.core import records
from ckptbench.core.errors import UserError
from ckptbench.sources import weights
from ckptbench.spec import config
from ckptbench.spec import references as registry

PEERS = ["runai_streamer", "fastsafetensors", "torch_dcp"]
DTYPES = ["float32", "bfloat16"]


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset's weights in each dtype, made once (read-only)."""
    made = {dtype: weights.from_preset("tiny", dtype) for dtype in DTYPES}
    for source in made.values():
        for array in source.tensors.values():
            array.flags.writeable = False
    return made


def _suite(tmp_path: Path, dtype: str = "float32", refs: dict | None = None, tests: list | None = None):
    data = {"model": "tiny", "dtype": dtype, "references": refs or {},
            "testing": {"num_runs": 1, "cache_eviction": "fadvise"},
            "test_configurations": tests or [{"name": "raw", "chunk_bytes": "64KB", "concurrency_limit": 4}]}
    made = config.from_dict(data, base_dir=tmp_path, output_dir=tmp_path / "out")
    workspace.prepare_output_dir(made.output_dir)
    return made


def _run(suite, name: str, tensors, **kwargs):
    backend = measure.backend_for(suite.test(name), suite)
    return measure.run_once(records.PlannedRun(name, 0, 0), tensors, backend, suite, **kwargs), backend


# --- each peer: save fsync'd, cold load, every byte back -----------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PEERS)
def test_peer_saves_durably_loads_cold_and_gives_every_byte_back(tmp_path, tiny, name, dtype, monkeypatch):
    tensors = tiny[dtype].tensors
    synced: list[Path] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(Path(os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    backend = references.BACKENDS[name]()
    backend.prepare(tensors)
    backend.save(tensors, tmp_path)
    files = sorted(p for p in tmp_path.iterdir() if p.is_file())
    assert files and all(f in synced for f in files) and tmp_path in synced  # every file and its folder
    backend.before_load(tensors)  # as measure does: after the save, before the eviction and the clock
    assert cache.evict(tmp_path, "fadvise") is not None
    assert cache.resident_bytes(tmp_path) == 0  # the load starts cold
    loaded = backend.load(tmp_path)
    assert_same_bits(tensors, loaded)
    assert backend.verify(tensors, loaded) == []
    size_bytes, _, n_files = backend.footprint(tmp_path)
    assert n_files == len(files) and size_bytes >= tiny[dtype].size_bytes
    backend.release()


@pytest.mark.parametrize("name", PEERS)
def test_peer_run_is_cold_verified_and_cleaned_up(tmp_path, tiny, name):
    suite = _suite(tmp_path, "bfloat16", {name: True})
    record, _ = _run(suite, name, tiny["bfloat16"].tensors)
    assert record.ok and record.verified is True, record.error
    assert (record.load_cache, record.eviction) == ("cold", "fadvise")
    assert record.load_rss_anon_bytes is not None and record.load_cpu_s is not None
    assert not (suite.output_dir / workspace.RUNS_DIR / records.PlannedRun(name, 0, 0).label).exists()


def _flip_in_the_middle_of_the_largest_file(folder: Path) -> None:
    """Flip 64 bytes at 3/4 of the checkpoint's largest file (tensor data, not a header), same length."""
    largest = max((p for p in folder.iterdir() if p.is_file() and p.name != workspace.RUN_MARKER),
                  key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as handle:
        handle.seek(largest.stat().st_size * 3 // 4)
        block = handle.read(64)
        handle.seek(largest.stat().st_size * 3 // 4)
        handle.write(bytes(b ^ 0xFF for b in block))
        handle.flush()
        os.fsync(handle.fileno())


@pytest.mark.parametrize("name", PEERS)
def test_a_corrupted_peer_file_fails_verification(tmp_path, tiny, name):
    suite = _suite(tmp_path, "float32", {name: True})

    def on_phase(run, phase):
        if phase == "load":
            _flip_in_the_middle_of_the_largest_file(suite.output_dir / workspace.RUNS_DIR / run.label)

    record, _ = _run(suite, name, tiny["float32"].tensors, on_phase=on_phase)
    assert not record.ok and record.verified is False
    assert record.error.startswith("verification failed: the load: 1 tensor(s) differ"), record.error


# --- settings: from the config to the library -----------------------------------------------------------------


def test_row_settings_default_to_each_librarys_own_and_are_checked(tmp_path):
    suite = _suite(tmp_path, refs={"runai_streamer": True, "fastsafetensors": {}, "torch_dcp": {"thread_count": 4}})
    assert suite.test("runai_streamer").reference_settings == {"concurrency": 16, "memory_limit": 40_000_000_000,
                                                               "owned": True}
    assert suite.test("fastsafetensors").reference_settings == {"max_threads": 16}
    assert suite.test("torch_dcp").reference_settings == {"thread_count": 4}
    for refs, words in (({"runai_streamer": {"concurency": 2}}, "did you mean 'concurrency'"),
                        ({"torch_dcp": {"thread_count": 0}}, "references.torch_dcp.thread_count: must be at least 1"),
                        ({"runai_streamer": "yes"}, "or an object of concurrency, memory_limit, owned"),
                        ({"safetensors": {"x": 1}}, "references.safetensors: expected true or false")):
        with pytest.raises(UserError, match=words):
            config.from_dict({**minimal_config(), "references": refs})


def test_runai_settings_reach_its_core_and_are_restored(tmp_path, tiny, monkeypatch):
    """Concurrency when the streamer is made, the memory limit when it streams, owned as asked; a memory limit
    of one tensor's bytes makes it reuse its buffers, so owned=False must copy each tensor out to stay right."""
    import runai_model_streamer

    tensors = tiny["float32"].tensors
    largest = max(a.nbytes for a in tensors.values())
    seen = {}
    real = runai_model_streamer.SafetensorsStreamer

    class Spy(real):
        def __enter__(self):
            seen["concurrency"] = os.environ.get("RUNAI_STREAMER_CONCURRENCY")
            return super().__enter__()

        def stream_file(self, path, **kwargs):
            seen["memory_limit"], seen["owned"] = os.environ.get("RUNAI_STREAMER_MEMORY_LIMIT"), kwargs["owned"]
            return super().stream_file(path, **kwargs)

    monkeypatch.setattr(runai_model_streamer, "SafetensorsStreamer", Spy)
    monkeypatch.delenv("RUNAI_STREAMER_CONCURRENCY", raising=False)
    monkeypatch.setenv("RUNAI_STREAMER_MEMORY_LIMIT", "-1")
    suite = _suite(tmp_path, refs={"runai_streamer": {"concurrency": 3, "memory_limit": largest, "owned": False}})
    record, backend = _run(suite, "runai_streamer", tensors)
    assert (backend.concurrency, backend.memory_limit, backend.owned) == (3, largest, False)
    assert record.ok and record.verified, record.error
    assert seen == {"concurrency": "3", "memory_limit": str(largest), "owned": False}
    assert "RUNAI_STREAMER_CONCURRENCY" not in os.environ and os.environ["RUNAI_STREAMER_MEMORY_LIMIT"] == "-1"


def test_the_memory_pre_check_counts_runai_buffers_only_when_it_reuses_them(tmp_path):
    """owned (the default): its buffers are the loaded copy; owned false: they stay besides the copies, up to the
    memory limit (the default 40 GB: the whole model), so a limit of a quarter of the model keeps the bound."""
    model = 2 * 10**9
    need = {}
    for label, settings in (("owned", True), ("unowned", {"owned": False}),
                            ("unowned, limit", {"owned": False, "memory_limit": model // 4})):
        suite = _suite(tmp_path / label, refs={"runai_streamer": settings})
        need[label] = capacity.peak_memory_bytes(suite.test("runai_streamer"), model, suite.max_inflight_bytes)
    assert need["owned"] == int(capacity.FIXED_BYTES + 1.05 * model)
    assert need["unowned"] == need["owned"] + model
    assert need["unowned, limit"] == need["owned"] + model // 4


def test_fastsafetensors_and_dcp_settings_reach_their_libraries(tmp_path, tiny, monkeypatch):
    import fastsafetensors

    tensors = tiny["bfloat16"].tensors
    made = {}
    real = fastsafetensors.SafeTensorsFileLoader

    def spy(*args, **kwargs):
        made.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(fastsafetensors, "SafeTensorsFileLoader", spy)
    suite = _suite(tmp_path, "bfloat16", {"fastsafetensors": {"max_threads": 2}, "torch_dcp": {"thread_count": 3}})
    record, _ = _run(suite, "fastsafetensors", tensors)
    assert record.ok and made["max_threads"] == 2 and made["nogds"] is True
    record, _ = _run(suite, "torch_dcp", tensors)
    assert record.ok and record.verified
    assert record.n_files == 3 + 1  # one file per writer thread, and .metadata


def test_dcp_loads_into_the_tensors_prepared_before_the_clock(tmp_path, tiny):
    tensors = tiny["float32"].tensors
    backend = references.TorchDCPBackend()
    backend.prepare(tensors)
    assert backend._into is None  # the save does not hold the tensors the load fills
    backend.save(tensors, tmp_path)
    backend.before_load(tensors)
    prepared = dict(backend._into)
    assert all(np.all(bits(a) == storage.POISON) for a in prepared.values())  # touched, and not the weights
    loaded = backend.load(tmp_path)
    assert all(loaded[name] is prepared[name] for name in tensors)
    assert_same_bits(tensors, loaded)
    assert backend.verify(tensors, loaded) == []
    assert all(np.all(bits(a) == storage.POISON) for a in prepared.values())  # ready to be filled again


# --- a peer that cannot run here is skipped with its reason, before anything is written ---------------------


@pytest.mark.parametrize("failure", ["missing", "native"])
def test_a_peer_that_cannot_be_imported_is_skipped_with_its_reason(tmp_path, monkeypatch, failure):
    if failure == "missing":
        monkeypatch.setitem(sys.modules, "runai_model_streamer", None)  # import raises ImportError
    else:
        real = importlib.import_module

        def broken(name, *args):
            if name == "runai_model_streamer":
                raise OSError("libstreamer.so: cannot open shared object file: No such file or directory")
            return real(name, *args)

        monkeypatch.setattr(registry.importlib, "import_module", broken)
    out = tmp_path / "out"
    suite = config.from_dict({**minimal_config(), "references": {"runai_streamer": True, "safetensors": True}},
                             output_dir=out)
    assert not out.exists()  # decided before anything is written
    assert [t.name for t in suite.tests] == ["baseline", "fast", "safetensors"]
    (name, reason), = suite.skipped
    expected = "ModuleNotFoundError" if failure == "missing" else "OSError: libstreamer.so"
    assert name == "runai_streamer" and "runai-model-streamer cannot be used here" in reason and expected in reason


# --- TensorStore: load_into "preallocated" ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_flight", ["all", "one_tensor"])
def test_tensorstore_reads_into_preallocated_arrays_bit_exact(tmp_path, tiny, dtype, in_flight):
    tensors = tiny[dtype].tensors
    test = {"name": "into", "chunk_bytes": "64KB", "concurrency_limit": 8, "load_into": "preallocated",
            "in_flight": in_flight}
    suite = _suite(tmp_path, dtype, tests=[test])
    backend = measure.backend_for(suite.test("into"), suite)
    backend.prepare(tensors)
    assert backend._into is None  # the save does not hold the arrays the load fills
    location = tmp_path / "ckpt"
    backend.save(tensors, location)
    backend.before_load(tensors)
    prepared = dict(backend._into)
    assert all(np.all(bits(a) == storage.POISON) for a in prepared.values())
    loaded = backend.load(location)
    assert all(loaded[name] is prepared[name] for name in tensors)  # filled in place: the arrays prepared
    assert_same_bits(tensors, loaded)
    assert backend.verify(tensors, loaded) == []
    assert all(np.all(bits(a) == storage.POISON) for a in prepared.values())  # ready to be filled again


def test_preallocated_warm_and_cold_loads_are_each_verified(tmp_path, tiny):
    """Both loads fill the same arrays, so the verification of the first poisons them for the second: a cold
    load that read nothing could not pass on what the warm one left."""
    test = {"name": "into", "chunk_bytes": "64KB", "concurrency_limit": 8, "load_into": "preallocated",
            "warm_load": True}
    suite = _suite(tmp_path, tests=[test])
    record, _ = _run(suite, "into", tiny["float32"].tensors)
    assert record.ok and record.verified and record.warm_load_s > 0 and record.load_cache == "cold"

    def emptied(run, phase):
        if phase == "load":  # after the warm load: the chunks of one tensor disappear, it reads the fill value
            folder = suite.output_dir / workspace.RUNS_DIR / run.label / "model.embed_tokens.weight"
            for chunk in (p for p in folder.iterdir() if not p.name.startswith(".")):
                chunk.unlink()

    record, _ = _run(suite, "into", tiny["float32"].tensors, on_phase=emptied)
    assert not record.ok and "verification failed: the load" in record.error
    assert "model.embed_tokens.weight" in record.error


def test_load_into_sweeps_and_what_it_cannot_do(tmp_path):
    data = minimal_config(processes=[1, 2], baseline="t_into=new")
    data["test_configurations"] = [{"name": "t", "chunk_bytes": "1MB", "concurrency_limit": 8,
                                    "load_into": ["new", "preallocated"]}]
    suite = config.from_dict(data)
    assert [t.name for t in suite.tests] == ["t_into=new_procs=1", "t_into=new_procs=2", "t_into=preallocated_procs=1"]
    assert suite.test("t_into=preallocated_procs=1").load_into == "preallocated"
    (name, reason), = suite.skipped
    assert name == "t_into=preallocated_procs=2" and "worker processes read their rows into new arrays" in reason
    data = minimal_config(values="float16")
    data["test_configurations"][0].update(load_into="preallocated", timed_conversion=True)
    with pytest.raises(UserError, match="load_into \"preallocated\" reads into arrays of the stored dtype"):
        config.from_dict(data)


# --- end to end: the peers, their settings, a skipped peer and load_into in results.json ----------------------


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """One real run of the tiny preset: load_into swept, Run:ai and DCP with settings of their own, and
    fastsafetensors made unimportable."""
    root = tmp_path_factory.mktemp("peers")
    suite = {"model": "tiny", "dtype": "bfloat16", "baseline": "ts_into=new",
             "references": {"runai_streamer": {"concurrency": 4, "owned": False}, "fastsafetensors": True,
                            "torch_dcp": {"thread_count": 2}},
             "testing": {"num_runs": 2, "seed": 3, "cache_eviction": "fadvise"},
             "test_configurations": [{"name": "ts", "chunk_bytes": "256KB", "concurrency_limit": 8,
                                      "load_into": ["new", "preallocated"]}]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "fastsafetensors", None)
        return run_config(root, suite, "peers.json")


def test_e2e_measures_every_row_and_records_its_settings(e2e):
    status, document, _ = e2e
    assert status == 0 and document["complete"] is True
    tests = {t["name"]: t for t in document["tests"]}
    assert list(tests) == ["ts_into=new", "ts_into=preallocated", "runai_streamer", "torch_dcp"]
    for test in tests.values():
        assert [r["verified"] for r in test["runs"]] == [True, True], test["name"]
        assert all(r["load_cache"] == "cold" for r in test["runs"]), test["name"]
    assert tests["ts_into=preallocated"]["settings"]["load_into"] == "preallocated"
    assert tests["ts_into=new"]["settings"]["load_into"] == "new"
    assert tests["runai_streamer"]["settings"]["reference_settings"] == {"concurrency": 4, "owned": False,
                                                                         "memory_limit": 40_000_000_000}
    assert tests["torch_dcp"]["settings"]["reference_settings"] == {"thread_count": 2}
    assert tests["runai_streamer"]["kind"] == tests["torch_dcp"]["kind"] == "reference"


def test_e2e_skipped_peer_is_in_results_and_warnings(e2e):
    _, document, _ = e2e
    (skipped,) = document["skipped_tests"]
    assert skipped["name"] == "fastsafetensors"
    assert "fastsafetensors cannot be used here (ModuleNotFoundError" in skipped["reason"]
    assert any("fastsafetensors" in w and "skipped" in w and "ModuleNotFoundError" in w for w in document["warnings"])
