"""Sweeps: expanding lists into a cross product, sizes, invalid points, a real CLI sweep on `tiny`,
and the example configs shipped in sweeps/."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, run_config

from ckptbench.core import units
from ckptbench.core.errors import UserError
from ckptbench.documents import results
from ckptbench.figures import sweep as sweep_plot
from ckptbench.spec import config
from ckptbench.spec.sweep import iter_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SWEEPS = REPO / "sweeps"
MiB = 2**20


# --- iter_sweep ---------------------------------------------------------------------------------------------


def test_cross_product_count_names_and_fixed_fields():
    raw = {"name": "s", "chunk_bytes": ["64KB", "256KB", "1MB"], "concurrency_limit": [1, 32],
           "compression": "none", "format": "zarr2", "description": "d"}
    points = list(iter_sweep(raw))
    assert len(points) == 6
    assert [p["name"] for p in points] == [
        "s_chunk=64KB_conc=1", "s_chunk=64KB_conc=32", "s_chunk=256KB_conc=1",
        "s_chunk=256KB_conc=32", "s_chunk=1MB_conc=1", "s_chunk=1MB_conc=32"]
    for point in points:
        assert point["compression"] == "none" and point["format"] == "zarr2" and point["description"] == "d"
        assert set(point["_sweep"]) == {"chunk_bytes", "concurrency_limit"}
        assert point["chunk_bytes"] == point["_sweep"]["chunk_bytes"]
    assert points[3]["_sweep"] == {"chunk_bytes": "256KB", "concurrency_limit": 32}
    assert raw["chunk_bytes"] == ["64KB", "256KB", "1MB"]  # the input is not modified


def test_a_test_without_lists_is_one_point_and_keeps_its_name():
    raw = {"name": "plain", "chunk_bytes": "1MB", "concurrency_limit": 4, "compression": {"id": "gzip", "level": 6}}
    assert list(iter_sweep(raw)) == [raw]


def test_point_names_label_every_swept_field():
    raw = {"name": "x", "chunk_size_elements": [16384], "chunk_strategy": ["divisor"], "concurrency_limit": 2,
           "compression": ["none", {"id": "zstd", "level": 3}, {"id": "blosc", "cname": "zstd", "clevel": 3}],
           "kvstore": ["memory"], "data_copy_concurrency": [None, 2], "file_io_sync": [True, False]}
    names = [p["name"] for p in list(iter_sweep(raw))]
    assert len(names) == 1 * 1 * 3 * 1 * 2 * 2
    assert names[0] == "x_elems=16384_strategy=divisor_comp=none_kv=memory_copy=default_sync=on"
    assert "x_elems=16384_strategy=divisor_comp=zstd-3_kv=memory_copy=2_sync=off" in names
    assert "x_elems=16384_strategy=divisor_comp=blosc-zstd-3_kv=memory_copy=default_sync=on" in names


def test_loaded_sweep_points_carry_their_settings():
    suite = config.from_dict({"test_configurations": [
        {"name": "s", "chunk_bytes": ["64KB", "t5x"], "concurrency_limit": [1, 16], "compression": "gzip"}]})
    assert [t.name for t in suite.tests] == ["s_chunk=64KB_conc=1", "s_chunk=64KB_conc=16",
                                             "s_chunk=64MB_conc=1", "s_chunk=64MB_conc=16"]
    point = suite.test("s_chunk=64MB_conc=16")
    assert (point.chunk_bytes, point.concurrency_limit) == (64 * MiB, 16)
    assert point.compression == {"id": "gzip", "level": 1}  # the fixed field, normalized, on every point
    assert point.sweep == {"chunk_bytes": "t5x", "concurrency_limit": 16}
    assert suite.baseline == "s_chunk=64KB_conc=1"  # no baseline given: the first point
    assert suite.skipped == ()


# --- sizes --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("64KB", 65536), ("t5x", 64 * MiB), ("T5X", 64 * MiB), ("1MiB", MiB), ("1MB", MiB), ("16MB", 16 * MiB),
    (" 256 KB ", 262144), ("1.5MB", 3 * MiB // 2), ("2GiB", 2 * 2**30), ("512B", 512), ("4096", 4096), (4096, 4096),
])
def test_parse_size(text, expected):
    assert units.parse_size(text) == expected


@pytest.mark.parametrize("text", ["0KB", "5GB", "0"])
def test_parse_size_out_of_range_is_a_user_error(text):
    with pytest.raises(UserError, match="out of range"):
        units.parse_size(text, "test 's' field chunk_bytes")


@pytest.mark.parametrize("size, label", [(65536, "64KB"), (MiB, "1MB"), (64 * MiB, "64MB"), (2**30, "1GB"),
                                         (3 * MiB // 2, "1536KB"), (1000, "1000B")])
def test_size_label(size, label):
    assert units.size_label(size) == label
    assert units.parse_size(label) == size


def test_a_size_string_that_is_not_a_size_is_rejected_in_a_config():
    with pytest.raises(UserError, match="not a size"):
        config.from_dict({"test_configurations": [{"name": "s", "chunk_bytes": ["64KB", "lots"], "concurrency_limit": 1}]})


# --- invalid points -----------------------------------------------------------------------------------------


def test_invalid_combinations_are_skipped_with_a_reason():
    suite = config.from_dict({"test_configurations": [
        {"name": "s", "chunk_bytes": "1MB", "concurrency_limit": 4,
         "compression": ["none", "bz2", {"id": "zstd", "level": 3}], "format": ["zarr2", "zarr3"]}]})
    assert [t.name for t in suite.tests] == ["s_comp=none_fmt=zarr2", "s_comp=none_fmt=zarr3", "s_comp=bz2-1_fmt=zarr2",
                                             "s_comp=zstd-3_fmt=zarr2", "s_comp=zstd-3_fmt=zarr3"]
    assert len(suite.skipped) == 1
    name, reason = suite.skipped[0]
    assert name == "s_comp=bz2-1_fmt=zarr3"
    assert "zarr3" in reason and "bz2" in reason and "\n" not in reason
    assert not reason.startswith("config")  # the reason, without the location prefix
    assert suite.to_json()["skipped"] == [[name, reason]]


def test_shard_points_that_cannot_be_sharded_are_skipped():
    suite = config.from_dict({"test_configurations": [
        {"name": "sh", "chunk_bytes": "1MB", "concurrency_limit": 4, "shard_bytes": ["64KB", "16MB"],
         "format": ["zarr2", "zarr3"]}]})
    assert [t.name for t in suite.tests] == ["sh_fmt=zarr3_shard=16MB"]
    reasons = dict(suite.skipped)
    assert set(reasons) == {"sh_fmt=zarr2_shard=64KB", "sh_fmt=zarr2_shard=16MB", "sh_fmt=zarr3_shard=64KB"}
    assert "zarr3" in reasons["sh_fmt=zarr2_shard=16MB"]
    assert "smaller than chunk_bytes" in reasons["sh_fmt=zarr3_shard=64KB"]


def test_a_sweep_with_no_valid_point_is_a_user_error():
    with pytest.raises(UserError) as caught:
        config.from_dict({"test_configurations": [
            {"name": "dead", "chunk_bytes": "1MB", "concurrency_limit": [1, 8], "compression": "bz2",
             "format": "zarr3"}]})
    message = str(caught.value)
    assert "'dead'" in message and "no combination" in message and "bz2" in message and "\n" not in message


def test_a_single_invalid_test_is_an_error_not_a_skip():
    with pytest.raises(UserError, match="zarr3 has no 'zlib' codec"):
        config.from_dict({"test_configurations": [
            {"name": "one", "chunk_bytes": "1MB", "concurrency_limit": 1, "compression": "zlib", "format": "zarr3"}]})


def test_the_baseline_can_name_a_sweep_point_but_not_a_skipped_one():
    raw = {"name": "s", "chunk_bytes": ["64KB", "1MB"], "concurrency_limit": 1, "format": "zarr3",
           "compression": ["none", "bz2"]}
    assert config.from_dict({"baseline": "s_chunk=1MB_comp=none", "test_configurations": [raw]}).baseline == \
        "s_chunk=1MB_comp=none"
    with pytest.raises(UserError, match="baseline"):
        config.from_dict({"baseline": "s_chunk=1MB_comp=bz2-1", "test_configurations": [raw]})


# --- a real sweep through the CLI ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_sweep(tmp_path_factory):

    root = tmp_path_factory.mktemp("sweep")
    cfg = {
        "model": "tiny",
        "references": {"device_ceiling": True},
        "testing": {"num_runs": 1, "seed": 3},
        "test_configurations": [
            {"name": "s", "chunk_bytes": ["64KB", "1MB"], "concurrency_limit": 16,
             "compression": ["none", "bz2"], "format": ["zarr2", "zarr3"]},
        ],
    }
    return run_config(root, cfg, "sweep.json")


def test_cli_sweep_runs_every_valid_point(cli_sweep):
    status, document, _ = cli_sweep
    assert status == 0 and document["complete"] is True
    names = [t["name"] for t in document["tests"]]
    assert names == ["s_chunk=64KB_comp=none_fmt=zarr2", "s_chunk=64KB_comp=none_fmt=zarr3",
                     "s_chunk=64KB_comp=bz2-1_fmt=zarr2", "s_chunk=1MB_comp=none_fmt=zarr2",
                     "s_chunk=1MB_comp=none_fmt=zarr3", "s_chunk=1MB_comp=bz2-1_fmt=zarr2", "device_ceiling"]
    assert document["baseline"] == names[0]
    for test in document["tests"]:
        assert [r["verified"] for r in test["runs"]] == [True], test["name"]
        if test["name"] != "device_ceiling":
            assert set(test["settings"]["sweep"]) == {"chunk_bytes", "compression", "format"}
    by_name = {t["name"]: t for t in document["tests"]}
    # 64 KB chunks make more files than 1 MB ones: the swept setting really reached TensorStore
    assert by_name["s_chunk=64KB_comp=none_fmt=zarr2"]["runs"][0]["n_files"] > \
        by_name["s_chunk=1MB_comp=none_fmt=zarr2"]["runs"][0]["n_files"]
    assert by_name["s_chunk=64KB_comp=bz2-1_fmt=zarr2"]["runs"][0]["size_bytes"] < \
        by_name["s_chunk=64KB_comp=none_fmt=zarr2"]["runs"][0]["size_bytes"]


def test_cli_sweep_lists_skipped_points(cli_sweep):
    _, document, _ = cli_sweep
    skipped = document["skipped_tests"]
    assert [s["name"] for s in skipped] == ["s_chunk=64KB_comp=bz2-1_fmt=zarr3", "s_chunk=1MB_comp=bz2-1_fmt=zarr3"]
    assert all("zarr3" in s["reason"] and "bz2" in s["reason"] for s in skipped)
    assert sum(w.startswith("sweep point s_chunk=") and "skipped" in w for w in document["warnings"]) == 2
    assert not any(t["name"] == s["name"] for t in document["tests"] for s in skipped)


def test_cli_sweep_draws_the_sweep_figure(cli_sweep):
    _, _, out = cli_sweep
    figure = out / sweep_plot.SWEEP_FILE
    assert figure.name == "sweep_analysis.png"
    data = figure.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000


def test_no_sweep_figure_without_a_sweep(tmp_path):
    document = {"tests": [{"name": "a", "settings": {"sweep": None}}]}
    assert sweep_plot.draw_sweep(document, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


# --- the example configs in sweeps/ -------------------------------------------------------------------------

REFS = ["safetensors", "torch_save", "device_ceiling"]


def test_the_shipped_sweeps_are_exactly_these():
    # tune_space.json is not a suite config but `tune`'s search space (tests/test_tune.py checks it)
    assert sorted(p.name for p in SWEEPS.glob("*.json")) == ["async_save.json", "at_scale.json", "chunks_x_concurrency.json",
                                                             "compression.json", "formats.json",
                                                             "llama2_7b_memory.json", "original_conditions.json",
                                                             "tensor_parallel.json", "tune_space.json",
                                                             "versus_peers.json", "versus_peers_7b.json"]


def test_the_7b_peers_sweep_is_the_peers_sweep_at_13_gb():
    """Issue 26, item 6: the same protocol at llama-2-7b, cut to what a 24 GB machine holds (no fastsafetensors)."""
    small, large = config.load(SWEEPS / "versus_peers.json"), config.load(SWEEPS / "versus_peers_7b.json")
    assert (large.model, large.dtype, large.num_runs) == ("llama-2-7b", "bfloat16", 3)
    assert {t.backend for t in large.tests if t.is_reference} == {
        t.backend for t in small.tests if t.is_reference} - {"fastsafetensors"}
    assert {t.name for t in large.tests} < {t.name for t in small.tests}
    assert {t.load_into for t in large.tests} == {"preallocated"}
    assert (large.confirm_rounds, large.confirm_blocks) == (small.confirm_rounds, small.confirm_blocks)


def test_the_peers_sweep_measures_every_peer_beside_tensorstore():
    """Issue 19: TensorStore's fastest loading layouts and every reference row, in one run, on open_llama_3b."""
    suite = config.load(SWEEPS / "versus_peers.json")
    assert (suite.model, suite.dtype, suite.num_runs) == ("open_llama_3b", "bfloat16", 3)
    from ckptbench.spec.references import REFERENCES
    assert {t.backend for t in suite.tests if t.is_reference} == set(REFERENCES)
    mine = [t for t in suite.tests if not t.is_reference]
    assert {t.file_io_mode for t in mine} == {"default", "direct"}
    assert {t.format for t in mine} == {"zarr2", "zarr3"} and any(t.shard_bytes for t in mine)
    winner = suite.test("zarr3_512KB_in_64MB_shards")  # tune's winner
    assert (winner.format, winner.chunk_bytes, winner.shard_bytes, winner.file_io_mode) == (
        "zarr3", 512 * 2**10, 64 * 2**20, "default")
    # On equal terms: one destination for every row that can fill preallocated arrays (all of them), and each
    # peer with a knob tried with as many settings as TensorStore has layouts, each setting different
    assert suite.load_into == "preallocated"
    assert {(t.load_into, t.load_into_note) for t in suite.tests} == {("preallocated", None)}
    for kind in ("runai_streamer", "fastsafetensors", "torch_dcp"):
        rows = [t.reference_settings for t in suite.tests if t.backend == kind]
        assert len(rows) == len(mine) and all(a != b for i, a in enumerate(rows) for b in rows[i + 1:]), kind


