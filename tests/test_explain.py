"""explain: the original's conditions as settings, the blocked order, the one-at-a-time design and its
attribution (synthetic measurements, no I/O), round trips of the new settings with real TensorStore,
and a tiny-model explain from the command line. explain is a script beside its study
(docs/explain/explain.py), imported here by its path."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from conftest import REPO, SHIPPED_CONFIG, assert_same_bits, minimal_config

from ckptbench.analysis import change as analysis
from ckptbench.bench import storage
from ckptbench.core import records
from ckptbench.core.errors import UserError
from ckptbench.sources import weights
from ckptbench.spec import chunking, config


def _script():
    """docs/explain/explain.py as a module (registered, so its dataclasses resolve their module)."""
    if "explain_script" not in sys.modules:
        spec = importlib.util.spec_from_file_location("explain_script", REPO / "docs" / "explain" / "explain.py")
        sys.modules["explain_script"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["explain_script"]


explain = _script()
SIX = ["baseline", "concurrency_128", "chunks_1mb", "compression_gzip", "concurrency_chunks", "t5x_full"]


# --- the blocked order -----------------------------------------------------------------------


def test_blocked_order_runs_each_test_back_to_back_in_config_order():
    runs = list(records.plan(SIX, num_runs=3, warmup_rounds=1, seed=7, order="blocked"))
    assert [(r.test, r.round) for r in runs] == [(name, r) for name in SIX for r in (-1, 0, 1, 2)]  # AAABBB
    assert [r.warmup for r in runs[:4]] == [True, False, False, False]


def test_a_block_runs_back_to_back_and_leaves_the_other_tests_shuffles_alone():
    free, block = ["a", "b", "c"], ["x.baseline", "x.fast"]
    for seed in range(30):
        runs = list(records.plan(free + block, 3, 0, seed, blocks=[block]))
        assert len(runs) == 15 == len(records.plan(free + block, 3, 0, seed, blocks=[block]))
        blocked = [i for i, r in enumerate(runs) if r.test in block]
        assert blocked == list(range(blocked[0], blocked[0] + 6))  # one stretch
        assert [(runs[i].test, runs[i].round) for i in blocked] == [(n, r) for n in block for r in range(3)]
        # the interleaved rounds are exactly what a plan without the block gives, same seed
        assert [r for r in runs if r.test in free] == list(records.plan(free, 3, 0, seed))
        assert blocked[0] % 3 == 0  # it sits between two rounds
    slots = {records.block_slots(1, 3, seed)[0] for seed in range(30)}
    assert slots <= {0, 1, 2, 3} and len(slots) > 1  # placed by the seed, not always first


def test_blocks_resume_and_bad_blocks_are_refused():
    done = {("x", 0), ("a", 1)}
    runs = list(records.plan(["a", "x", "y"], 2, 0, 3, blocks=[["x", "y"]]).without(done))
    assert {(r.test, r.round) for r in runs} == {("a", 0), ("x", 1), ("y", 0), ("y", 1)}
    with pytest.raises(ValueError):
        records.plan(["a"], 2, 0, 3, blocks=[["nope"]])
    with pytest.raises(ValueError):
        records.plan(["a", "b"], 2, 0, 3, blocks=[["a"], ["a", "b"]])


# --- the settings ----------------------------------------------------------------------------


def _config(tests, **top):
    return config.from_dict(minimal_config(test_configurations=tests, **top))


def test_per_test_conditions_are_validated_and_fall_back_to_the_suite():
    base = {"name": "baseline", "chunk_size_elements": 16384, "concurrency_limit": 1}
    suite = _config([base, {**base, "name": "orig", "cache_eviction": "none", "values": "float16",
                            "in_flight": "one_tensor", "timed_conversion": True, "block": "old"}],
                    testing={"cache_eviction": "fadvise"})
    plain, orig = suite.tests
    assert (suite.eviction_for(plain), suite.values_for(plain)) == ("fadvise", "random")
    assert (suite.eviction_for(orig), suite.values_for(orig)) == ("none", "float16")
    assert suite.blocks == (("orig",),)
    with pytest.raises(UserError, match="timed_conversion.*values \"float16\""):
        _config([base, {**base, "name": "x", "timed_conversion": True}])
    with pytest.raises(UserError, match="timed_conversion.*dtype \"float32\""):
        _config([base, {**base, "name": "x", "timed_conversion": True, "values": "float16"}], dtype="bfloat16")
    with pytest.raises(UserError, match="in_flight"):
        _config([{**base, "in_flight": "some"}])
    with pytest.raises(UserError, match="a checkpoint"):
        config.from_dict(minimal_config(test_configurations=[{**base, "values": "float16"}]), weights=str(REPO))
    assert not plain.warm_load and _config([base, {**base, "name": "w", "warm_load": True}]).test("w").warm_load
    with pytest.raises(UserError, match="test 'w': warm_load .* cache_eviction is \"none\""):
        _config([base, {**base, "name": "w", "warm_load": True, "cache_eviction": "none"}])
    with pytest.raises(UserError, match="test 'w': warm_load .* the memory kvstore has none"):
        _config([base, {**base, "name": "w", "warm_load": True, "kvstore": "memory"}])
    with pytest.raises(UserError, match="warm_load"):
        _config([base, {**base, "name": "w", "warm_load": "yes"}])
    swept = _config([base, {**base, "name": "s", "in_flight": ["all", "one_tensor"]}], processes=[1, 2])
    names = [t.name for t in swept.tests]
    assert "s_inflight=one_tensor_procs=1" in names and "s_inflight=one_tensor_procs=2" not in names
    assert any("one_tensor" in reason for name, reason in swept.skipped if name == "s_inflight=one_tensor_procs=2")


def test_floor_halving_is_the_originals_rule():
    assert chunking.chunk_shape((576, 576), 64, "halve_floor") == [4, 9]  # 576 -> ... -> 9 -> 4
    assert chunking.chunk_shape((576, 576), 64, "halve") == [5, 9]
    assert chunking.chunk_shape((7,), 1, "halve_floor") == [1]
    for shape in [(49152, 576), (1536, 576), (576,), (192, 576), (2000, 128), (344, 128)]:
        for budget in (16384, 262144):  # the shipped budgets: the same shapes either way
            assert chunking.chunk_shape(shape, budget, "halve_floor") == chunking.chunk_shape(shape, budget, "halve")


@pytest.fixture(scope="module")
def fp16_weights():
    return weights.from_preset("tiny", "float32", "float16").tensors


def _layout(**fields):
    return storage.Layout(chunk_budget_elements=16384, chunk_strategy="halve", concurrency_limit=4,
                          compression=None, **fields)


def test_one_tensor_at_a_time_round_trips_and_awaits_each_tensor(tmp_path, fp16_weights, monkeypatch):
    real_open = storage.ts.open
    writes: list = []
    opened_while_writing: list[int] = []

    class Store:
        def __init__(self, store):
            self._store = store

        def write(self, array):
            future = self._store.write(array)
            writes.append(future)
            return future

        def __getattr__(self, name):
            return getattr(self._store, name)

    class Opening:
        def __init__(self, future):
            self._future = future

        def result(self):
            return Store(self._future.result())

        def __getattr__(self, name):
            return getattr(self._future, name)

    def spying_open(spec, **kwargs):
        opened_while_writing.append(sum(1 for w in writes if not w.done()))
        return Opening(real_open(spec, **kwargs))

    monkeypatch.setattr(storage.ts, "open", spying_open)
    layout = _layout(in_flight="one_tensor")
    storage.save(fp16_weights, tmp_path / "c", layout, 2**30)
    monkeypatch.undo()
    assert len(writes) == len(fp16_weights) and not any(opened_while_writing)  # each write done before the next open
    assert_same_bits(fp16_weights, storage.load(tmp_path / "c", layout, 2**30))
    assert_same_bits(fp16_weights, storage.load(tmp_path / "c", _layout(), 2**30))  # the same checkpoint format


def test_timed_conversion_round_trips_bit_exact_and_verifies_against_the_float16_copies(tmp_path, fp16_weights):
    backend = storage.TensorStoreBackend(_layout(timed_conversion=True, in_flight="one_tensor"), 2**30)
    backend.prepare(fp16_weights)
    backend.save(fp16_weights, tmp_path / "c")
    stored = storage.load(tmp_path / "c", _layout(), 2**30)  # what is on disk: the float32 weights, exactly
    assert_same_bits(fp16_weights, stored)
    loaded = backend.load(tmp_path / "c")
    assert {a.dtype for a in loaded.values()} == {np.dtype(np.float16)}  # the original's .half()
    assert_same_bits({n: a.astype(np.float16) for n, a in fp16_weights.items()}, loaded)
    assert backend.verify(fp16_weights, loaded) == []
    loaded[next(iter(loaded))].flat[0] += np.float16(1)
    assert backend.verify(fp16_weights, loaded) == [next(iter(loaded))]
    backend.release()
    random = weights.from_preset("tiny", "float32", "random").tensors
    with pytest.raises(ValueError, match="not exactly representable in float16"):
        backend.prepare(random)


# --- the design (no I/O) -------------------------------------------------------------------------


def _shipped_setup(**changes) -> explain.Setup:
    suite = config.load(SHIPPED_CONFIG)
    setup = explain.setup_of(suite, shapes=[(576, 576), (1536, 576), (576,)])
    return explain.Setup(**{**setup.__dict__, **changes})


def test_design_of_the_shipped_config():
    design = explain.design(_shipped_setup())
    status = {c["name"]: c["status"] for c in design.conditions}
    assert status == {"blosc": "switched", "warm": "switched", "fp16": "shared", "blocked": "switched",
                      "serial": "switched", "conversions": "switched", "chunks64": "left out", "float32": "shared"}
    assert "chunk files per run" in next(c["reason"] for c in design.conditions if c["name"] == "chunks64")
    assert [a.name for a in design.arms] == ["true", "original", "blosc", "warm", "blocked", "serial", "conversions"]
    assert design.arm("original").conditions == ("blosc", "warm", "blocked", "serial", "conversions")
    assert len(design.claims) == 12
    tests = {t["name"]: t for t in design.suite_tests}
    # the blosc arm changes only the uncompressed tests: its gzip tests are the true arm's, measured once
    blosc = design.arm("blosc").tests
    assert blosc["compression_gzip"] == "true.compression_gzip" and blosc["baseline"] == "blosc.baseline"
    assert tests["blosc.baseline"]["compression"] == "blosc-default"
    # warm loads change no save: the warm arm's loads are taken in the true arm's runs, right after each save
    warm = design.arm("warm")
    assert warm.tests == design.arm("true").tests and set(warm.warm_loads) == set(SIX)
    assert warm.metric("chunks_1mb", "load_s") == "warm_load_s" and warm.metric("chunks_1mb", "save_s") == "save_s"
    assert all(tests[f"true.{name}"]["warm_load"] is True for name in SIX)
    assert not any(t.get("warm_load") for n, t in tests.items() if not n.startswith("true."))
    assert design.arm("original").warm_loads == ()  # the original arm runs in a block of its own
    assert tests["serial.t5x_full"]["in_flight"] == "one_tensor"
    assert tests["conversions.baseline"]["timed_conversion"] is True
    assert {t.get("block") for n, t in tests.items() if n.startswith(("blocked.", "original."))} \
        == {"blocked", "original"}
    assert not any("block" in t for n, t in tests.items() if not n.startswith(("blocked.", "original.")))
    assert len(tests) == 6 * 6 - 2
    assert not any("expected" in t for t in tests.values())
    original = tests["original.baseline"]
    assert (original["compression"], original["cache_eviction"], original["in_flight"], original["timed_conversion"]) \
        == ("blosc-default", "none", "one_tensor", True)


def test_the_one_suite_is_a_valid_config_with_the_arms_blocked_and_interleaved(tmp_path):
    suite = config.load(SHIPPED_CONFIG)
    design = explain.design(explain.setup_of(suite))
    made = explain.build_suite(design, suite, tmp_path, 3)
    assert made.order == "interleaved" and made.baseline == "true.baseline" and made.num_runs == 3
    assert sorted(len(b) for b in made.blocks) == [6, 6]
    assert made.eviction_for(made.test("original.baseline")) == "none"
    assert made.test("true.baseline").warm_load and not made.test("serial.baseline").warm_load


def test_conditions_the_user_already_shares_or_cannot_switch():
    random_values = explain.design(_shipped_setup(values="random"))
    assert {c["name"]: c["status"] for c in random_values.conditions}["fp16"] == "switched"
    # timed conversions need float16 values: their arm switches both, and is judged against the fp16 arm
    assert random_values.arm("conversions").conditions == ("fp16", "conversions")
    assert random_values.arm("fp16").conditions == ("fp16",)
    checkpoint = {c["name"]: c for c in explain.design(_shipped_setup(values="checkpoint")).conditions}
    assert checkpoint["fp16"]["status"] == "not switchable" and "checkpoint" in checkpoint["fp16"]["reason"]
    bf16 = {c["name"]: c["status"] for c in explain.design(_shipped_setup(dtype="bfloat16")).conditions}
    assert bf16["conversions"] == "not switchable" and bf16["float32"] == "not switchable"
    warm_already = explain.design(_shipped_setup(cache_eviction="none"))
    assert {c["name"]: c["status"] for c in warm_already.conditions}["warm"] == "shared"
    assert warm_already.arm("warm") is None
    chosen = explain.design(_shipped_setup(), ["warm", "chunks64"])
    assert [a.name for a in chosen.arms] == ["true", "original", "warm", "chunks64"]
    assert {t["name"]: t for t in chosen.suite_tests}["chunks64.baseline"]["chunk_size_elements"] == 64
    assert {t["name"]: t for t in chosen.suite_tests}["chunks64.baseline"]["chunk_strategy"] == "halve_floor"
    only = explain.design(_shipped_setup(), ["warm"])
    assert [a.name for a in only.arms] == ["true", "original"]  # one condition: the original arm is its arm
    assert only.arm_with(["warm"]).name == "original"
    with pytest.raises(UserError, match="unknown condition"):
        explain.design(_shipped_setup(), ["wram"])


def _samples(design, means: dict[tuple[str, str, str], float], default: dict[str, float]) -> dict:
    """Three runs per suite test and figure around the given mean (per (arm, test, metric)), else default;
    a figure two arms share is measured once, by the first arm (as the design measures it), and an arm's
    warm loads are the warm_load_s of the suite test it shares."""
    out: dict[str, dict[str, list[float]]] = {}
    for arm in design.arms:
        for test, measured_by in arm.tests.items():
            for metric in ("save_s", "load_s", "size_bytes"):
                figures = out.setdefault(measured_by, {})
                if arm.metric(test, metric) in figures:
                    continue
                mean = means.get((arm.name, test, metric), default[metric])
                spread = 0.0 if metric == "size_bytes" else 0.005 * mean
                figures[arm.metric(test, metric)] = [mean - spread, mean, mean + spread]
    return out


def test_attribution_finds_the_known_culprit():
    design = explain.design(_shipped_setup())
    default = {"save_s": 10.0, "load_s": 10.0, "size_bytes": 1000.0}
    means = {}
    for arm in design.arms:
        warm = "warm" in arm.conditions
        means[(arm.name, "chunks_1mb", "load_s")] = 12.5 if warm else 3.9  # +25 % warm, -61 % cold
        means[(arm.name, "concurrency_128", "save_s")] = 7.2  # -28 %: holds under every arm ...
        if "blosc" in arm.conditions:  # ... except where the blosc baseline breaks it
            means[(arm.name, "concurrency_128", "save_s")] = 9.0
        means[(arm.name, "compression_gzip", "size_bytes")] = 630.0  # gzip; the blosc baseline is smaller than raw
        means[(arm.name, "baseline", "size_bytes")] = 670.0 if "blosc" in arm.conditions else 1000.0
    claims = {(c["test"], c["metric"]): c for c in explain.judge(design, _samples(design, means, default), 5.0)}

    load = claims[("chunks_1mb", "load_s")]
    assert load["arms"]["true"]["outcome"] == analysis.CONTRADICTED
    assert load["arms"]["warm"]["outcome"] == load["arms"]["original"]["outcome"] == analysis.CONFIRMED
    effects = {e["condition"]: e["effect"] for e in load["effects"]}
    assert effects == {"blosc": "none", "warm": "into", "blocked": "none", "serial": "none", "conversions": "none"}
    assert load["summary"] == ("chunks_1mb load +20..+30 % slower: reproduced only with warm loads "
                               "(-61 % cold vs +25 % warm); page-cache reads are not your disk's reads")

    save = claims[("concurrency_128", "save_s")]
    assert {e["condition"]: e["effect"] for e in save["effects"]}["blosc"] == "out of"
    assert save["summary"].startswith("concurrency_128 save -30..-25 % faster: holds as measured (-28 %); "
                                      "the blosc baseline would break it")

    size = claims[("compression_gzip", "size_bytes")]
    assert size["arms"]["original"]["outcome"] == analysis.CONTRADICTED
    assert {e["condition"]: e["effect"] for e in size["effects"]}["blosc"] == "toward"
    assert ("not reproduced even under the original's conditions (-6.0 % there, 1.0 points outside the band; "
            "-37 % as measured)") in size["summary"]
    assert "the blosc baseline moves it most, toward the band" in size["summary"]
    assert "synthetic" in size["summary"]

    noise = claims[("chunks_1mb", "save_s")]  # nothing differs between arms: no condition is credited
    assert all(e["effect"] == "none" for e in noise["effects"])


def test_a_move_within_the_noise_is_not_credited():
    design = explain.design(_shipped_setup(), ["warm"])
    samples = _samples(design, {}, {"save_s": 10.0, "load_s": 10.0, "size_bytes": 1.0})
    original = design.arm("original")  # with one condition, the original arm is the warm arm
    assert original.warm_loads and original.tests["chunks_1mb"] == "true.chunks_1mb"
    samples["true.chunks_1mb"][original.metric("chunks_1mb", "load_s")] = [4.0, 13.0, 22.0]  # +30 %, all over the place
    claim = next(c for c in explain.judge(design, samples, 5.0) if (c["test"], c["metric"]) == ("chunks_1mb", "load_s"))
    assert claim["effects"][0]["effect"] == "none" and claim["effects"][0]["shift_pp"] == pytest.approx(30.0)


def _shipped_document() -> dict:
    """explain.json of the shipped config's design, judged on flat made-up samples."""
    design = explain.design(_shipped_setup())
    samples = _samples(design, {}, {"save_s": 10.0, "load_s": 10.0, "size_bytes": 1000.0})
    results = {"complete": True, "weights": {"kind": "preset", "name": "smollm2-135m", "dtype": "float32",
                                             "values": "float16", "size_bytes": 1},
               "protocol": {"num_runs": 3, "seed": 1, "noise_pct": 5.0, "blocks": []}}
    return explain.build(design, results, samples)


