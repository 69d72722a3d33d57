"""Numbers that carry over: checkpoint-like values, Hugging Face ids, the ceiling's warnings, memory split
and bounds, file_io_mode, the scale of a run, and refusing what cannot work."""

from __future__ import annotations

import json
import mmap
import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHIPPED_CONFIG, minimal_config

from ckptbench.bench import capacity, measure, storage, workspace
from ckptbench.core import records, system
from ckptbench.core.errors import UserError
from ckptbench.core.records import RunRecord
from ckptbench.documents import results
from ckptbench.sources import weights
from ckptbench.spec import config

# --- values that compress like a real checkpoint's ---------------------------------------------------------


def _low_mantissa_bits_zero(array: np.ndarray, bits: int) -> bool:
    return not np.any(array.view(np.uint32) & np.uint32((1 << bits) - 1))


@pytest.mark.parametrize("values, zero_bits", [("float16", 13), ("bfloat16", 16)])
def test_half_precision_values_stored_as_float32_keep_their_grid(values, zero_bits):
    made = weights.from_preset("tiny", "float32", values)
    assert made.source["values"] == values
    for array in made.tensors.values():
        assert array.dtype == np.float32 and _low_mantissa_bits_zero(array, zero_bits)
    half = weights.from_preset("tiny", "float16" if values == "float16" else "bfloat16", "random")
    for name, array in made.tensors.items():  # the same draws, rounded once
        assert np.array_equal(array, half.tensors[name].astype(np.float32))


def test_random_values_use_every_mantissa_bit():
    made = weights.from_preset("tiny", "float32", "random")
    assert not any(_low_mantissa_bits_zero(a, 8) for a in made.tensors.values() if a.size > 1000)


def _gzip_saved_fraction(tensors, tmp_path: Path, name: str) -> float:
    layout = storage.Layout(chunk_budget_elements=65536, chunk_strategy="halve", concurrency_limit=8,
                            compression={"id": "gzip", "level": 1})
    storage.save(tensors, tmp_path / name, layout, 2**30)
    size_bytes = storage.checkpoint_size(tmp_path / name)[0]
    return 1 - size_bytes / sum(a.nbytes for a in tensors.values())


def test_gzip_finds_what_half_precision_values_leave_zero(tmp_path):
    """The original stored fp16 weights as float32: gzip level 1 then saves about a third, not 7 %."""
    random_saved = _gzip_saved_fraction(weights.from_preset("tiny", "float32", "random").tensors, tmp_path, "r")
    fp16_saved = _gzip_saved_fraction(weights.from_preset("tiny", "float32", "float16").tensors, tmp_path, "h")
    bf16_saved = _gzip_saved_fraction(weights.from_preset("tiny", "float32", "bfloat16").tensors, tmp_path, "b")
    assert random_saved < 0.12 < 0.25 < fp16_saved < bf16_saved


def test_values_are_a_setting_recorded_in_the_results(tmp_path):
    import ckptbench

    suite = config.from_dict(minimal_config(values="bfloat16"), output_dir=tmp_path / "out")
    assert suite.values == "bfloat16"
    assert config.from_dict(minimal_config(), values="float16").values == "float16"
    document = ckptbench.run(suite).document
    assert document["weights"]["values"] == document["protocol"]["values"] == "bfloat16"
    from ckptbench.figures import common as plot

    assert "values bfloat16" in plot.source_line(document)
    with pytest.raises(UserError, match="values"):
        config.from_dict(minimal_config(values="int8"))


def test_values_do_not_apply_to_a_checkpoint(run_cli, tmp_path, checkpoint):
    status, _, err = run_cli("--config", SHIPPED_CONFIG, "--weights", checkpoint / "single", "--values", "float16",
                             "--output-dir", tmp_path / "out")
    assert status == 2 and "--values" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    suite = config.load(SHIPPED_CONFIG, weights=str(checkpoint / "single"))
    assert suite.values == "checkpoint"


