"""The peer loaders (Run:ai streamer, fastsafetensors, torch DCP) and TensorStore's load_into: real files of the
tiny preset in temporary folders, cold loads, bit-for-bit checks, a row skipped with its reason when its library
cannot be imported, row settings reaching the library, and one end-to-end run whose results.json records it all."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_bits, bits, minimal_config, run_config

from ckptbench.bench import cache, capacity, measure, storage, workspace
from ckptbench.bench.references import BACKENDS
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


def _suite(tmp_path: Path, dtype: str = "float32", refs: dict | None = None, tests: list | None = None,
           load_into: str = "new"):
    data = {"model": "tiny", "dtype": dtype, "references": refs or {},
            "testing": {"num_runs": 1, "cache_eviction": "fadvise", "load_into": load_into},
            "test_configurations": tests or [{"name": "raw", "chunk_bytes": "64KB", "concurrency_limit": 4}]}
    made = config.from_dict(data, base_dir=tmp_path, output_dir=tmp_path / "out")
    workspace.prepare_output_dir(made.output_dir)
    return made


def _run(suite, name: str, tensors, **kwargs):
    backend = measure.backend_for(suite.test(name), suite)
    return measure.run_once(records.PlannedRun(name, 0, 0), backend, measure.Bench(suite, tensors), **kwargs), backend


# --- each peer: save fsync'd, cold load, every byte back -----------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PEERS)
def test_peer_saves_durably_loads_cold_and_gives_every_byte_back(tmp_path, tiny, name, dtype, monkeypatch):
    tensors = tiny[dtype].tensors
    synced: list[Path] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(Path(os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    backend = BACKENDS[name]()
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
    assert suite.test("runai_streamer").reference_settings == {
        "concurrency": None, "chunk_bytesize": 2 * 2**20, "fs_strategy": "auto", "fs_queue_depth": None,
        "memory_limit": 40_000_000_000, "owned": True}
    assert suite.test("fastsafetensors").reference_settings == {"max_threads": 16, "bbuf_size_kb": 16 * 1024}
    assert suite.test("torch_dcp").reference_settings == {"thread_count": 4}
    for refs, words in (({"runai_streamer": {"concurency": 2}}, "did you mean 'concurrency'"),
                        ({"torch_dcp": {"thread_count": 0}}, "references.torch_dcp.thread_count: must be at least 1"),
                        ({"runai_streamer": "yes"}, "or an object of concurrency, chunk_bytesize, fs_strategy"),
                        ({"safetensors": {"x": 1}}, "references.safetensors: unknown key 'x'; valid: save_mode"),
                        ({"runai_streamer": {"fs_strategy": "uring"}},
                         "references.runai_streamer.fs_strategy: \"uring\" is not allowed; use one of \"auto\""),
                        ({"runai_streamer": [{"chunk_bytesize": 100}]},
                         "references.runai_streamer.0.chunk_bytesize: must be at least 4096, got 100"),
                        ({"runai_streamer": {"fs_queue_depth": 0}},
                         "references.runai_streamer.fs_queue_depth: must be at least 1"),
                        ({"fastsafetensors": {"bbuf_size_kb": 1}}, "references.fastsafetensors.bbuf_size_kb: must be"),
                        ({"runai_streamer": []}, "references.runai_streamer: is empty"),
                        ({"torch_dcp": [{"thread_count": 2}, {"thread_count": 2}]},
                         "duplicate test name 'torch_dcp_threads=2'")):
        with pytest.raises(UserError, match=words):
            config.from_dict({**minimal_config(), "references": refs})


def test_a_bad_knob_or_destination_exits_2_with_one_line(tmp_path, run_cli):
    data = {**minimal_config(), "output_dir": str(tmp_path / "out"),
            "references": {"runai_streamer": [{"concurrency": 4}, {"fs_queue_depth": -3}]}}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    status, _, stderr = run_cli("--config", path)
    assert status == 2 and len(stderr.strip().splitlines()) == 1
    assert "references.runai_streamer.1.fs_queue_depth: must be at least 1, got -3" in stderr
    data["references"] = {"runai_streamer": True}
    path.write_text(json.dumps({**data, "testing": {"load_into": "somewhere"}}))
    status, _, stderr = run_cli("--config", path)
    assert status == 2 and len(stderr.strip().splitlines()) == 1 and "testing.load_into" in stderr
    assert not (tmp_path / "out").exists()


def test_a_peer_listed_with_several_settings_is_one_row_each_named_by_them(tmp_path):
    suite = _suite(tmp_path, refs={"runai_streamer": [{}, {"concurrency": 32, "chunk_bytesize": 8 * 2**20},
                                                      {"fs_strategy": "sync_buffered", "fs_queue_depth": 8}],
                                   "fastsafetensors": [{"max_threads": 4, "bbuf_size_kb": 4096}]})
    rows = {t.name: t for t in suite.tests if t.is_reference}
    assert list(rows) == ["runai_streamer", "runai_streamer_conc=32_chunk=8MB", "runai_streamer_fs=sync_buffered_qd=8",
                          "fastsafetensors_threads=4_bbuf=4096"]
    assert {t.backend for t in rows.values()} == {"runai_streamer", "fastsafetensors"}
    assert rows["runai_streamer_conc=32_chunk=8MB"].reference_settings["chunk_bytesize"] == 8 * 2**20
    assert rows["runai_streamer_fs=sync_buffered_qd=8"].reference_settings["concurrency"] is None  # the core's
    backend = measure.backend_for(rows["runai_streamer_fs=sync_buffered_qd=8"], suite)
    assert backend.bypasses_page_cache is False  # buffered reads: the page cache is not bypassed
    assert measure.backend_for(rows["runai_streamer"], suite).bypasses_page_cache is True


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
    monkeypatch.setenv("RUNAI_STREAMER_FS_QUEUE_DEPTH", "77")  # a user's own: unset for a row that leaves it
    suite = _suite(tmp_path, refs={"runai_streamer": {"concurrency": 3, "memory_limit": largest, "owned": False}})
    record, backend = _run(suite, "runai_streamer", tensors)
    assert (backend.concurrency, backend.memory_limit, backend.owned) == (3, largest, False)
    assert record.ok and record.verified, record.error
    assert seen == {"concurrency": "3", "memory_limit": str(largest), "owned": False}
    assert "RUNAI_STREAMER_CONCURRENCY" not in os.environ and os.environ["RUNAI_STREAMER_MEMORY_LIMIT"] == "-1"
    assert os.environ["RUNAI_STREAMER_FS_QUEUE_DEPTH"] == "77"


def test_runai_file_system_knobs_reach_its_core(tmp_path, tiny, monkeypatch):
    """Chunk byte size, strategy and queue depth in the environment when a streamer is made (when its core reads
    them); a setting left to the library is unset, a user's own value restored after."""
    import runai_model_streamer

    tensors = tiny["float32"].tensors
    seen = {}
    real = runai_model_streamer.SafetensorsStreamer

    class Spy(real):
        def __enter__(self):
            seen.update({name: os.environ.get(name) for name in (
                "RUNAI_STREAMER_CONCURRENCY", "RUNAI_STREAMER_CHUNK_BYTESIZE", "RUNAI_STREAMER_FS_STRATEGY",
                "RUNAI_STREAMER_FS_QUEUE_DEPTH")})
            return super().__enter__()

    monkeypatch.setattr(runai_model_streamer, "SafetensorsStreamer", Spy)
    monkeypatch.setenv("RUNAI_STREAMER_FS_STRATEGY", "libaio_direct")  # a user's own: unset under "auto"
    monkeypatch.setenv("RUNAI_STREAMER_CONCURRENCY", "5")  # unset where the row leaves it to the core
    refs = {"runai_streamer": [{"chunk_bytesize": 4 * 2**20, "fs_strategy": "sync_buffered", "fs_queue_depth": 5},
                               {"concurrency": 2}]}
    suite = _suite(tmp_path, refs=refs)
    record, _ = _run(suite, "runai_streamer_chunk=4MB_fs=sync_buffered_qd=5", tensors)
    assert record.ok and record.verified, record.error
    assert seen == {"RUNAI_STREAMER_CONCURRENCY": None, "RUNAI_STREAMER_CHUNK_BYTESIZE": str(4 * 2**20),
                    "RUNAI_STREAMER_FS_STRATEGY": "sync_buffered", "RUNAI_STREAMER_FS_QUEUE_DEPTH": "5"}
    assert record.bypass_resident_bytes is None  # buffered reads: no claim to bypass the page cache to check
    record, _ = _run(suite, "runai_streamer_conc=2", tensors)
    assert record.ok and record.verified, record.error
    assert seen == {"RUNAI_STREAMER_CONCURRENCY": "2", "RUNAI_STREAMER_CHUNK_BYTESIZE": str(2 * 2**20),
                    "RUNAI_STREAMER_FS_STRATEGY": None, "RUNAI_STREAMER_FS_QUEUE_DEPTH": None}
    assert os.environ["RUNAI_STREAMER_FS_STRATEGY"] == "libaio_direct"  # restored
    assert os.environ["RUNAI_STREAMER_CONCURRENCY"] == "5"


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
    suite = _suite(tmp_path, "bfloat16", {"fastsafetensors": {"max_threads": 2, "bbuf_size_kb": 256},
                                          "torch_dcp": {"thread_count": 3}})
    record, _ = _run(suite, "fastsafetensors", tensors)
    assert record.ok and made["max_threads"] == 2 and made["nogds"] is True and made["bbuf_size_kb"] == 256
    record, _ = _run(suite, "torch_dcp", tensors)
    assert record.ok and record.verified
    assert record.n_files == 3 + 1  # one file per writer thread, and .metadata