def test_explain_document_is_plain_json_and_the_answer_is_short():
    document = _shipped_document()
    assert json.loads(json.dumps(document)) == document
    lines = explain.answer(document)
    assert lines[0].startswith("explain: 7 arms x 6 tests x 3 runs on smollm2-135m")
    assert len(lines) == 3 + 12  # header, shared, left out, one line per claim


def test_original_conditions_file_holds_the_originals_six_tests():
    original = config.load(REPO / "sweeps" / "original_conditions.json")
    assert explain.load_original() == json.loads((REPO / "sweeps" / "original_conditions.json").read_text())
    assert [t.name for t in original.tests] == SIX
    assert (original.order, original.cache_eviction, original.values, original.dtype) == \
        ("blocked", "none", "float16", "float32")
    chunks = {t.name: t.chunk_size_elements for t in original.tests}
    assert chunks == {"baseline": 64, "concurrency_128": 64, "chunks_1mb": 262144, "compression_gzip": 64,
                      "concurrency_chunks": 262144, "t5x_full": 262144}
    assert {t.name: t.concurrency_limit for t in original.tests} == dict(zip(SIX, [1, 128, 1, 1, 128, 128]))
    assert {t.name: (t.compression or {}).get("id") for t in original.tests} == {
        "baseline": "blosc-default", "concurrency_128": "blosc-default", "chunks_1mb": "blosc-default",
        "compression_gzip": "gzip", "concurrency_chunks": "blosc-default", "t5x_full": "gzip"}
    assert all(t.compression is None or t.compression.get("level", 1) == 1 for t in original.tests)
    assert all(t.in_flight == "one_tensor" and t.timed_conversion and t.chunk_strategy == "halve_floor"
               for t in original.tests)
    shipped = config.load(SHIPPED_CONFIG)
    assert {t.name: t.expected for t in original.tests} \
        == {t.name: t.expected for t in shipped.tests if not t.is_reference}