# --- Hugging Face ids, end to end (a cache folder built by the test; no network) --------------------------


def test_a_hugging_face_id_runs_from_the_cache_and_is_recorded(tmp_path, monkeypatch, hf_model):
    from test_hub import COMMIT, add_snapshot, hub_settings, safetensors_bytes

    import ckptbench

    cache = tmp_path / "hf"
    hub_settings(monkeypatch, cache=cache, offline=True)
    state = {k: v.detach().contiguous() for k, v in hf_model.state_dict().items()}
    add_snapshot(cache, {"model.safetensors": safetensors_bytes(state, tmp_path / "scratch.safetensors"),
                         "config.json": b"{}"}, repo_id="acme/llama-mini")
    suite = config.from_dict(minimal_config(), weights="acme/llama-mini", output_dir=tmp_path / "out")
    assert suite.weights == "acme/llama-mini"
    document = ckptbench.run(suite).document
    assert document["weights"]["repo_id"] == "acme/llama-mini"
    assert document["weights"]["commit"] == COMMIT and document["weights"]["values"] == "checkpoint"
    assert all(r["verified"] for t in document["tests"] for r in t["runs"])


def test_a_hugging_face_id_not_in_the_cache_offline_is_one_line(run_cli, tmp_path, monkeypatch):
    from test_hub import hub_settings

    hub_settings(monkeypatch, cache=tmp_path / "empty-cache", offline=True)
    status, out, err = run_cli("--weights", "acme/absent", "--output-dir", tmp_path / "out", "--no-progress")
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "acme/absent" in err and "download" in err
    assert not (tmp_path / "out").exists()


# --- the device ceiling's warnings, on synthetic measurements ----------------------------------------------

CEILING_SUITE = {"model": "tiny", "testing": {"num_runs": 3}, "references": {"device_ceiling": True},
                 "test_configurations": [
                     {"name": "base", "chunk_bytes": "64KB", "concurrency_limit": 1},
                     {"name": "fast", "chunk_bytes": "1MB", "concurrency_limit": 64}]}
DATA_BYTES = 1_000_000_000


