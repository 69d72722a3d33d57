"""Real TensorStore on real temporary folders: round trips, what lands on disk, sizes, the in-flight budget."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from ckptbench.bench import storage, verify
from ckptbench.spec import chunking, compression, config

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
BUDGET = 100  # elements per chunk: small, so every array below has several chunks


def _layout(kind="none", dtype="float32", budget=BUDGET, concurrency=4, strategy="halve"):
    test = config.TestSpec(name="t", concurrency_limit=concurrency, chunk_size_elements=budget,
                           chunk_strategy=strategy, compression=compression.normalize(kind))
    return storage.Layout.of(test, dtype)


def _tensors(dtype: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    special = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-40, -1.5], dtype=np.float32)  # 1e-40: subnormal
    edge = rng.standard_normal((37, 11), dtype=np.float32)  # chunk [10, 6]: 37 and 11 leave edge chunks
    edge.reshape(-1)[: special.size] = special
    arrays = {
        "model.layers.0.self_attn.q_proj.weight": edge,
        "model.norm.weight": rng.standard_normal(1001, dtype=np.float32),  # chunk [63]: 16 chunks, the last partial
        "lm_head.weight": rng.standard_normal((20, 5), dtype=np.float32),  # exactly one full chunk
    }
    return {k: np.ascontiguousarray(v.astype(DTYPES[dtype])) for k, v in arrays.items()}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", ["none", "gzip"])
def test_round_trip_is_bit_exact(tmp_path, dtype, kind):
    tensors = _tensors(dtype)
    layout = _layout(kind, dtype)
    storage.save(tensors, tmp_path / "ckpt", layout, max_inflight_bytes=2**30)
    loaded = storage.load(tmp_path / "ckpt", layout, max_inflight_bytes=2**30)
    assert verify.mismatches(tensors, loaded) == []
    assert {k: (v.dtype, v.shape) for k, v in loaded.items()} == {k: (v.dtype, v.shape) for k, v in tensors.items()}
    # and the check itself is able to fail: one flipped bit is caught
    tampered = dict(loaded)
    flipped = tampered["model.norm.weight"].copy()
    flipped.view(np.uint8)[3] ^= 1
    tampered["model.norm.weight"] = flipped
    assert verify.mismatches(tensors, tampered) == ["model.norm.weight"]


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_zarray_on_disk(tmp_path, dtype):
    tensors = _tensors(dtype)
    for kind, expected in [("none", None), ("gzip", {"id": "gzip", "level": 1})]:
        directory = tmp_path / kind
        storage.save(tensors, directory, _layout(kind, dtype), max_inflight_bytes=2**30)
        for name, array in tensors.items():
            meta = json.loads((directory / name / ".zarray").read_text())
            assert "compressor" in meta and meta["compressor"] == expected, (kind, name)
            assert meta["shape"] == list(array.shape)
            assert meta["chunks"] == chunking.chunk_shape(array.shape, BUDGET)
            assert meta["dtype"] == storage.ZARR_V2_DTYPES[dtype]
            assert meta["zarr_format"] == 2


def test_edge_chunks_are_stored_padded_when_raw(tmp_path):
    tensors = _tensors("float32")
    directory = tmp_path / "raw"
    storage.save(tensors, directory, _layout("none"), max_inflight_bytes=2**30)
    edge = directory / "model.layers.0.self_attn.q_proj.weight"
    chunk_files = sorted(p.name for p in edge.iterdir() if p.name != ".zarray")
    assert chunk_files == [f"{i}.{j}" for i in range(4) for j in range(2)]  # ceil(37/10) x ceil(11/6)
    # raw zarr v2 chunks are all full size, the edge ones padded: 10 * 6 float32
    assert {(edge / f).stat().st_size for f in chunk_files} == {10 * 6 * 4}
    norm = directory / "model.norm.weight"
    assert json.loads((norm / ".zarray").read_text())["chunks"] == [63]  # 1001 -> 501 -> 251 -> 126 -> 63
    assert sorted(p.name for p in norm.iterdir() if p.name != ".zarray") == sorted(str(i) for i in range(16))


def test_gzip_makes_smaller_chunk_files_than_raw(tmp_path):
    zeros = {"w": np.zeros((64, 64), dtype=np.float32)}  # one chunk of 4096 elements
    zeros["w"][0, 0] = 1.0  # not all fill value, so the chunk is surely written
    raw, gz = tmp_path / "raw", tmp_path / "gz"
    storage.save(zeros, raw, _layout("none", budget=4096), max_inflight_bytes=2**30)
    storage.save(zeros, gz, _layout("gzip", budget=4096), max_inflight_bytes=2**30)
    assert (gz / "w" / "0.0").stat().st_size < (raw / "w" / "0.0").stat().st_size == 64 * 64 * 4


def test_blosc_default_really_gets_blosc(tmp_path):
    """Omitting the key is what makes TensorStore compress: the reason "none" writes an explicit null."""
    tensors = _tensors("float32")
    storage.save(tensors, tmp_path / "b", _layout("blosc-default"), max_inflight_bytes=2**30)
    meta = json.loads((tmp_path / "b" / "lm_head.weight" / ".zarray").read_text())
    assert meta["compressor"] is not None and meta["compressor"]["id"] == "blosc"
    loaded = storage.load(tmp_path / "b", _layout("blosc-default"), max_inflight_bytes=2**30)
    assert verify.mismatches(tensors, loaded) == []


def test_manifest_lists_every_tensor(tmp_path):
    tensors = _tensors("bfloat16")
    storage.save(tensors, tmp_path / "ckpt", _layout(), max_inflight_bytes=2**30)
    manifest = json.loads((tmp_path / "ckpt" / storage.MANIFEST).read_text())
    assert manifest["dtype"] == "bfloat16"
    assert [(e["name"], tuple(e["shape"])) for e in manifest["tensors"]] == [(k, v.shape) for k, v in tensors.items()]


def test_checkpoint_size_matches_os_walk(tmp_path):
    tensors = _tensors("float32")
    directory = tmp_path / "ckpt"
    storage.save(tensors, directory, _layout("gzip"), max_inflight_bytes=2**30)
    files = [Path(root) / f for root, _dirs, names in os.walk(directory) for f in names]
    size_bytes, disk_bytes, n_files = storage.checkpoint_size(directory)
    assert n_files == len(files)
    assert size_bytes == sum(f.stat().st_size for f in files)
    assert disk_bytes == sum(f.stat().st_blocks * 512 for f in files)
    # the files are: the manifest, one .zarray per tensor and the chunks
    chunks = sum(math.prod(math.ceil(d / c) for d, c in zip(a.shape, chunking.chunk_shape(a.shape, BUDGET)))
                 for a in tensors.values())
    assert n_files == 1 + len(tensors) + chunks


def test_checkpoint_size_of_an_empty_folder(tmp_path):
    assert storage.checkpoint_size(tmp_path) == (0, 0, 0)


@pytest.mark.parametrize("max_inflight_bytes", [1, 1000, 3000])  # tensors: 400, 1628 and 4004 bytes
def test_inflight_budget_smaller_than_a_tensor_still_writes_everything(tmp_path, max_inflight_bytes):
    tensors = _tensors("float32")
    assert max_inflight_bytes < max(a.nbytes for a in tensors.values())
    layout = _layout("none", concurrency=1)
    storage.save(tensors, tmp_path / "ckpt", layout, max_inflight_bytes)
    loaded = storage.load(tmp_path / "ckpt", layout, max_inflight_bytes)
    assert verify.mismatches(tensors, loaded) == []


def test_divisor_layout_round_trips_without_padding(tmp_path):
    tensors = _tensors("float32")
    layout = _layout("none", strategy="divisor")
    storage.save(tensors, tmp_path / "ckpt", layout, max_inflight_bytes=2**30)
    for name, array in tensors.items():
        meta = json.loads((tmp_path / "ckpt" / name / ".zarray").read_text())
        assert all(d % c == 0 for d, c in zip(meta["shape"], meta["chunks"])), name
    assert verify.mismatches(tensors, storage.load(tmp_path / "ckpt", layout, 2**30)) == []


def test_layout_from_chunk_bytes_depends_on_dtype():
    test = config.TestSpec(name="t", concurrency_limit=2, chunk_bytes=1 << 20)
    assert storage.Layout.of(test, "float32").chunk_budget_elements == 262144
    assert storage.Layout.of(test, "bfloat16").chunk_budget_elements == 524288


def test_mismatches_reports_missing_extra_and_reshaped_tensors():
    a = np.arange(6, dtype=np.float32)
    assert verify.mismatches({"a": a}, {}) == ["a"]
    assert verify.mismatches({}, {"a": a}) == ["a"]
    assert verify.mismatches({"a": a}, {"a": a.reshape(2, 3)}) == ["a"]
    assert verify.mismatches({"a": a}, {"a": a.astype(np.float16)}) == ["a"]
    nan = np.array([np.nan, -0.0], dtype=np.float32)
    assert verify.mismatches({"a": nan}, {"a": nan.copy()}) == []  # NaN equals itself as bits
    assert verify.mismatches({"a": nan}, {"a": np.array([np.nan, 0.0], dtype=np.float32)}) == ["a"]


class _FakeFuture:
    """Stands in for a TensorStore future: records when its result is awaited."""

    def __init__(self, log, index):
        self.log, self.index, self.done = log, index, False

    def result(self):
        self.done = True
        self.log.append(("done", self.index))


def test_bounded_keeps_inflight_bytes_under_the_budget():
    sizes = [300, 300, 500, 1200, 100, 100, 900]  # 1200 alone exceeds the budget of 1000
    log, futures = [], []

    def starter(i):
        def start():
            inflight = sum(sizes[f.index] for f in futures if not f.done)
            assert inflight == 0 or inflight + sizes[i] <= 1000, (i, inflight)
            log.append(("start", i))
            futures.append(_FakeFuture(log, i))
            return futures[-1]
        return start

    started = storage._bounded(((n, starter(i)) for i, n in enumerate(sizes)), 1000, lambda futures: futures)
    assert [f.index for f in started] == list(range(len(sizes)))  # started in order, each once
    assert all(f.done for f in futures)  # and every one awaited before returning
    assert [e for e in log if e[0] == "start"] == [("start", i) for i in range(len(sizes))]
    # two 300s and the 500 do not fit together: the first 300 is awaited before the 500 starts
    assert log.index(("done", 0)) < log.index(("start", 2))
