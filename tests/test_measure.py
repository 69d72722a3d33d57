"""measure: the interleaved plan, and real save/evict/load/verify runs on tiny weights."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import pytest
from conftest import minimal_config

from ckptbench.bench import cache, measure, workspace
from ckptbench.core import records
from ckptbench.spec import chunking, config

NAMES = ["baseline", "concurrency_128", "chunks_1mb", "compression_gzip", "concurrency_chunks", "t5x_full"]


# --- plan ----------------------------------------------------------------------------------


def _rounds(runs):
    by_round: dict[int, list[records.PlannedRun]] = {}
    for run in runs:
        by_round.setdefault(run.round, []).append(run)
    return by_round


def test_each_round_runs_every_test_once():
    runs = list(records.plan(NAMES, num_runs=4, warmup_rounds=0, seed=1))
    assert len(runs) == 4 * len(NAMES)
    rounds = _rounds(runs)
    assert sorted(rounds) == [0, 1, 2, 3]
    for r, members in rounds.items():
        assert sorted(m.test for m in members) == sorted(NAMES), r
        assert [m.position for m in members] == list(range(len(NAMES)))
        assert not any(m.warmup for m in members)
    assert [run.round for run in runs] == sorted(run.round for run in runs)  # rounds run one after another


def test_order_is_shuffled_between_rounds():
    for seed in range(20):
        orders = {tuple(m.test for m in members) for members in _rounds(list(records.plan(NAMES, 5, 0, seed))).values()}
        if len(orders) > 1:
            break
    else:
        pytest.fail("20 seeds never gave two rounds different orders")
    # and not always the config's order
    firsts = Counter(list(records.plan(NAMES, 30, 0, seed=3))[i * 6].test for i in range(30))
    assert len(firsts) > 1


def test_same_seed_same_plan_other_seed_other_plan():
    assert list(records.plan(NAMES, 3, 1, seed=42)) == list(records.plan(NAMES, 3, 1, seed=42))
    assert any(list(records.plan(NAMES, 3, 1, seed=42)) != list(records.plan(NAMES, 3, 1, seed=s)) for s in range(43, 50))


def test_warmup_rounds_come_first_and_are_flagged():
    runs = list(records.plan(NAMES, num_runs=2, warmup_rounds=2, seed=9))
    assert len(runs) == 4 * len(NAMES)
    warm, measured = runs[: 2 * len(NAMES)], runs[2 * len(NAMES):]
    assert all(r.warmup and r.round < 0 for r in warm)
    assert all(not r.warmup and r.round >= 0 for r in measured)
    assert sorted({r.round for r in warm}) == [-2, -1] and sorted({r.round for r in measured}) == [0, 1]
    labels = [r.label for r in runs]
    assert len(set(labels)) == len(labels)  # every run gets its own folder name
    assert runs[0].label.endswith("-w2") and runs[-1].label.endswith("-r1")


def test_single_test_plan():
    assert [(r.test, r.round, r.position) for r in list(records.plan(["only"], 2, 0, 5))] == [("only", 0, 0), ("only", 1, 0)]


# --- one real run ---------------------------------------------------------------------------


def _suite(tmp_path, eviction):
    """A prepared output folder and a two-test suite on it (raw 64 KB chunks, gzip 1 MB chunks)."""
    data = minimal_config(output_dir=str(tmp_path / "out"), testing={"num_runs": 1, "cache_eviction": eviction})
    made = config.from_dict(data, base_dir=tmp_path)
    workspace.prepare_output_dir(made.output_dir)
    return made


@pytest.fixture
def suite(tmp_path):
    # fadvise evicts only the run's own files; "auto" (drop_caches as root) would empty the
    # whole machine's page cache at every run. test_run_once_... exercises "auto".
    return _suite(tmp_path, "fadvise")


def _run(suite, tiny_weights, test="baseline", **kwargs):
    planned = records.PlannedRun(test, 0, 0)
    backend = measure.backend_for(suite.test(test), suite)
    return measure.run_once(planned, backend, measure.Bench(suite, tiny_weights.tensors), **kwargs), planned


def _expected_files(tensors, budget):
    chunks = sum(math.prod(math.ceil(d / c) for d, c in zip(a.shape, chunking.chunk_shape(a.shape, budget)))
                 for a in tensors.values())
    return chunks + len(tensors) + 1  # + one .zarray each + the manifest


def test_run_once_records_a_verified_run_and_cleans_up(tmp_path, tiny_weights):
    suite = _suite(tmp_path, "auto")  # drop_caches where permitted, else fadvise
    phases, seen_files = [], {}

    def on_phase(run, phase):
        phases.append(phase)
        if phase == "evict":  # the checkpoint is complete and measured; count what is there
            files = [os.path.join(r, f) for r, _d, names in os.walk(run_dir(run)) for f in names
                     if f != workspace.RUN_MARKER]  # the harness's marker is not part of the checkpoint
            seen_files["n"], seen_files["bytes"] = len(files), sum(os.path.getsize(f) for f in files)

    def run_dir(run):
        return suite.output_dir / workspace.RUNS_DIR / run.label

    record, planned = _run(suite, tiny_weights, on_phase=on_phase)
    assert record.error is None and record.ok
    assert record.verified is True
    # what save_s and load_s hold, and nothing more: test_timed_region.py
    assert record.save_cpu_s is not None and record.load_cpu_s is not None
    assert record.n_files == seen_files["n"]
    assert record.size_bytes == seen_files["bytes"]
    # raw float32: every chunk is stored full size, so the checkpoint holds at least the tensor bytes
    assert record.size_bytes >= tiny_weights.size_bytes
    assert record.n_files >= _expected_files(tiny_weights.tensors, 16384)
    assert record.disk_bytes >= record.size_bytes - 4096 * record.n_files
    assert record.eviction in ("drop_caches", "fadvise")
    assert record.load_cache in ("cold", "partial", "warm")
    assert record.resident_bytes_at_load >= 0
    assert phases[:1] == ["save"] and {"size", "evict", "load", "verify"} <= set(phases)
    assert phases.index("evict") < phases.index("load") < phases.index("verify")
    assert (record.test, record.round, record.position, record.warmup) == ("baseline", 0, 0, False)
    assert not run_dir(planned).exists()


def test_n_files_counts_only_the_checkpoint(suite, tiny_weights):
    """The record's file count is the checkpoint's: chunks, one .zarray per tensor, and the manifest.

    The harness's own `.ckptbench-run` ownership marker in the run folder is not part of it.
    """
    record, _ = _run(suite, tiny_weights)
    assert record.ok
    checkpoint_files = _expected_files(tiny_weights.tensors, 16384)  # 105 chunks + 39 + 1 = 145 for tiny
    assert record.n_files == checkpoint_files


def test_gzip_run_is_smaller_and_verified(suite, tiny_weights):
    raw, _ = _run(suite, tiny_weights, "baseline")
    packed, _ = _run(suite, tiny_weights, "fast")
    assert raw.verified and packed.verified
    assert packed.size_bytes < raw.size_bytes  # gzip-1 saves a few % even on random float32
    assert packed.n_files < raw.n_files  # and 1 MB chunks make fewer files


def test_eviction_method_is_recorded(tmp_path, suite, tiny_weights):
    record, _ = _run(suite, tiny_weights)
    assert record.ok and record.eviction == "fadvise"
    record, _ = _run(_suite(tmp_path / "warm", "none"), tiny_weights)
    assert record.ok and record.eviction is None


def test_pages_an_eviction_left_are_evicted_again_before_the_load(suite, tiny_weights, monkeypatch):
    """drop_caches now and then keeps a page or two of a just-saved checkpoint (tune: 4-68 KiB of TensorStore files
    written tens of ms before, unread since, taken by a second drop): a page read back after the first eviction here."""
    evict, evictions = cache.evict, []

    def evict_leaving_a_page(directory, method):
        evictions.append(evict(directory, method))
        if len(evictions) == 1:
            next(directory.rglob(".zarray")).read_bytes()
        return evictions[-1]

    monkeypatch.setattr(cache, "evict", evict_leaving_a_page)
    record, _ = _run(suite, tiny_weights)
    assert record.ok and len(evictions) == 2
    assert record.resident_bytes_at_load == 0 and record.load_cache == "cold"


def _warm_load_suite(tmp_path):
    data = minimal_config(output_dir=str(tmp_path / "out"), testing={"num_runs": 1, "cache_eviction": "fadvise"})
    data["test_configurations"][0]["warm_load"] = True
    made = config.from_dict(data, base_dir=tmp_path)
    workspace.prepare_output_dir(made.output_dir)
    return made


def test_warm_load_times_a_load_from_the_save_before_the_eviction(tmp_path, tiny_weights):
    suite = _warm_load_suite(tmp_path)
    phases = []
    record, planned = _run(suite, tiny_weights, on_phase=lambda run, phase: phases.append(phase))
    assert record.ok and record.verified
    assert phases == ["save", "size", "warm load", "evict", "load", "verify"]
    assert record.warm_load_cpu_s is not None  # what warm_load_s holds: test_timed_region.py
    # the save left its files in the page cache (another process's drop_caches may still take some)
    assert record.warm_load_cache in ("warm", "partial")
    assert record.eviction == "fadvise" and record.load_cache == "cold"  # then the usual evicted load
    other, _ = _run(suite, tiny_weights, "fast")
    assert other.ok and other.warm_load_s is None and phases.count("warm load") == 1
    assert not (suite.output_dir / workspace.RUNS_DIR / planned.label).exists()


def test_a_wrong_warm_load_fails_the_run_before_the_cold_load(tmp_path, tiny_weights):
    suite = _warm_load_suite(tmp_path)
    phases = []

    def on_phase(run, phase):
        phases.append(phase)
        if phase == "warm load":
            _corrupt_a_chunk(suite.output_dir / workspace.RUNS_DIR / run.label)

    record, planned = _run(suite, tiny_weights, on_phase=on_phase)
    assert not record.ok and record.verified is False
    assert record.error.startswith("verification failed: the warm load: 1 tensor(s) differ")
    assert "load" not in phases and record.load_s is None
    assert not (suite.output_dir / workspace.RUNS_DIR / planned.label).exists()


def _corrupt_a_chunk(run_dir: Path) -> Path:
    """Flip every byte at the start of one raw chunk file (same length, so it still reads)."""
    chunk = sorted(p for p in (run_dir / "model.embed_tokens.weight").iterdir() if not p.name.startswith("."))[0]
    with open(chunk, "r+b") as handle:
        head = handle.read(64)
        handle.seek(0)
        handle.write(bytes(b ^ 0xFF for b in head))
        handle.flush()
        os.fsync(handle.fileno())
    return chunk


def test_corrupted_chunk_fails_verification(suite, tiny_weights):
    corrupted = []

    def on_phase(run, phase):
        if phase == "load":
            corrupted.append(_corrupt_a_chunk(suite.output_dir / workspace.RUNS_DIR / run.label))

    record, planned = _run(suite, tiny_weights, on_phase=on_phase)
    assert corrupted, "the load phase was never announced"
    assert record.verified is False
    assert not record.ok
    assert "verification" in record.error and "model.embed_tokens.weight" in record.error
    assert record.load_s > 0  # the load itself happened
    assert not (suite.output_dir / workspace.RUNS_DIR / planned.label).exists()


def test_unreadable_chunk_is_recorded_not_raised(suite, tiny_weights):
    """A gzip chunk cut short cannot be decoded: the run records the error and the suite could go on."""

    def on_phase(run, phase):
        if phase == "load":
            folder = suite.output_dir / workspace.RUNS_DIR / run.label / "model.embed_tokens.weight"
            chunk = sorted(p for p in folder.iterdir() if not p.name.startswith("."))[0]
            chunk.write_bytes(chunk.read_bytes()[:10])

    record, _ = _run(suite, tiny_weights, "fast", on_phase=on_phase)
    assert not record.ok and record.verified is not True
    assert record.error and "\n" not in record.error


def test_keep_keeps_the_checkpoint(suite, tiny_weights):
    record, planned = _run(suite, tiny_weights, keep=True)
    kept = suite.output_dir / workspace.RUNS_DIR / planned.label
    assert record.ok and kept.is_dir()
    assert (kept / "manifest.json").is_file() and (kept / "lm_head.weight" / ".zarray").is_file()
    workspace.remove_owned(kept)  # it carries the harness's marker, so the harness may delete it
    assert not kept.exists()


def test_keep_false_removes_the_checkpoint(suite, tiny_weights):
    record, planned = _run(suite, tiny_weights, keep=False)
    assert record.ok and not (suite.output_dir / workspace.RUNS_DIR / planned.label).exists()


def test_run_suite_keeps_only_the_last_round(suite, tiny_weights):
    small = {k: v for k, v in tiny_weights.tensors.items() if "layers.0." in k}
    runs = list(records.plan(["baseline", "fast"], num_runs=2, warmup_rounds=1, seed=0))
    done = list(measure.run_plan(runs, measure.Bench(suite, small, keep=True)))
    assert [(r.test, r.round) for r in done] == [(p.test, p.round) for p in runs]
    assert all(r.ok and r.verified for r in done)
    assert sum(r.warmup for r in done) == 2
    left = sorted(p.name for p in (suite.output_dir / workspace.RUNS_DIR).iterdir() if p.is_dir())
    assert left == ["baseline-r1", "fast-r1"]


def test_run_suite_without_keep_leaves_nothing(suite, tiny_weights):
    small = {k: v for k, v in tiny_weights.tensors.items() if "layers.1." in k}
    runs = list(records.plan(["baseline", "fast"], num_runs=1, warmup_rounds=0, seed=0))
    assert all(r.ok for r in measure.run_plan(runs, measure.Bench(suite, small)))
    runs_dir = suite.output_dir / workspace.RUNS_DIR
    assert not runs_dir.exists() or not [p for p in runs_dir.iterdir() if p.is_dir()]