def _document(seconds: dict[str, tuple[list[float], list[float]]], direct_s: float | None = None) -> dict:
    """A results document built from made-up runs: test -> (save seconds, load seconds) per round."""
    suite = config.from_dict(CEILING_SUITE, output_dir="/nonexistent")
    made = []
    for test, (saves, loads) in seconds.items():
        for round_, (save_s, load_s) in enumerate(zip(saves, loads)):
            record = RunRecord(test, round_, 0, False, save_s=save_s, load_s=load_s, size_bytes=DATA_BYTES,
                               n_files=1, load_cache="cold", verified=True)
            if test == "device_ceiling":
                record.patterns = {"save": {"1x1MiB": save_s, "4x16MiB": save_s * 1.5},
                                   "load": {"4x1MiB": load_s, **({"direct 16x16MiB": direct_s} if direct_s else {})}}
            made.append(record)
    info = {"kind": "preset", "name": "tiny", "values": "random", "dtype": "float32", "n_tensors": 1,
            "n_params": DATA_BYTES // 4, "size_bytes": DATA_BYTES}
    env = {"timestamp": "t", "cpu_count": 2, "ram_bytes": 64 * DATA_BYTES}
    return results.build(suite, info, made, env, seed=1, complete=True)


def test_a_test_faster_than_the_ceiling_is_warned_about_round_by_round():
    document = _document({"base": ([2.0, 2.1, 1.9], [1.0, 1.1, 0.9]),
                          "fast": ([1.0, 1.02, 0.98], [0.30, 0.31, 0.29]),  # 3.3 GB/s load
                          "device_ceiling": ([0.9, 1.0, 1.1], [0.5, 0.52, 0.48])})  # 2 GB/s load
    warnings = [w for w in document["warnings"] if "loaded faster than the device ceiling's own patterns" in w]
    assert len(warnings) == 1 and warnings[0].startswith("fast loaded faster than the device ceiling's own patterns "
                                                         "in round(s) 0, 1, 2 of 3 (by up to 68%)")
    assert document["scale"]["ceiling_save_pattern"] == "1x1MiB" and document["scale"]["ceiling_load_pattern"] == "4x1MiB"
    ceiling = next(t for t in document["tests"] if t["name"] == "device_ceiling")
    assert set(ceiling["ceiling"]["save"]) == {"1x1MiB", "4x16MiB"}
    fast = next(t for t in document["tests"] if t["name"] == "fast")
    assert fast["pct_of_ceiling"]["load_gbps"] == 100.0  # the fastest figure of every round is its own


def test_a_noisy_test_is_named_for_the_rounds_it_beat_the_ceiling_in_only():
    document = _document({"base": ([2.0, 2.1, 1.9], [1.0, 1.1, 0.9]),
                          "fast": ([1.0, 1.02, 0.98], [0.2, 0.6, 0.45]),  # faster in rounds 0 and 2
                          "device_ceiling": ([0.9, 1.0, 1.1], [0.5, 0.52, 0.48])})
    warnings = [w for w in document["warnings"] if "loaded faster than the device ceiling's own patterns" in w]
    assert len(warnings) == 1 and "in round(s) 0, 2 of 3" in warnings[0]
    fast = next(t for t in document["tests"] if t["name"] == "fast")
    assert fast["pct_of_ceiling"]["load_gbps"] == pytest.approx((100 + 100 * 0.52 / 0.6 + 100) / 3)


def test_cold_loads_faster_than_an_o_direct_read_point_at_a_cache_below_the_os():
    document = _document({"base": ([2.0, 2.1, 1.9], [3.0, 3.1, 2.9]),  # 0.33 GB/s: slower than O_DIRECT
                          "fast": ([1.0, 1.02, 0.98], [0.5, 0.51, 0.49]),  # 2 GB/s
                          "device_ceiling": ([0.9, 1.0, 1.1], [0.45, 0.5, 0.48])}, direct_s=2.0)  # 0.5 GB/s
    warning = next(w for w in document["warnings"] if "O_DIRECT" in w)
    assert "fast" in warning and "base" not in warning.split("cold loads of ")[1].split(" ran")[0]


# --- memory: split into anonymous and file-backed, bounded before the start ------------------------------


def test_timed_splits_anonymous_and_file_backed_memory(tmp_path):
    size = 64 * 2**20
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(size))

    def touch_mapped() -> None:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), size, prot=mmap.PROT_READ) as mapped:
            view = np.frombuffer(mapped, dtype=np.uint8)
            assert int(view[::4096].sum()) >= 0
            time.sleep(5 * measure.SAMPLE_S)  # held long enough for the sampler to see it
            del view

    start_anon, start_file = system.resident_bytes()
    mapped = measure.timed(touch_mapped)
    assert mapped.rss_file_peak_bytes - start_file >= 0.9 * size  # a memory map is file-backed...
    assert mapped.rss_anon_peak_bytes - start_anon < 0.5 * size  # ...not anonymous
    allocated = measure.timed(lambda: np.ones(size, dtype=np.uint8).sum())
    assert allocated.rss_anon_peak_bytes - start_anon >= 0.9 * size
    assert allocated.wall_s > 0 and allocated.cpu_s >= 0


def test_each_run_records_its_memory(tmp_path, tiny_weights):
    import ckptbench

    suite = config.from_dict({**minimal_config(), "references": {"safetensors": True}}, output_dir=tmp_path / "o")
    document = ckptbench.run(suite).document
    for test in document["tests"]:
        run = test["runs"][0]
        assert run["save_rss_anon_bytes"] > 0 and run["load_rss_file_bytes"] > 0 and run["rss_anon_after_bytes"] > 0


