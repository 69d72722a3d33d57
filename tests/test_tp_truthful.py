"""Tensor-parallel loads told truthfully: the clock, the eviction, the read amplification, the tp_aligned refusal.

The clock: `load_s` is the readers' own span, from the common start (the barrier's release) to the slowest reader's
end, and holds nothing else: not the jobs sent, the readers' imports, the barrier, the gathering of replies, nor the
parent's preparation, eviction and verification. Real spawned readers (a pool whose workers run an instrumented
main, picklable by name) on real files: each reader's load is replaced by a known sleep (then its slices copied
from the source, so verification passes), and known, different sleeps are put outside it, in the readers and in
the suite's process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from ckptbench.bench import measure, workspace
from ckptbench.bench.targets import LocalTarget
from ckptbench.core import records
from ckptbench.core.errors import UserError
from ckptbench.documents import results
from ckptbench.figures.tensor_parallel import amplification_label
from ckptbench.parallel.backend import backend_of
from ckptbench.parallel.shared import WeightSource
from ckptbench.parallel.spawned import Pool
from ckptbench.spec import config, tensor_parallel

LOAD_SLEEP_S = 0.2  # inside each reader's timed load
BEFORE_BARRIER_SLEEP_S = 0.6  # a reader's imports (writers.ready): before the common start
AFTER_LOAD_SLEEP_S = 0.4  # after a reader's end, before its reply (its bytes, writers._read_figures)
READER_VERIFY_SLEEP_S = 0.5  # a reader's verification, after the clock
PARENT_SLEEP_S = 0.5  # the suite process's preparation, eviction and verification


def _sleeping_before(function: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return function(*args, **kwargs)

    return slow


class SleepingReaders(Pool):
    """Spawned tp readers whose load is a known sleep, with other known sleeps around it."""

    @staticmethod
    def worker_main(launch: Any, source: Any) -> None:
        from ckptbench.parallel import writers
        from ckptbench.parallel.slices import part

        tensors = source.open()

        def load(job: writers.Job) -> dict[str, np.ndarray]:
            time.sleep(LOAD_SLEEP_S)
            return {name: np.array(part(tensors[name], box)) for name, box in job.boxes.items()}

        real_ready = writers.ready

        def ready(job: writers.Job | None) -> None:
            real_ready(job)
            if job is not None and job.op == "load":
                time.sleep(BEFORE_BARRIER_SLEEP_S)

        writers._load_slices = load
        writers.ready = ready
        writers._read_figures = _sleeping_before(writers._read_figures, AFTER_LOAD_SLEEP_S)
        writers.mismatches = _sleeping_before(writers.mismatches, READER_VERIFY_SLEEP_S)
        Pool.worker_main(launch, source)


@pytest.mark.slow  # tp readers: many processes
def test_load_s_holds_the_readers_load_and_nothing_around_it(tmp_path: Path, tiny_weights) -> None:
    raw = {"model": "tiny", "testing": {"num_runs": 1}, "output_dir": str(tmp_path / "out"),
           "test_configurations": [{"name": "t", "chunk_bytes": "64KB", "concurrency_limit": 8, "tp": 2}]}
    suite = config.from_dict(raw)
    test = suite.tests[0]
    workspace.prepare_output_dir(suite.output_dir)
    pool = SleepingReaders(test.processes, WeightSource(suite.model, suite.weights, suite.dtype, suite.values))
    target = LocalTarget(suite.output_dir)
    backend = backend_of(test, suite, target, pool)
    for name in ("prepare", "evict", "verify"):  # the suite process's own steps around the load
        setattr(backend, name, _sleeping_before(getattr(backend, name), PARENT_SLEEP_S))
    try:
        record = measure.run_once(records.PlannedRun("t", 0, 0), backend,
                                  measure.Bench(suite, tiny_weights.tensors, target))
    finally:
        pool.stop()
    assert record.error is None and record.verified is True, record.error
    assert record.eviction == "fadvise" and record.load_cache == "cold"  # the default under tp
    assert record.load_clock == "readers" and len(record.process_load_s) == 2
    # Each reader's own time is its sleep; load_s spans them, with a wide margin for a busy machine
    assert all(LOAD_SLEEP_S <= s < LOAD_SLEEP_S + 0.1 for s in record.process_load_s), record.process_load_s
    assert LOAD_SLEEP_S <= record.load_s < LOAD_SLEEP_S + 0.1, record.load_s
    assert max(record.process_load_s) <= record.load_s <= max(record.process_load_s) + 0.05


def test_the_span_of_readers_is_per_host() -> None:
    """One host's readers share its monotonic clock: the latest end less the earliest start. Hosts share none:
    the slowest host's span (with one reader per host, its own time)."""
    one_host = [{"host": "a", "started_s": 10.0, "ended_s": 10.5}, {"host": "a", "started_s": 10.01, "ended_s": 10.7}]
    assert measure.readers_span_s(one_host) == 10.7 - 10.0
    two_hosts = [{"host": "a", "started_s": 10.0, "ended_s": 10.5}, {"host": "b", "started_s": 5000.0,
                                                                     "ended_s": 5000.8}]
    assert measure.readers_span_s(two_hosts) == 5000.8 - 5000.0
    assert measure.readers_span_s([{"host": "a", "seconds": 1.0}]) is None
    assert measure.readers_span_s(None) is None