def test_the_memory_sweep_runs_every_reference_row_and_the_heaviest_tensorstore_rows():
    """Issue 20: llama-2-7b in bfloat16, the reference rows and two TensorStore rows, 2 runs each."""
    from ckptbench.bench import capacity
    from ckptbench.spec.references import REFERENCES

    suite = config.load(SWEEPS / "llama2_7b_memory.json")
    assert (suite.model, suite.dtype, suite.num_runs) == ("llama-2-7b", "bfloat16", 2)
    assert {t.backend for t in suite.tests if t.is_reference} == set(REFERENCES)
    model_bytes = 13_476_839_424
    need, hungriest = capacity.memory_need(suite, model_bytes)
    assert hungriest == "torch_dcp" and need < 24 * 2**30  # fits the 24 GB machine it was measured on


def test_tensor_parallel_sweep():
    """Issue 21: tp 1, 2, 4 on tiny; row chunks against tp_aligned; zarr3 sharded; get_slice, torch.load, DCP."""
    suite = config.load(SWEEPS / "tensor_parallel.json")
    assert suite.model == "tiny"
    assert {t.tp for t in suite.tests} == {1, 2, 4} and all(t.processes == t.tp for t in suite.tests)
    strategies = {t.chunk_strategy for t in suite.tests if t.backend == "tensorstore"}
    assert strategies == {"rows", "tp_aligned"} and any(t.shard_bytes for t in suite.tests)
    assert {t.backend for t in suite.tests} >= {"safetensors", "torch_save", "torch_dcp", "device_ceiling"}
    assert suite.skipped == ()
    assert suite.baseline == "zarr2_rows"