def test_llama_2_7b_in_float32_is_refused_up_front_and_open_llama_3b_fits(run_cli, tmp_path, monkeypatch):
    """24 GB of RAM: llama-2-7b in float32 (26.95 GB) cannot be measured; open_llama_3b in float32 (13.71 GB)
    can, since the source weights are a mapped file and only the loaded copy is anonymous memory."""
    monkeypatch.setattr(system, "available_memory_bytes", lambda: int(23.5e9))
    status, out, err = run_cli("--model", "llama-2-7b", "--dtype", "float32", "--output-dir", tmp_path / "out")
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "26.95 GB" in err and "--dtype bfloat16" in err and "smaller --model" in err
    assert not (tmp_path / "out").exists()
    for model, dtype in (("open_llama_3b", "float32"), ("llama-2-7b", "bfloat16")):
        suite = config.load(SHIPPED_CONFIG, model=model, dtype=dtype)
        assert capacity.memory_refusal(suite, weights.PRESETS[model].n_params * (4 if dtype == "float32" else 2)) is None


def test_the_memory_estimate_names_the_hungriest_test(monkeypatch):
    monkeypatch.setattr(system, "available_memory_bytes", lambda: int(1e9))
    suite = config.load(SHIPPED_CONFIG)
    assert "at the peak (test '" in capacity.memory_refusal(suite, 10**9)


# --- run counts and plans: lazy, and absurd ones refused with an estimate -----------------------------------


def test_a_plan_of_a_hundred_million_runs_is_made_lazily():
    plan = records.plan([f"t{i}" for i in range(9)], 100_000_000, 0, seed=1)
    assert len(plan) == 900_000_000
    first = next(iter(plan))
    assert first.round == 0


def test_an_absurd_run_count_is_refused_at_once_with_an_estimate(run_cli, tmp_path):
    status, out, err = run_cli("--model", "tiny", "--runs", "100000000", "--output-dir", tmp_path / "out")
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--runs" in err and "would take about" in err and "years" in err
    assert not (tmp_path / "out").exists()


def test_an_absurd_sweep_is_refused_at_once_before_it_is_expanded(run_cli, tmp_path):
    """240 chunk sizes x 256 concurrency limits: 61,440 tests, counted from the axes, not expanded."""
    sweep = {"name": "s", "chunk_bytes": [f"{64 * (i + 1)}KB" for i in range(240)],
             "concurrency_limit": list(range(1, 257)), "compression": "none"}
    path = tmp_path / "absurd.json"
    path.write_text(json.dumps({"model": "tiny", "test_configurations": [sweep]}))
    status, out, err = run_cli("--config", path, "--output-dir", tmp_path / "out")
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "61,440 tests" in err and "'s'" in err and "at most 10,000" in err
    assert not (tmp_path / "out").exists()


# --- file_io_mode -------------------------------------------------------------------------------------------


def test_file_io_mode_direct_with_compression_is_refused_or_skipped():
    test = {"name": "d", "chunk_bytes": "1MB", "concurrency_limit": 8, "file_io_mode": "direct", "compression": "gzip"}
    with pytest.raises(UserError, match="O_DIRECT"):
        config.from_dict({"test_configurations": [test]})
    swept = config.from_dict({"test_configurations": [{**test, "file_io_mode": ["default", "direct"]}]})
    assert [t.name for t in swept.tests] == ["d_io=default"]
    assert swept.skipped[0][0] == "d_io=direct" and "4096" in swept.skipped[0][1]
    with pytest.raises(UserError, match="memory"):
        config.from_dict({"test_configurations": [{**test, "compression": "none", "kvstore": "memory"}]})
    with pytest.raises(UserError, match="file_io_mode"):
        config.from_dict({"test_configurations": [{**test, "file_io_mode": "mmap"}]})


def _cold_run(tmp_path: Path, tensors, **settings) -> RunRecord:
    suite = config.from_dict({"testing": {"cache_eviction": "auto"}, "test_configurations": [
        {"name": "t", "concurrency_limit": 16, "compression": "none", **settings}]}, output_dir=tmp_path / "out")
    workspace.prepare_output_dir(suite.output_dir)
    backend = measure.backend_for(suite.test("t"), suite)
    return measure.run_once(records.PlannedRun("t", 0, 0), backend, measure.Bench(suite, tensors))