# --- eviction under tp ------------------------------------------------------------------------------------

def test_tp_loads_evict_with_fadvise_unless_a_method_is_named() -> None:
    raw = {"model": "tiny", "test_configurations": [{"name": "a", "chunk_bytes": "64KB", "concurrency_limit": 8}]}
    suite = config.from_dict(raw, tp=[1, 2])
    assert {t.tp: suite.eviction_for(t) for t in suite.tests} == {1: "auto", 2: "fadvise"}
    told = config.from_dict({**raw, "testing": {"cache_eviction": "drop_caches"}}, tp=2)
    assert [told.eviction_for(t) for t in told.tests] == ["drop_caches"]


# --- read amplification: below 1 is unaccounted bytes; O_DIRECT rows say so --------------------------------

WEIGHTS = {"kind": "preset", "name": "tiny", "dtype": "float32", "n_tensors": 3, "n_params": 1_000_000,
           "size_bytes": 4_000_000}
ENVIRONMENT = {"timestamp": "2025-01-01T00:00:00+00:00", "cpu_model": "test cpu", "cpu_count": 2,
               "ram_bytes": 2**33, "filesystem": {"mount": "/", "type": "ext4", "device": "/dev/x"}}


def _document(read_bytes: dict[str, list[int]]) -> dict:
    """A results document of tp 2 rows whose two readers each asked for 1 MB of slices and caused read_bytes."""
    suite = config.SuiteConfig(
        tests=(config.TestSpec(name="zarr", concurrency_limit=8, chunk_bytes=2**16, tp=2, processes=2),
               config.TestSpec(name="safetensors", backend="safetensors", tp=2, processes=2),
               config.TestSpec(name="runai_streamer", backend="runai_streamer", tp=2, processes=2)),
        baseline="zarr", output_dir=Path("/nonexistent"))
    made = [records.RunRecord(test=name, round=i, position=0, warmup=False, save_s=1.0, load_s=1.0 + i / 10,
                              size_bytes=4_000_000, n_files=10, eviction="fadvise", load_cache="cold", verified=True,
                              process_load_s=[0.9, 1.0], process_load_read_bytes=read,
                              process_load_rchar_bytes=[1_000_000, 1_000_000],
                              process_load_slice_bytes=[1_000_000, 1_000_000], load_clock="readers")
            for name, read in read_bytes.items() for i in range(3)]
    return results.build(suite, WEIGHTS, made, ENVIRONMENT, seed=1, complete=True)


def test_a_device_read_sum_below_the_slices_is_flagged_as_unaccounted_bytes(tmp_path: Path) -> None:
    document = _document({"zarr": [1_000_000, 1_100_000], "safetensors": [700_000, 700_000],
                          "runai_streamer": [1_000_000, 1_000_000]})
    tests = {t["name"]: t for t in document["tests"]}
    assert tests["zarr"]["tensor_parallel"]["unaccounted_bytes"] is None
    assert tests["safetensors"]["tensor_parallel"]["read_amplification"] == pytest.approx(0.7)
    assert tests["safetensors"]["tensor_parallel"]["unaccounted_bytes"] == 600_000
    flagged = [w for w in tests["safetensors"]["warnings"] if "came from no device read" in w]
    assert flagged and "x0.70 of their slices: 0.6 MB" in flagged[0], tests["safetensors"]["warnings"]
    assert not any("came from no device read" in w for w in tests["zarr"]["warnings"])
    assert amplification_label(tests["safetensors"]) == "x0.70 (bytes unaccounted)"
    assert amplification_label(tests["zarr"]) == "x1.05"
    # O_DIRECT readers share no page cache: their row says so wherever its amplification is shown
    assert tests["runai_streamer"]["tensor_parallel"]["reads"] == "O_DIRECT"
    assert tests["zarr"]["tensor_parallel"]["reads"] == tests["safetensors"]["tensor_parallel"]["reads"] == "buffered"
    assert amplification_label(tests["runai_streamer"]) == "x1.00 O_DIRECT"
    again = results.read(results.write(document, tmp_path))  # the schema holds the new fields
    assert [t["tensor_parallel"] for t in again.tests] == [t["tensor_parallel"] for t in document["tests"]]


# --- tp_aligned needs every split dimension to divide ------------------------------------------------------