ROWS = ["safetensors", "torch_save", *PEERS]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ROWS)
def test_every_row_fills_the_arrays_prepared_before_the_clock(tmp_path, tiny, name, dtype):
    """load_into "preallocated": what the load gives is the very arrays before_load allocated and touched (after
    the save, before the clock), filled with the weights; a second load must fill them again."""
    tensors = tiny[dtype].tensors
    suite = _suite(tmp_path, dtype, {name: True}, load_into="preallocated")
    assert suite.test(name).load_into == "preallocated" and suite.test(name).load_into_note is None
    backend = measure.backend_for(suite.test(name), suite)
    backend.prepare(tensors)
    assert backend._into is None  # the save does not hold the arrays the load fills
    backend.save(tensors, tmp_path)
    backend.before_load(tensors)
    prepared = dict(backend._into)
    assert all(np.all(bits(a) == storage.POISON) for a in prepared.values())  # touched, and not the weights
    loaded = backend.load(tmp_path)
    assert all(loaded[name] is prepared[name] for name in tensors)
    assert_same_bits(tensors, loaded)
    assert backend.verify(tensors, loaded) == []
    assert all(np.all(bits(a) == storage.POISON) for a in prepared.values())  # ready to be filled again


@pytest.mark.parametrize("name", ROWS)
def test_under_new_every_row_allocates_what_it_loads_inside_the_load(tmp_path, tiny, name):
    tensors = tiny["bfloat16"].tensors
    suite = _suite(tmp_path, "bfloat16", {name: True})
    assert suite.load_into == "new" and suite.test(name).load_into == "new"
    backend = measure.backend_for(suite.test(name), suite)
    backend.prepare(tensors)
    backend.save(tensors, tmp_path)
    backend.before_load(tensors)
    assert backend._into is None  # nothing allocated before the clock
    loaded = backend.load(tmp_path)
    assert_same_bits(tensors, loaded)
    assert not any(np.shares_memory(loaded[n], tensors[n]) for n in tensors)


