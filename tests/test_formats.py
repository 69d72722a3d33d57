"""Storage formats on real TensorStore in temporary folders: every compressor, zarr3 (plain and sharded),
OCDBT, the memory kvstore, TensorStore's context settings, fill-value chunks and the chunk strategies."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from ckptbench.bench import measure, storage, verify
from ckptbench.core import records
from ckptbench.core.errors import UserError
from ckptbench.spec import chunking, compression, config

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
ITEMSIZE = {"float32": 4, "bfloat16": 2}
BUDGET = 100  # elements per chunk: every array below spans several chunks, some of them partial
INFLIGHT = 2**30

# What a user writes -> the `compressor` TensorStore must put in .zarray (keys it must hold).
COMPRESSORS: dict[str, tuple[object, dict | None]] = {
    "none": ("none", None),
    "gzip-6": ({"id": "gzip", "level": 6}, {"id": "gzip", "level": 6}),
    "gzip-default": ("gzip", {"id": "gzip", "level": 1}),
    "zlib-3": ({"id": "zlib", "level": 3}, {"id": "zlib", "level": 3}),
    "bz2-9": ({"id": "bz2", "level": 9}, {"id": "bz2", "level": 9}),
    "zstd-5": ({"id": "zstd", "level": 5}, {"id": "zstd", "level": 5}),
    **{f"blosc-{cname}-shuffle{shuffle}": (
        {"id": "blosc", "cname": cname, "clevel": 4, "shuffle": shuffle},
        {"id": "blosc", "cname": cname, "clevel": 4, "shuffle": shuffle})
       for cname in ("lz4", "zstd") for shuffle in compression.BLOSC_SHUFFLES},
    # the key is omitted, so TensorStore chooses: blosc lz4, clevel 5, automatic shuffle
    "blosc-default": ("blosc-default", {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": -1}),
}


def _tensors(dtype: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    special = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-40, -1.5], dtype=np.float32)
    edge = rng.standard_normal((37, 11), dtype=np.float32)  # halve: chunk [10, 6], edge chunks in both axes
    edge.reshape(-1)[: special.size] = special
    arrays = {
        "model.layers.0.self_attn.q_proj.weight": edge,
        "model.norm.weight": rng.standard_normal(1001, dtype=np.float32),
        "lm_head.weight": rng.standard_normal((20, 5), dtype=np.float32),
        "model.embed_tokens.weight": rng.standard_normal((64, 48), dtype=np.float32),  # 3072 elements: many chunks
    }
    return {k: np.ascontiguousarray(v.astype(DTYPES[dtype])) for k, v in arrays.items()}


def _layout(dtype: str = "float32", kind: object = "none", budget: int = BUDGET, **fields) -> storage.Layout:
    test = config.TestSpec(name="t", concurrency_limit=fields.pop("concurrency_limit", 8), chunk_size_elements=budget,
                           compression=compression.normalize(kind), **fields)
    return storage.Layout.of(test, dtype)


def _files(directory: Path) -> list[Path]:
    return sorted(Path(root, f).relative_to(directory) for root, _dirs, names in os.walk(directory) for f in names)


def _n_chunks(shape, chunk) -> int:
    return math.prod(math.ceil(d / c) for d, c in zip(shape, chunk))


def _flip_one_bit(loaded: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    tampered = dict(loaded)
    array = np.array(tampered[name], copy=True)
    array.reshape(-1).view(np.uint8)[1] ^= 0x10
    tampered[name] = array
    return tampered


# --- zarr v2: every compressor ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", list(COMPRESSORS))
def test_every_zarr2_compressor_round_trips_and_is_on_disk(tmp_path, kind, dtype):
    written, expected = COMPRESSORS[kind]
    tensors = _tensors(dtype)
    layout = _layout(dtype, written)
    storage.save(tensors, tmp_path / "ckpt", layout, INFLIGHT)
    loaded = storage.load(tmp_path / "ckpt", layout, INFLIGHT)
    assert verify.mismatches(tensors, loaded) == []
    assert {k: v.dtype for k, v in loaded.items()} == {k: np.dtype(DTYPES[dtype]) for k in tensors}
    # the comparison is able to fail
    assert verify.mismatches(tensors, _flip_one_bit(loaded, "model.norm.weight")) == ["model.norm.weight"]
    for name, array in tensors.items():
        meta = json.loads((tmp_path / "ckpt" / name / ".zarray").read_text())
        assert "compressor" in meta, (kind, name)  # TensorStore always writes the key back
        if expected is None:
            assert meta["compressor"] is None, (kind, name)
        else:
            assert {k: meta["compressor"].get(k) for k in expected} == expected, (kind, name, meta["compressor"])
        assert meta["dtype"] == storage.ZARR_V2_DTYPES[dtype]
        assert meta["chunks"] == chunking.chunk_shape(array.shape, BUDGET)


def test_blosc_default_omits_the_key_that_none_writes_as_null():
    meta = {"shape": [4], "chunks": [2], "dtype": "<f4"}
    assert "compressor" not in _layout(kind="blosc-default").metadata((4,), "float32")
    assert _layout(kind="none").metadata((4,), "float32")["compressor"] is None
    assert compression.apply_to_zarr_v2_metadata(meta, {"id": "blosc-default"}) == meta


def test_compressed_chunks_really_are_compressed(tmp_path):
    """A compressible tensor: every compressor stores fewer bytes than raw; raw stores exactly the padded chunks."""
    tensors = {"w": np.tile(np.arange(64, dtype=np.float32), 64).reshape(64, 64)}
    sizes = {}
    for kind, (written, _) in COMPRESSORS.items():
        directory = tmp_path / kind
        storage.save(tensors, directory, _layout(kind=written, budget=1024), INFLIGHT)
        sizes[kind] = sum((directory / "w" / f).stat().st_size for f in os.listdir(directory / "w") if f != ".zarray")
    assert sizes["none"] == 64 * 64 * 4
    assert all(size < sizes["none"] for kind, size in sizes.items() if kind != "none"), sizes


# --- zarr3 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", ["none", {"id": "gzip", "level": 5}, {"id": "zstd", "level": 2},
                                  {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2}])
def test_zarr3_plain_round_trips(tmp_path, dtype, kind):
    tensors = _tensors(dtype)
    layout = _layout(dtype, kind, format="zarr3")
    storage.save(tensors, tmp_path / "ckpt", layout, INFLIGHT)
    assert verify.mismatches(tensors, storage.load(tmp_path / "ckpt", layout, INFLIGHT)) == []
    for name, array in tensors.items():
        assert not (tmp_path / "ckpt" / name / ".zarray").exists()
        meta = json.loads((tmp_path / "ckpt" / name / "zarr.json").read_text())
        assert meta["zarr_format"] == 3 and meta["data_type"] == dtype and meta["shape"] == list(array.shape)
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == chunking.chunk_shape(array.shape, BUDGET)
        codecs = [c["name"] for c in meta["codecs"]]
        assert codecs[0] == "bytes" and "sharding_indexed" not in codecs
        assert codecs[1:] == ([] if kind == "none" else [kind["id"]])
    if isinstance(kind, dict) and kind["id"] == "blosc":
        blosc = json.loads((tmp_path / "ckpt" / "lm_head.weight" / "zarr.json").read_text())["codecs"][1]
        assert blosc["configuration"]["shuffle"] == "bitshuffle"
        assert blosc["configuration"]["typesize"] == ITEMSIZE[dtype]


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_zarr3_sharding_packs_whole_inner_chunks(tmp_path, dtype):
    tensors = _tensors(dtype)
    shard_bytes = 1000 * ITEMSIZE[dtype]  # ten inner chunks of at most 100 elements
    layout = storage.Layout.of(config.TestSpec(name="t", concurrency_limit=8, chunk_size_elements=BUDGET,
                                               format="zarr3", shard_bytes=shard_bytes), dtype)
    assert layout.shard_budget_elements == 1000
    storage.save(tensors, tmp_path / "ckpt", layout, INFLIGHT)
    assert verify.mismatches(tensors, storage.load(tmp_path / "ckpt", layout, INFLIGHT)) == []
    n_shard_files = 0
    for name, array in tensors.items():
        meta = json.loads((tmp_path / "ckpt" / name / "zarr.json").read_text())
        (sharding,) = meta["codecs"]
        assert sharding["name"] == "sharding_indexed"
        inner = sharding["configuration"]["chunk_shape"]
        shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
        assert inner == chunking.chunk_shape(array.shape, BUDGET)
        assert all(s % c == 0 for s, c in zip(shard, inner)), (name, shard, inner)
        assert math.prod(shard) >= math.prod(inner)
        assert [c["name"] for c in sharding["configuration"]["codecs"]] == ["bytes"]
        shard_files = [f for f in _files(tmp_path / "ckpt" / name) if f.name != "zarr.json"]
        assert len(shard_files) == _n_chunks(array.shape, shard)
        n_shard_files += len(shard_files)
    # the embedding (3072 elements, 35 inner chunks) must be packed: fewer shards than inner chunks
    embed = tensors["model.embed_tokens.weight"]
    embed_shards = [f for f in _files(tmp_path / "ckpt" / "model.embed_tokens.weight") if f.name != "zarr.json"]
    assert len(embed_shards) < _n_chunks(embed.shape, chunking.chunk_shape(embed.shape, BUDGET))


def test_sharding_from_a_config_file_is_a_multiple_of_the_inner_chunk(tmp_path):
    suite = config.from_dict({"test_configurations": [
        {"name": "sh", "format": "zarr3", "chunk_bytes": "64KB", "shard_bytes": "16MB", "concurrency_limit": 4}]})
    test = suite.test("sh")
    assert (test.chunk_bytes, test.shard_bytes) == (65536, 16 * 2**20)
    layout = storage.Layout.of(test, "float32")
    shape = (1000, 777)
    meta = layout.metadata(shape, "float32")
    inner = meta["codecs"][0]["configuration"]["chunk_shape"]
    shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
    assert math.prod(inner) <= 16384
    assert all(s % c == 0 for s, c in zip(shard, inner))
    assert math.prod(shard) * 4 <= 16 * 2**20 and math.prod(shard) > math.prod(inner)


@pytest.mark.parametrize("codec", ["bz2", "zlib", {"id": "bz2", "level": 3}, {"id": "zlib", "level": 9}])
def test_zarr3_rejects_bz2_and_zlib_at_config_time(codec):
    with pytest.raises(UserError) as caught:
        config.from_dict({"test_configurations": [
            {"name": "z3", "format": "zarr3", "chunk_bytes": "1MB", "concurrency_limit": 4, "compression": codec}]})
    message = str(caught.value)
    assert "\n" not in message
    assert "'z3'" in message and "zarr3" in message
    assert (codec if isinstance(codec, str) else codec["id"]) in message


def test_shard_bytes_needs_zarr3_and_whole_chunks():
    base = {"name": "s", "chunk_bytes": "1MB", "concurrency_limit": 4}
    with pytest.raises(UserError, match="zarr3"):
        config.from_dict({"test_configurations": [{**base, "shard_bytes": "16MB"}]})
    with pytest.raises(UserError, match="smaller than chunk_bytes"):
        config.from_dict({"test_configurations": [{**base, "format": "zarr3", "shard_bytes": "64KB"}]})


# --- OCDBT and the memory kvstore -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_ocdbt_round_trips_into_one_database(tmp_path, dtype):
    tensors = _tensors(dtype)
    suite = config.from_dict({"test_configurations": [
        {"name": "orbax", "format": "zarr3", "kvstore": "ocdbt", "chunk_bytes": 400, "concurrency_limit": 8,
         "compression": {"id": "zstd", "level": 1}}]})
    backend = storage.TensorStoreBackend(storage.Layout.of(suite.test("orbax"), dtype), INFLIGHT)
    directory = tmp_path / "ckpt"
    backend.save(tensors, directory)
    assert verify.mismatches(tensors, backend.load(directory)) == []
    files = _files(directory)
    assert Path(storage.OCDBT_DIR, "manifest.ocdbt") in files
    # everything but the checkpoint's own manifest lives in the database folder: no per-array folders
    assert [f for f in files if f.parts[0] != storage.OCDBT_DIR] in ([], [Path(storage.MANIFEST)])
    assert not any((directory / name).exists() for name in tensors)
    n_chunks = sum(_n_chunks(a.shape, backend.layout.chunk_shape(a.shape)) for a in tensors.values())
    assert len(files) < n_chunks / 3  # one database of a few data files, not one file per chunk
    size_bytes, disk_bytes, n_files = backend.footprint(directory)
    assert n_files == len(files)
    assert size_bytes == sum((directory / f).stat().st_size for f in files)


@pytest.mark.parametrize("kind", ["none", {"id": "gzip", "level": 1}])
def test_memory_kvstore_round_trips_and_counts_its_keys(tmp_path, kind):
    tensors = _tensors("float32")
    layout = _layout("float32", kind, kvstore="memory")
    backend = storage.TensorStoreBackend(layout, INFLIGHT)
    directory = tmp_path / "run"
    backend.save(tensors, directory)
    assert verify.mismatches(tensors, backend.load(directory)) == []
    # nothing of the arrays touches the disk (at most the checkpoint's manifest)
    on_disk = _files(directory) if directory.exists() else []
    assert set(on_disk) <= {Path(storage.MANIFEST)}, on_disk
    size_bytes, disk_bytes, n_keys = backend.footprint(directory)
    chunk_keys = sum(_n_chunks(a.shape, chunking.chunk_shape(a.shape, BUDGET)) for a in tensors.values())
    manifest_in_memory = Path(storage.MANIFEST) not in on_disk
    assert n_keys == chunk_keys + len(tensors) + manifest_in_memory  # chunks + one .zarray per array
    assert size_bytes == disk_bytes
    padded = sum(chunking.padded_elements(a.shape, chunking.chunk_shape(a.shape, BUDGET)) * 4 for a in tensors.values())
    if kind == "none":
        assert padded < size_bytes < padded + 1000 * (len(tensors) + 1)  # raw chunks + small metadata
    else:
        assert 0 < size_bytes < padded + 1000 * (len(tensors) + 1)
    backend.release()  # the memory is dropped: a load after release finds nothing
    with pytest.raises(Exception):
        backend.load(directory)


def test_a_timed_run_on_the_memory_kvstore_reads_from_memory(tmp_path):
    from ckptbench.bench import workspace

    tensors = _tensors("bfloat16")
    suite = config.from_dict({"dtype": "bfloat16", "test_configurations": [
        {"name": "mem", "chunk_size_elements": BUDGET, "concurrency_limit": 4, "kvstore": "memory"}]},
        output_dir=tmp_path / "out")
    workspace.prepare_output_dir(suite.output_dir)
    backend = measure.backend_for(suite.test("mem"), suite)
    record = measure.run_once(records.PlannedRun("mem", 0, 0), backend, measure.Bench(suite, tensors))
    assert record.error is None, record.error
    assert record.verified is True
    assert record.load_cache == "memory" and record.eviction is None  # nothing to evict: no page cache involved
    chunk_keys = sum(_n_chunks(a.shape, chunking.chunk_shape(a.shape, BUDGET)) for a in tensors.values())
    assert record.n_files >= chunk_keys + len(tensors)
    assert record.size_bytes == record.disk_bytes > sum(a.nbytes for a in tensors.values())


# --- TensorStore context settings -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("fields", [{"data_copy_concurrency": 1}, {"data_copy_concurrency": 3},
                                    {"file_io_sync": False},
                                    {"file_io_sync": False, "data_copy_concurrency": 2, "concurrency_limit": 1}])
def test_context_settings_round_trip(tmp_path, dtype, fields):
    tensors = _tensors(dtype)
    layout = _layout(dtype, {"id": "gzip", "level": 1}, **fields)
    spec = layout.context().spec.to_json()
    assert spec["file_io_sync"] is fields.get("file_io_sync", True)
    assert spec["file_io_concurrency"] == {"limit": fields.get("concurrency_limit", 8)}
    assert spec.get("data_copy_concurrency") == ({"limit": fields["data_copy_concurrency"]}
                                                 if "data_copy_concurrency" in fields else None)
    storage.save(tensors, tmp_path / "ckpt", layout, INFLIGHT)
    assert verify.mismatches(tensors, storage.load(tmp_path / "ckpt", layout, INFLIGHT)) == []
    test = config.TestSpec(name="t", concurrency_limit=1, chunk_bytes=400, **{k: v for k, v in fields.items()
                                                                                if k != "concurrency_limit"})
    assert test.durable is fields.get("file_io_sync", True)


def test_default_data_copy_concurrency_is_left_to_tensorstore():
    assert "data_copy_concurrency" not in _layout().context().spec.to_json()


# --- fill values and chunk strategies ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zarr2", "zarr3"])
def test_a_tensor_of_zeros_is_still_written(tmp_path, fmt):
    tensors = {"zeros": np.zeros((37, 11), dtype=np.float32), "neg_zero": np.full((20,), -0.0, dtype=np.float32)}
    layout = _layout(format=fmt)
    storage.save(tensors, tmp_path / "ckpt", layout, INFLIGHT)
    for name, array in tensors.items():
        meta_file = ".zarray" if fmt == "zarr2" else "zarr.json"
        chunk_files = [f for f in _files(tmp_path / "ckpt" / name) if f.name != meta_file]
        assert len(chunk_files) == _n_chunks(array.shape, chunking.chunk_shape(array.shape, BUDGET)) > 0, name
    assert verify.mismatches(tensors, storage.load(tmp_path / "ckpt", layout, INFLIGHT)) == []  # -0.0 kept as bits
    _, _, n_files = storage.checkpoint_size(tmp_path / "ckpt")
    assert n_files > len(tensors) + 1  # more than the metadata and the manifest


def _metadata_bytes(directory: Path) -> int:
    return sum((directory / f).stat().st_size for f in _files(directory) if f.name in (".zarray", storage.MANIFEST))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_divisor_chunks_divide_the_shape_and_store_no_padding(tmp_path, dtype):
    tensors = _tensors(dtype)
    layout = _layout(dtype, "none", chunk_strategy="divisor")
    directory = tmp_path / "ckpt"
    storage.save(tensors, directory, layout, INFLIGHT)
    assert verify.mismatches(tensors, storage.load(directory, layout, INFLIGHT)) == []
    for name, array in tensors.items():
        chunk = json.loads((directory / name / ".zarray").read_text())["chunks"]
        assert all(d % c == 0 for d, c in zip(array.shape, chunk)), (name, chunk)
        assert math.prod(chunk) <= BUDGET
        assert chunking.padded_elements(array.shape, chunk) == array.size
    size_bytes, _, _ = storage.checkpoint_size(directory)
    raw_bytes = sum(a.nbytes for a in tensors.values())
    assert size_bytes == raw_bytes + _metadata_bytes(directory)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_halve_chunks_pad_a_shape_that_does_not_divide(tmp_path, dtype):
    tensors = _tensors(dtype)
    directory = tmp_path / "ckpt"
    storage.save(tensors, directory, _layout(dtype, "none", chunk_strategy="halve"), INFLIGHT)
    size_bytes, _, _ = storage.checkpoint_size(directory)
    raw_bytes = sum(a.nbytes for a in tensors.values())
    padded = sum(chunking.padded_elements(a.shape, chunking.chunk_shape(a.shape, BUDGET, "halve")) * ITEMSIZE[dtype]
                 for a in tensors.values())
    assert padded > raw_bytes  # (37, 11) in [10, 6] chunks and 1001 in 63-element chunks leave padding
    assert size_bytes == padded + _metadata_bytes(directory)
    assert size_bytes > raw_bytes + _metadata_bytes(directory)
