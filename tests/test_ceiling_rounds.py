"""The device ceiling round by round (documents.ceiling): "% of ceiling" is of each round's fastest figure, so no
row passes 100 %, every row that beats the ceiling's own patterns is named, and claims to read around the page
cache are checked on what the loads left there.

Documents are made by `results.build` from hand-written run records, as a real suite writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ckptbench.bench import measure, storage, workspace
from ckptbench.core import records
from ckptbench.core.records import RunRecord
from ckptbench.documents import ceiling, results
from ckptbench.reports import results as report
from ckptbench.spec import config
from ckptbench.spec.references import REFERENCES

MODEL_BYTES = 4_000_000
WEIGHTS = {"kind": "preset", "name": "tiny", "dtype": "float32", "n_tensors": 3, "n_params": 1_000_000,
           "size_bytes": MODEL_BYTES}
ENVIRONMENT = {"timestamp": "2025-01-01T00:00:00", "cpu_model": "test cpu", "cpu_count": 2, "ram_bytes": 2**33,
               "filesystem": {"type": "ext4"}, "fio": None}


def build(rounds: dict[str, list[tuple[float, float]]], extra: dict[str, dict] | None = None,
          settings: dict[str, dict] | None = None) -> dict:
    """Test t's round i saved in rounds[t][i][0] s and loaded in rounds[t][i][1] s; `extra`: more fields of
    every run of a test; `settings`: a test's TestSpec fields. A reference kind's name is that row."""
    extra, settings = extra or {}, settings or {}
    names = list(rounds)
    tests = tuple(config.TestSpec(name=n, concurrency_limit=1, chunk_size_elements=16384,
                                  backend=n if n in REFERENCES else "tensorstore", **settings.get(n, {}))
                  for n in names)
    suite = config.SuiteConfig(tests=tests, baseline=names[0], output_dir=Path("/nonexistent"))
    made = [RunRecord(test=name, round=i, position=0, warmup=False, save_s=save, load_s=load, size_bytes=MODEL_BYTES,
                      **{"disk_bytes": MODEL_BYTES, "n_files": 10, "eviction": "drop_caches", "load_cache": "cold",
                         "verified": True, **extra.get(name, {})})
            for name, values in rounds.items() for i, (save, load) in enumerate(values)]
    return results.build(suite, WEIGHTS, made, ENVIRONMENT, seed=1, complete=True)


def _by_name(document: dict) -> dict:
    return {t["name"]: t for t in document["tests"]}


# Round 1 is the ceiling's bad round: five rows save faster than its patterns did, two load faster.
ROUNDS = {
    "base": [(4.0, 4.0), (4.0, 4.0), (4.0, 4.0)],
    "a": [(2.0, 2.0), (1.5, 2.0), (2.0, 2.0)],
    "b": [(2.0, 2.0), (1.2, 0.9), (2.0, 2.0)],
    "c": [(2.0, 2.0), (1.8, 2.0), (2.0, 2.0)],
    "safetensors": [(2.0, 2.0), (1.9, 1.1), (2.0, 2.0)],
    "torch_save": [(2.0, 2.0), (1.1, 2.0), (2.0, 2.0)],
    "device_ceiling": [(1.0, 1.0), (2.0, 1.2), (1.0, 1.0)],
}
BEATERS = ["torch_save", "b", "a", "c", "safetensors"]  # fastest first


def test_a_row_faster_than_the_ceiling_in_a_round_is_at_most_100_pct_and_every_beater_is_named():
    document = build(ROUNDS)
    tests = _by_name(document)
    for test in document["tests"]:
        for metric, pct in test["pct_of_ceiling"].items():
            assert 0 < pct <= 100.0, (test["name"], metric, pct)
    by_round = tests["device_ceiling"]["ceiling"]["rounds"]
    assert [e["beaten_by"] for e in by_round["save_gbps"]][0::2] == [{}, {}]
    round_1 = by_round["save_gbps"][1]
    assert list(round_1["beaten_by"]) == BEATERS and round_1["fastest"] == "torch_save"
    assert round_1["fastest_gbps"] == pytest.approx(MODEL_BYTES / 1e9 / 1.1)
    assert round_1["ceiling_gbps"] == pytest.approx(MODEL_BYTES / 1e9 / 2.0)
    # torch_save: half the ceiling in rounds 0 and 2, the fastest figure (100 %) in round 1
    assert tests["torch_save"]["pct_of_ceiling"]["save_gbps"] == pytest.approx((50 + 100 + 50) / 3)
    assert tests["device_ceiling"]["pct_of_ceiling"]["save_gbps"] == pytest.approx((100 + 100 * 1.1 / 2 + 100) / 3)
    # a row that did not beat it: its share of each round's fastest figure
    assert tests["base"]["pct_of_ceiling"]["save_gbps"] == pytest.approx((25 + 100 * 1.1 / 4 + 25) / 3)

    alerts = [a for a in document["alerts"] if a["kind"] == "ceiling beaten"]
    saved = next(a for a in alerts if " saved " in a["text"])
    assert saved["tests"] == BEATERS
    assert all(f"{name} (1 of 3 rounds)" in saved["text"] for name in BEATERS)  # every one, none cut off
    loaded = next(a for a in alerts if " loaded " in a["text"])
    assert loaded["tests"] == ["b", "safetensors"]
    warnings = [w for w in document["warnings"] if "own patterns in round(s) 1 of 3" in w]
    assert len(warnings) == len(BEATERS) + 2
    text = report.console(document)
    assert all(name in text for name in BEATERS)


def test_without_a_beater_the_ceiling_is_100_pct_and_nothing_is_alerted():
    quiet = {name: values for name, values in ROUNDS.items() if name != "device_ceiling"}
    quiet["device_ceiling"] = [(1.0, 0.5)] * 3
    document = build(quiet)
    assert _by_name(document)["device_ceiling"]["pct_of_ceiling"] == {"save_gbps": 100.0, "load_gbps": 100.0}
    assert not [a for a in document["alerts"] if a["kind"] == "ceiling beaten"]


def test_figures_that_are_not_the_devices_neither_raise_the_ceiling_nor_get_a_share():
    """A save not durable and a load from a warm page cache: no % of ceiling, no beater."""
    document = build({"base": [(4.0, 4.0)] * 3, "nosync": [(0.1, 4.0)] * 3, "warm": [(4.0, 0.1)] * 3,
                      "device_ceiling": [(1.0, 1.0)] * 3},
                     extra={"warm": {"load_cache": "warm"}}, settings={"nosync": {"file_io_sync": False}})
    tests = _by_name(document)
    assert tests["nosync"]["pct_of_ceiling"]["save_gbps"] is None
    assert tests["nosync"]["pct_of_ceiling"]["load_gbps"] == pytest.approx(25.0)
    assert tests["warm"]["pct_of_ceiling"] == {"save_gbps": pytest.approx(25.0), "load_gbps": None}
    assert tests["device_ceiling"]["pct_of_ceiling"] == {"save_gbps": 100.0, "load_gbps": 100.0}
    assert not [a for a in document["alerts"] if a["kind"] == "ceiling beaten"]


def test_tune_pools_every_stages_rounds_and_stays_at_most_100_pct():
    from ckptbench.tune import answer

    first, second = build(ROUNDS), build({**ROUNDS, "a": [(0.5, 0.5)] * 3})
    pooled = ceiling.pooled_pct_of_ceiling([first, second], "a")
    assert all(0 < pct <= 100.0 for pct in pooled.values())
    assert pooled["save_gbps"] == pytest.approx(
        (sum(ceiling.round_percents(_by_name(first)["a"], ceiling.rounds(first["tests"], MODEL_BYTES),
                                    MODEL_BYTES)["save_gbps"]) + 300) / 6)  # 100 % in each round of the second
    samples = {name: {"save_s": [s for s, _ in v], "load_s": [x for _, x in v], "total_s": [s + x for s, x in v],
                      "size_bytes": [MODEL_BYTES] * 3, "save_gbps": [MODEL_BYTES / 1e9 / s for s, _ in v],
                      "load_gbps": [MODEL_BYTES / 1e9 / x for _, x in v]} for name, v in ROUNDS.items()}
    found = answer.recommend(samples, ["a", "b", "c"], "total_s", 5.0, documents=[first])
    assert found["test"] == "b"
    assert set(found["pct_of_ceiling"]) == {"save_gbps", "load_gbps", "total_s"}
    assert all(0 < pct <= 100.0 for pct in found["pct_of_ceiling"].values())


# --- page-cache claims ----------------------------------------------------------------------------------------

def test_a_claim_to_bypass_the_page_cache_is_checked_on_what_the_loads_left():
    document = build({"base": [(4.0, 4.0)] * 3, "direct": [(4.0, 4.0)] * 3, "runai_streamer": [(2.0, 2.0)] * 3},
                     extra={"base": {"resident_bytes_after_load": MODEL_BYTES},
                            "direct": {"resident_bytes_after_load": MODEL_BYTES // 2,
                                       "bypass_resident_bytes": MODEL_BYTES // 2},
                            "runai_streamer": {"resident_bytes_after_load": 0, "bypass_resident_bytes": 0}},
                     settings={"direct": {"file_io_mode": "direct"}})
    tests = _by_name(document)
    base, direct, runai = (tests[n]["page_cache"] for n in ("base", "direct", "runai_streamer"))
    assert (base["claim"], base["claim_held"], base["resident_after_load_bytes_max"]) == (None, None, MODEL_BYTES)
    assert not any("page cache" in w for w in tests["base"]["warnings"])  # a buffered load: no claim to break
    assert (direct["claim"], direct["claim_held"], direct["claim_broken_runs"]) == ('file_io_mode "direct"', False, 3)
    assert direct["claim_resident_pct_max"] == pytest.approx(50.0)
    assert any(w.startswith("direct: claims file_io_mode") and "50%" in w for w in tests["direct"]["warnings"])
    assert (runai["claim"], runai["claim_held"], runai["claim_resident_pct_max"]) == ("O_DIRECT reads", True, 0.0)
    claim_alerts = [a for a in document["alerts"] if a["kind"] == "page cache claim"]
    assert [a["tests"] for a in claim_alerts] == [["direct"]]
    line = report.page_cache_line(document)
    assert "runai_streamer (O_DIRECT reads) held 3 loads, at most 0% resident" in line
    assert "direct (file_io_mode \"direct\") broken in 3 of 3 loads, at most 50% resident" in line


def test_a_file_from_before_bypass_resident_bytes_is_judged_on_resident_bytes_after_load():
    document = build({"base": [(4.0, 4.0)] * 3, "direct": [(4.0, 4.0)] * 3},
                     extra={"direct": {"resident_bytes_after_load": MODEL_BYTES}},
                     settings={"direct": {"file_io_mode": "direct"}})
    for run in document["tests"][1]["runs"]:
        del run["bypass_resident_bytes"]
    results.derive(document)
    assert _by_name(document)["direct"]["page_cache"]["claim_held"] is False


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {"a": rng.standard_normal((512, 512), dtype=np.float32), "b": rng.standard_normal(4096, dtype=np.float32)}


@pytest.mark.parametrize("mode", ["default", "direct"])
def test_a_real_tensorstore_load_records_what_it_left_in_the_page_cache(tmp_path, mode):
    """Real files: a buffered load leaves its chunks in the page cache and claims nothing; a direct-I/O load's
    claim is measured on the same files."""
    tensors = _tensors()
    suite = config.from_dict({"testing": {"cache_eviction": "fadvise"}, "test_configurations": [
        {"name": "t", "chunk_bytes": "64KB", "concurrency_limit": 4, "file_io_mode": mode}]},
        output_dir=tmp_path / "out")
    workspace.prepare_output_dir(suite.output_dir)
    test = suite.test("t")
    backend = measure.backend_for(test, suite)
    assert isinstance(backend, storage.TensorStoreBackend)
    record = measure.run_once(records.PlannedRun("t", 0, 0), backend, measure.Bench(suite, tensors))
    assert record.ok and record.load_cache == "cold", record.error
    if mode == "default":
        assert record.resident_bytes_after_load >= 0.9 * record.size_bytes  # the buffered load's pages stayed
        assert record.bypass_resident_bytes is None
    else:
        assert record.bypass_resident_bytes == record.resident_bytes_after_load
        # 64 KB chunks are whole 4096-byte blocks: TensorStore reads them with O_DIRECT, so the claim holds
        assert record.bypass_resident_bytes <= 0.05 * record.disk_bytes