def test_dcp_under_new_loads_into_a_state_dict_the_load_allocates(tmp_path, tiny, monkeypatch):
    """DCP under "new": the state dict dcp.load fills is made inside load() (from the checkpoint's metadata),
    never arrays allocated before the clock; under "preallocated" it is those arrays, shared, not copies."""
    import torch.distributed.checkpoint as dcp

    tensors = tiny["bfloat16"].tensors
    given = []
    real = dcp.load
    monkeypatch.setattr(dcp, "load", lambda state, **kwargs: (given.append(dict(state)), real(state, **kwargs))[1])
    for load_into in ("new", "preallocated"):
        suite = _suite(tmp_path / load_into, "bfloat16", {"torch_dcp": True}, load_into=load_into)
        backend = measure.backend_for(suite.test("torch_dcp"), suite)
        backend.save(tensors, tmp_path / load_into)
        backend.before_load(tensors)
        loaded = backend.load(tmp_path / load_into)
        assert_same_bits(tensors, loaded)
        state = given.pop()
        assert set(state) == set(tensors)
        if load_into == "new":
            assert backend._into is None
        else:
            pointers = {n: a.__array_interface__["data"][0] for n, a in backend._into.items()}
            assert all(state[n].data_ptr() == pointers[n] for n in tensors)