ALIGNED = {"a": np.random.default_rng(3).standard_normal((256, 256), dtype=np.float32),
           "b": np.random.default_rng(4).standard_normal((64, 1024), dtype=np.float32)}


@pytest.mark.parametrize("mode", ["default", "memmap", "direct"])
def test_every_file_io_mode_round_trips_bit_exact(tmp_path, mode):
    record = _cold_run(tmp_path, ALIGNED, chunk_bytes="64KB", file_io_mode=mode)
    assert record.ok and record.verified, record.error
    if record.load_cache != "cold":
        pytest.skip(f"the page cache could not be emptied here ({record.eviction}): cold reads cannot be checked")
    if mode == "direct":
        # 64 KiB chunk files are multiples of 4096 bytes: read with O_DIRECT, no chunk enters the page cache;
        # only the small metadata files (.zarray, manifest.json) are read buffered
        assert record.resident_bytes_after_load <= 3 * 4096
        assert record.bypass_resident_bytes == record.resident_bytes_after_load  # the claim, measured
    else:
        assert record.resident_bytes_after_load is not None  # every row's, without a claim to check
        assert record.bypass_resident_bytes is None


def test_direct_reads_that_fall_back_to_the_page_cache_are_warned_about(tmp_path):
    """4,000-byte chunk files are not multiples of 4096: TensorStore quietly reads them buffered."""
    import ckptbench

    suite = config.from_dict({"model": "tiny", "testing": {"num_runs": 1}, "test_configurations": [
        {"name": "odd", "chunk_size_elements": 100_000, "concurrency_limit": 16, "file_io_mode": "direct"}]},
        output_dir=tmp_path / "out")
    document = ckptbench.run(suite).document
    run = document["tests"][0]["runs"][0]
    if run["load_cache"] != "cold":
        pytest.skip("the page cache could not be emptied here: the fallback cannot be observed")
    assert run["resident_bytes_after_load"] > 0
    assert any(w.startswith('odd: claims file_io_mode "direct"') for w in document["warnings"])
    assert document["tests"][0]["page_cache"]["claim_held"] is False


# --- the scale of a run ---------------------------------------------------------------------------------------


def test_a_small_checkpoint_is_flagged_with_a_preset_that_avoids_it():
    document = _document({"base": ([2.0, 2.1, 1.9], [1.0, 1.1, 0.9]), "fast": ([1.0, 1.1, 0.9], [0.5, 0.6, 0.4]),
                          "device_ceiling": ([0.9, 1.0, 1.1], [0.4, 0.42, 0.38])})
    scale = document["scale"]
    assert scale["model_bytes"] == DATA_BYTES and scale["small_for_ram"] is True
    assert scale["fits_in_page_cache"] is True and scale["model_pct_of_ram"] == pytest.approx(100 / 64)
    assert any("under a quarter of this machine's RAM" in w for w in document["warnings"])


def test_the_suggested_preset_is_at_least_a_quarter_of_ram_and_fits():
    suite = config.load(SHIPPED_CONFIG)
    # On a 24 GB machine: open_llama_3b in float32 (13.7 GB) fits, the source weights being a mapped file
    assert capacity.suggest_preset(int(24e9), "float32", suite) == "--model open_llama_3b"
    for ram in (4e9, 8e9, 16e9, 64e9, 256e9):
        suggestion = capacity.suggest_preset(int(ram), "float32", suite)
        if suggestion is None:
            continue
        flags = suggestion.split()
        model, dtype = flags[1], flags[3] if len(flags) > 3 else "float32"
        model_bytes = weights.PRESETS[model].n_params * weights.NUMPY_DTYPES[dtype].itemsize
        assert model_bytes >= ram / 4
        assert max(capacity.peak_memory_bytes(t, model_bytes, suite.max_inflight_bytes) for t in suite.tests) <= ram