def test_at_scale_sweep():
    """Issue 'numbers that carry over': chunks 1 MiB..64 MiB, concurrency, zarr3 sharding, OCDBT, file_io_mode."""
    suite = config.load(SWEEPS / "at_scale.json")
    tensorstore = [t for t in suite.tests if t.backend == "tensorstore"]
    assert {t.chunk_bytes for t in tensorstore} == {MiB, 4 * MiB, 16 * MiB, 64 * MiB}
    assert {t.concurrency_limit for t in tensorstore} >= {16, 128}
    assert any(t.shard_bytes for t in tensorstore) and any(t.kvstore == "ocdbt" for t in tensorstore)
    assert {t.file_io_mode for t in tensorstore} == {"default", "direct"}
    assert all(t.compression is None for t in tensorstore)  # O_DIRECT needs raw chunks
    assert (suite.model, suite.dtype, suite.skipped) == ("tinyllama-1.1b", "bfloat16", ())
    assert [t.name for t in suite.tests][-3:] == REFS


def test_chunks_x_concurrency_sweep():
    suite = config.load(SWEEPS / "chunks_x_concurrency.json")
    data = json.loads((SWEEPS / "chunks_x_concurrency.json").read_text())
    raw = data["test_configurations"][0]
    chunks, concurrencies = raw["chunk_bytes"], raw["concurrency_limit"]
    assert set(chunks) <= {"16KB", "64KB", "256KB", "1MB", "4MB", "16MB", "64MB"} and "64KB" in chunks
    assert set(concurrencies) <= {1, 16, 64, 256} and 1 in concurrencies
    assert len(chunks) * len(concurrencies) >= 20  # a trimmed grid still covers most of it
    assert len(suite.tests) == len(chunks) * len(concurrencies) + 3
    assert [t.name for t in suite.tests][-3:] == REFS
    assert suite.baseline == "sweep_chunk=64KB_conc=1"
    base = suite.test(suite.baseline)
    assert (base.chunk_bytes, base.concurrency_limit, base.compression, base.format) == (65536, 1, None, "zarr2")
    assert all(t.compression is None and t.format == "zarr2" for t in suite.tests if t.backend == "tensorstore")
    assert suite.num_runs == 3 and suite.model == "smollm2-135m" and suite.skipped == ()
    assert "minutes" in data["description"]  # the runtime estimate