def test_each_row_records_its_destination_and_the_rows_that_cannot(tmp_path):
    """The suite's load_into reaches every row that can load so; the ones that cannot say why (results.json
    records both); a test's own load_into still wins, and says so."""
    refs = {"safetensors": True, "torch_save": True, "runai_streamer": [{}, {"concurrency": 4}],
            "torch_dcp": True, "device_ceiling": True}
    tests = [{"name": "raw", "chunk_bytes": "64KB", "concurrency_limit": 4},
             {"name": "own", "chunk_bytes": "64KB", "concurrency_limit": 4, "load_into": "new"}]
    suite = _suite(tmp_path / "p", refs=refs, tests=tests, load_into="preallocated")
    into = {t.name: (t.load_into, t.load_into_note) for t in suite.tests}
    assert {n for n, (where, note) in into.items() if where == "preallocated" and note is None} == {
        "raw", "safetensors", "torch_save", "runai_streamer", "runai_streamer_conc=4", "torch_dcp", "device_ceiling"}
    assert into["own"] == ("new", "the test's own load_into")
    suite = _suite(tmp_path / "n", refs=refs, tests=tests[:1])
    assert all(t.load_into == "new" and t.load_into_note is None for t in suite.tests if t.name != "device_ceiling")
    where, note = suite.test("device_ceiling").load_into, suite.test("device_ceiling").load_into_note
    assert where == "preallocated" and "measures the device" in note
    data = {**minimal_config(tp=2), "references": {"torch_save": True}, "testing": {"load_into": "preallocated"}}
    suite = config.from_dict(data)
    row = suite.test("torch_save")
    assert (row.load_into, row.tp) == ("new", 2) and "tp readers" in row.load_into_note
    data = {**minimal_config(values="float16", processes=[1, 2]), "testing": {"load_into": "preallocated"}}
    data["test_configurations"][0]["timed_conversion"] = True
    rows = {t.name: t for t in config.from_dict(data).tests}
    assert rows["baseline_procs=1"].load_into == "new" and "timed_conversion" in rows["baseline_procs=1"].load_into_note
    assert rows["fast_procs=1"].load_into == "preallocated" and rows["fast_procs=1"].load_into_note is None
    assert rows["fast_procs=2"].load_into == "new" and "worker processes" in rows["fast_procs=2"].load_into_note
    suite = config.from_dict(minimal_config(), load_into="preallocated")  # --load-into
    assert suite.load_into == "preallocated" and suite.tests[0].load_into == "preallocated"


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
             "references": {"runai_streamer": [{"concurrency": 4, "owned": False},
                                               {"fs_strategy": "sync_buffered", "chunk_bytesize": 2**20}],
                            "fastsafetensors": True, "torch_dcp": {"thread_count": 2}, "torch_save": True},
             "testing": {"num_runs": 2, "seed": 3, "cache_eviction": "fadvise", "load_into": "preallocated"},
             "test_configurations": [{"name": "ts", "chunk_bytes": "256KB", "concurrency_limit": 8,
                                      "load_into": ["new", "preallocated"]}]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "fastsafetensors", None)
        return run_config(root, suite, "peers.json")