# --- end to end on the tiny model ------------------------------------------------------------


def _run_script(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    status = explain.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.slow  # the full shipped config, under every arm
def test_explain_on_the_tiny_model_end_to_end(tmp_path, capsys):
    user = json.loads(SHIPPED_CONFIG.read_text())
    user.update(model="tiny", references={}, testing={**user["testing"], "cache_eviction": "fadvise"})
    path = tmp_path / "user.json"
    path.write_text(json.dumps(user))
    out = tmp_path / "explain"
    flags = ["--config", path, "--output-dir", out, "--runs", "2", "--tests", "compression_gzip",
             "--conditions", "warm,blocked,conversions", "--seed", "4", "--no-progress"]
    status, stdout, stderr = _run_script(capsys, *flags)
    assert status == 0, stderr
    document = json.loads((out / "explain.json").read_text())
    assert document["complete"] is True
    assert [a["name"] for a in document["arms"]] == ["true", "original", "warm", "blocked", "conversions"]
    assert len(document["claims"]) == 3  # compression_gzip save, load and size
    for claim in document["claims"]:
        assert all(arm["n"] == 2 and arm["n_baseline"] == 2 for arm in claim["arms"].values())
        assert claim["summary"].startswith(claim["label"])
    lines = stdout.split("\n\n")[0].splitlines()
    assert lines[0].startswith("explain: 5 arms x 2 tests x 2 runs on tiny") and len(lines) == 3 + 3
    assert lines[2].startswith("left out: the blosc baseline, one tensor at a time (not in --conditions); ")
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["order"] == "interleaved"
    blocks = {tuple(b["tests"]) for b in results["protocol"]["blocks"]}
    assert blocks == {("original.baseline", "original.compression_gzip"),
                      ("blocked.baseline", "blocked.compression_gzip")}
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()[1:]]
    order = [r["test"] for r in journal]
    for prefix in ("original.", "blocked."):  # each blocked arm ran AAABBB in one stretch
        mine = [i for i, name in enumerate(order) if name.startswith(prefix)]
        names = [order[i] for i in mine]
        assert names == sorted(names, key=lambda n: ["baseline", "compression_gzip"].index(n.split(".")[1]))
    runs = {t["name"]: t["runs"] for t in results["tests"]}
    assert "warm.compression_gzip" not in runs  # the warm arm's loads come from the true arm's saves
    true = runs["true.compression_gzip"]  # warm load first (another process's drop_caches may still take pages)
    assert {r["warm_load_cache"] for r in true} <= {"warm", "partial"} and all(r["warm_load_s"] > 0 for r in true)
    assert {r["eviction"] for r in true} == {"fadvise"}
    warm_arm = next(a for a in document["arms"] if a["name"] == "warm")
    assert warm_arm["tests"]["compression_gzip"] == "true.compression_gzip" and warm_arm["warm_loads"]
    load = next(c for c in document["claims"] if c["metric"] == "load_s")
    assert load["arms"]["warm"]["figure"] == "warm_load_s" and load["arms"]["true"]["figure"] == "load_s"
    original = runs["original.compression_gzip"]  # the original arm is blocked: saves and warm loads of its own
    assert {r["eviction"] for r in original} == {None} and {r["load_cache"] for r in original} <= {"warm", "partial"}
    assert {r["warm_load_s"] for r in original} == {None}
    assert all(r["verified"] for rs in runs.values() for r in rs)
    assert {t["settings"]["timed_conversion"] for t in results["tests"]
            if t["name"].startswith("conversions.")} == {True}
    assert not any("were not cold" in w for w in results["warnings"])  # warm on purpose is not warned about
    status, _stdout, stderr = _run_script(capsys, *flags, "--resume")  # every run done: nothing more is measured
    assert status == 0, stderr
    again = json.loads((out / "results.json").read_text())
    assert {t["name"]: len(t["runs"]) for t in again["tests"]} == {name: len(rs) for name, rs in runs.items()}
    assert json.loads((out / "explain.json").read_text())["claims"] == document["claims"]