def test_tp_aligned_with_a_split_dimension_tp_does_not_divide_is_refused(tmp_path: Path, write_config,
                                                                          run_cli) -> None:
    """smollm2-360m: 15 heads and 5 kv heads take tp 5, its vocabulary of 49152 does not: row chunks may split it
    unevenly, tp_aligned chunks cannot."""
    path = write_config({"testing": {"num_runs": 1}, "test_configurations": [
        {"name": "aligned", "chunk_bytes": "1MB", "concurrency_limit": 8, "chunk_strategy": "tp_aligned"}]})
    out = tmp_path / "out"
    status, _, err = run_cli("run", "--config", path, "--model", "smollm2-360m", "--tp", "5", "--output-dir", out)
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith("error: --tp 5: chunk_strategy \"tp_aligned\"")
    assert "tensor model.embed_tokens.weight has 49152 along its split dimension 0" in err
    assert "use --tp 1, or a chunk_strategy other than \"tp_aligned\"" in err
    assert not out.exists()
    raw = {"model": "smollm2-360m", "test_configurations": [{"name": "rows", "chunk_bytes": "1MB",
                                                             "concurrency_limit": 8}]}
    assert [t.tp for t in config.from_dict(raw, tp=5).tests] == [5]  # an uneven split without tp_aligned runs
    with pytest.raises(UserError, match="model.embed_tokens.weight has 49152 along its split dimension 0"):
        config.from_dict({**raw, "test_configurations": [{**raw["test_configurations"][0], "tp": 5,
                                                          "chunk_strategy": "tp_aligned"}]})


def test_the_refusal_names_the_tp_values_that_divide_every_split_dimension() -> None:
    shapes = {"m.embed_tokens.weight": (96, 8), "m.layers.0.mlp.down_proj.weight": (8, 24),
              "m.layers.0.self_attn.q_proj.weight": (12, 8), "m.norm.weight": (7,)}
    why = tensor_parallel.refusal(5, None, shapes)
    assert why is not None and "tensor m.embed_tokens.weight has 96 along its split dimension 0" in why
    assert why.endswith("use --tp 2, 3, 4, 6 or 12")
    assert tensor_parallel.refusal(6, None, shapes) is None
    # a preset whose every split dimension divides: tp_aligned is accepted
    assert tensor_parallel.refusal(4, "tinyllama-1.1b", aligned=True) is None


# --- every library a reader's load needs is imported before the common start ---------------------------------

FIRST_LOAD_KINDS = ["safetensors", "torch_save", "torch_dcp", "runai_streamer"]
_FIRST_LOADS = """
import os, sys, traceback
import torch.distributed  # a reader has joined its gloo world
from ckptbench.bench.references import BACKENDS
from ckptbench.bench.targets import RunLocation
from ckptbench.parallel import spawned, writers
from ckptbench.spec import tensor_parallel
boxes = tensor_parallel.rank_boxes(eval(sys.argv[1]), 2)[1]
for kind, folder in zip(sys.argv[2::2], sys.argv[3::2]):
    sys.stdout.flush()
    child = os.fork()  # each kind in a process of its own, holding what a fresh one holds after the imports above
    if child == 0:
        try:
            job = writers.Job("load", RunLocation.local(folder), boxes=boxes, reference=(kind, {}), reader=(1, 2))
            writers.ready(job)  # before the barrier
            before = set(sys.modules)
            writers._load_slices(job)  # the timed load
            print(kind, sorted(name for name in set(sys.modules) - before if not name.startswith("ckptbench")))
            sys.stdout.flush()
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        os._exit(0)
    if os.waitpid(child, 0)[1] != 0:
        print(kind, "failed", flush=True)
"""


@pytest.fixture(scope="module")
def first_loads(tmp_path_factory, tiny_weights) -> tuple[dict[str, str], str]:
    """Each runnable kind's checkpoint saved here, then loaded by a reader's first load in a process of its own
    (forked after a reader's imports, one Python start for them all): (kind -> the modules that load imported,
    stderr)."""
    import subprocess
    import sys

    from ckptbench.bench.references import BACKENDS
    from ckptbench.bench.targets import RunLocation
    from ckptbench.spec.references import REFERENCES, unavailable

    argv = []
    for kind in FIRST_LOAD_KINDS:
        if REFERENCES[kind].modules and unavailable(kind):
            continue
        folder = tmp_path_factory.mktemp(kind)
        backend = BACKENDS[kind]()
        backend.prepare(tiny_weights.tensors)
        backend.save(tiny_weights.tensors, RunLocation.local(folder))
        argv += [kind, str(folder)]
    shapes = {n: a.shape for n, a in tiny_weights.tensors.items()}
    done = subprocess.run([sys.executable, "-c", _FIRST_LOADS, repr(shapes), *argv],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    said = [line.split(" ", 1) for line in done.stdout.splitlines()]
    return {words[0]: words[1] for words in said if len(words) == 2 and words[0] in FIRST_LOAD_KINDS}, done.stderr


@pytest.mark.parametrize("kind", FIRST_LOAD_KINDS)
def test_a_readers_first_load_imports_nothing(first_loads, kind: str) -> None:
    """In a process like a spawned reader's: after `ready`, the reference row's first slice load imports no
    module, so no first import lands between the barrier and the reader's end."""
    from ckptbench.spec.references import REFERENCES, unavailable

    if REFERENCES[kind].modules and unavailable(kind):
        pytest.skip(f"{kind} cannot run here")
    imported, stderr = first_loads
    assert imported.get(kind) == "[]", (imported.get(kind), stderr)