def test_compression_sweep():
    suite = config.load(SWEEPS / "compression.json")
    swept = [t for t in suite.tests if t.backend == "tensorstore"]
    assert [t.name for t in swept] == [f"sweep_comp={label}" for label in (
        "none", "gzip-1", "gzip-6", "zstd-1", "zstd-3", "blosc-lz4-5-shuffle", "blosc-zstd-3-bitshuffle", "bz2-1",
        "blosc-default")]
    assert all((t.chunk_bytes, t.concurrency_limit, t.format) == (MiB, 64, "zarr2") for t in swept)
    assert [t.compression for t in swept][5:7] == [
        {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1},
        {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2}]
    assert suite.baseline == "sweep_comp=none" and suite.skipped == ()
    assert len(suite.tests) == 10 and suite.tests[-1].backend == "device_ceiling"


def test_formats_sweep():
    suite = config.load(SWEEPS / "formats.json")
    assert len(suite.tests) == 10 and [t.name for t in suite.tests][-3:] == REFS
    tests = {t.name: t for t in suite.tests}
    sharded = tests["zarr3_sharded"]
    assert (sharded.format, sharded.chunk_bytes, sharded.shard_bytes) == ("zarr3", 64 * 1024, 16 * MiB)
    ocdbt = tests["ocdbt_zstd1"]
    assert (ocdbt.format, ocdbt.kvstore, ocdbt.compression) == ("zarr3", "ocdbt", {"id": "zstd", "level": 1})
    assert {(t.kvstore, None if t.compression is None else t.compression["id"])
            for t in suite.tests if t.kvstore == "memory"} == {("memory", None), ("memory", "gzip")}
    # Not durable: the file_io_sync-off test, and the memory kvstore tests (nothing reaches a disk).
    assert sorted(t.name for t in suite.tests if not t.durable) == ["memory_gzip", "memory_raw", "zarr2_raw_nosync"]
    assert (tests["zarr2_raw"].format, tests["zarr3_raw"].format) == ("zarr2", "zarr3")
    assert suite.baseline == "zarr2_raw"


@pytest.mark.slow  # a shipped sweep, whole
@pytest.mark.parametrize("name", ["compression.json", "formats.json"])
def test_shipped_sweep_runs_on_tiny(tmp_path, run_cli, name):
    status, out, err = run_cli("--config", SWEEPS / name, "--model", "tiny", "--runs", 1,
                               "--output-dir", tmp_path / "out", "--no-progress", "--seed", 1)
    assert status == 0, err
    document = json.loads((tmp_path / "out" / results.RESULTS_FILE).read_text())
    assert document["complete"] is True
    assert len(document["tests"]) == len(config.load(SWEEPS / name).tests)
    assert all(r["verified"] is True for t in document["tests"] for r in t["runs"])
    # a save that is not durable is not the device's figure: it has no share of the ceiling
    assert all((t["pct_of_ceiling"]["save_gbps"] is not None) == t["durable"] for t in document["tests"])
    assert all(pct <= 100.0 for t in document["tests"] for pct in t["pct_of_ceiling"].values() if pct is not None)