def test_bad_flags_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "explain"
    for flags in (["--conditions", "wram"], ["--tests", "nope"], ["--values", "float16", "--weights", str(REPO)]):
        status, _stdout, stderr = _run_script(capsys, "--model", "tiny", "--output-dir", out, *flags)
        assert status == 2 and stderr.count("\n") == 1 and stderr.startswith("error: --"), stderr
        assert not out.exists()


def test_explain_with_values_of_its_own_holds_two_sets_of_weights(tmp_path):
    """Random values in the user's config: the fp16 arm and the timed conversions need float16 values,
    so the suite holds both sets of weights and each test gets its own."""
    from ckptbench.bench import suite as runner
    from ckptbench.bench.context import RunContext
    from ckptbench.documents import results as results_mod

    configured = [{"name": "baseline", "chunk_size_elements": 16384, "concurrency_limit": 1, "compression": "none"},
                  {"name": "gzip", "chunk_size_elements": 16384, "concurrency_limit": 1, "compression": "gzip",
                   "expected": {"size_pct": [-40, -30]}}]
    user = config.from_dict(minimal_config(values="random", testing={"num_runs": 3, "cache_eviction": "fadvise"},
                                           test_configurations=configured))
    design = explain.design(explain.setup_of(user), ["fp16", "conversions"])
    assert [(a.name, a.conditions) for a in design.arms] == [("true", ()), ("original", ("fp16", "conversions")),
                                                             ("fp16", ("fp16",))]
    suite = explain.build_suite(design, user, tmp_path / "out", 3)  # 3: sizes vary by a byte, and 2 runs give no interval
    outcome = runner.run_suite(RunContext(suite))
    tests = {t["name"]: t for t in outcome.tests}
    assert all(r["verified"] for t in tests.values() for r in t["runs"])
    assert tests["fp16.gzip"]["settings"]["values"] == "float16" and tests["true.gzip"]["settings"]["values"] is None
    assert tests["original.gzip"]["settings"]["timed_conversion"] is True
    sizes = {name: t["stats"]["size_bytes"]["mean"] for name, t in tests.items()}
    assert sizes["fp16.gzip"] == pytest.approx(sizes["original.gzip"], rel=1e-4)  # gzip's bytes vary by a byte or so
    assert sizes["fp16.gzip"] < 0.8 * sizes["true.gzip"]  # float16 values compress
    samples = {t["name"]: results_mod.samples(t["runs"], int(outcome.document["weights"]["size_bytes"]))
               for t in outcome.tests}
    claim = explain.build(design, outcome.document, samples)["claims"][0]
    assert claim["arms"]["true"]["outcome"] == analysis.CONTRADICTED  # random values: gzip saves about 7 %
    assert claim["arms"]["fp16"]["outcome"] == analysis.CONFIRMED  # float16 values: about 37 %
    assert {e["condition"]: e["effect"] for e in claim["effects"]} == {"fp16": "into", "conversions": "none"}
    assert claim["summary"].startswith("gzip size -40..-30 % smaller: reproduced only with float16 values")