def test_e2e_measures_every_row_and_records_its_settings(e2e):
    status, document, _ = e2e
    assert status == 0 and document["complete"] is True
    tests = {t["name"]: t for t in document["tests"]}
    assert list(tests) == ["ts_into=new", "ts_into=preallocated", "torch_save", "runai_streamer_conc=4_owned=false",
                           "runai_streamer_chunk=1MB_fs=sync_buffered", "torch_dcp"]
    for test in tests.values():
        assert [r["verified"] for r in test["runs"]] == [True, True], test["name"]
        assert all(r["load_cache"] == "cold" for r in test["runs"]), test["name"]
    assert document["config"]["load_into"] == "preallocated"
    destinations = {name: test["settings"]["load_into"] for name, test in tests.items()}
    assert destinations == {**{name: "preallocated" for name in tests}, "ts_into=new": "new"}
    assert tests["ts_into=new"]["settings"]["load_into_note"] == "the test's own load_into"
    assert all(t["settings"]["load_into_note"] is None for n, t in tests.items() if n != "ts_into=new")
    assert any(w.startswith("ts_into=new loads into new arrays, not the suite's preallocated") for w in document["warnings"])
    assert any(a["text"].startswith("destination: every row loads into preallocated arrays but ts_into=new")
               for a in document["alerts"])
    from ckptbench.reports.results import headline
    assert "loads cold (fadvise) into preallocated arrays (every row but ts_into=new)" in headline(document)
    assert tests["runai_streamer_conc=4_owned=false"]["settings"]["reference_settings"] == {
        "concurrency": 4, "chunk_bytesize": 2 * 2**20, "fs_strategy": "auto", "fs_queue_depth": None,
        "owned": False, "memory_limit": 40_000_000_000}
    assert tests["runai_streamer_chunk=1MB_fs=sync_buffered"]["settings"]["reference_settings"]["fs_strategy"] == (
        "sync_buffered")
    assert tests["torch_dcp"]["settings"]["reference_settings"] == {"thread_count": 2}
    assert {tests[n]["kind"] for n in tests if not n.startswith("ts")} == {"reference"}
    assert {tests[n]["settings"]["backend"] for n in tests if n.startswith("runai")} == {"runai_streamer"}


def test_e2e_skipped_peer_is_in_results_and_warnings(e2e):
    _, document, _ = e2e
    (skipped,) = document["skipped_tests"]
    assert skipped["name"] == "fastsafetensors"
    assert "fastsafetensors cannot be used here (ModuleNotFoundError" in skipped["reason"]
    assert any("fastsafetensors" in w and "skipped" in w and "ModuleNotFoundError" in w for w in document["warnings"])


def test_a_journal_from_before_destinations_resumes_unless_dcp_loaded_elsewhere(tmp_path):
    """A suite interrupted before every row's destination was recorded: its rows loaded into new arrays (the
    ceiling into its buffer, as today), so it resumes; but its DCP row loaded into preallocated tensors, which
    today's DCP under "new" does not, so a suite with it is refused rather than mixing the two."""
    from ckptbench.documents import journal

    def as_written_before(current):
        old = json.loads(json.dumps(current))
        old["config"].pop("load_into")
        for test in old["config"]["tests"]:
            test.pop("load_into_note")
            test["load_into"] = "new"  # what every row said then
        return old

    suite = _suite(tmp_path / "a", refs={"torch_save": True, "runai_streamer": True, "device_ceiling": True})
    current = journal.fingerprint(suite.to_json(), {"size_bytes": 1})
    assert journal.differences(as_written_before(current), current) == []
    suite = _suite(tmp_path / "b", refs={"torch_dcp": True})
    current = journal.fingerprint(suite.to_json(), {"size_bytes": 1})
    (difference,) = journal.differences(as_written_before(current), current)
    assert difference.startswith("config.tests:")
