"""Tensor-parallel loads (issue 21): the slicing rule, tp_aligned chunks, the refusals of a bad tp, and real
readers (spawned processes, real TensorStore files, every reference kind's slice loader) with their bytes."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from ckptbench.bench import cache, storage
from ckptbench.bench.references import BACKENDS
from ckptbench.bench.targets import RunLocation
from ckptbench.bench.verify import mismatches
from ckptbench.core.errors import UserError
from ckptbench.parallel import session
from ckptbench.parallel.launch import Launch
from ckptbench.parallel.writers import Job, perform
from ckptbench.spec import chunking, config, tensor_parallel
from ckptbench.spec.presets import preset_shapes
from ckptbench.spec.references import REFERENCES

# --- the slicing rule -----------------------------------------------------------------------------------

def test_the_rule_follows_the_llama_modules(hf_model) -> None:
    """Against transformers' own LlamaForCausalLM: Linear layers of the attention's q/k/v and the MLP's gate/up,
    lm_head and the Embedding split their rows; o/down their columns; RMSNorm weights stay whole."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    for name, param in hf_model.named_parameters():
        module = hf_model.get_submodule(name.rsplit(".", 1)[0])
        kind = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
        dim = tensor_parallel.split_dim(name, tuple(param.shape))
        if isinstance(module, LlamaRMSNorm):
            assert dim is None, name
        elif isinstance(module, torch.nn.Embedding) or kind in ("q_proj", "k_proj", "v_proj", "gate_proj",
                                                                 "up_proj", "lm_head"):
            assert dim == 0, name
        else:
            assert isinstance(module, torch.nn.Linear) and kind in ("o_proj", "down_proj") and dim == 1, name


def test_each_rank_gets_its_slice_of_tinyllama() -> None:
    shapes = dict(preset_shapes("tinyllama-1.1b"))  # hidden 2048, 32 heads, 4 kv heads (head_dim 64), mlp 5632
    boxes = tensor_parallel.rank_boxes(shapes, 4)
    layer = "model.layers.3."
    expected = {"self_attn.q_proj.weight": (512, 2048), "self_attn.k_proj.weight": (64, 2048),
                "self_attn.v_proj.weight": (64, 2048), "self_attn.o_proj.weight": (2048, 512),
                "mlp.gate_proj.weight": (1408, 2048), "mlp.up_proj.weight": (1408, 2048),
                "mlp.down_proj.weight": (2048, 1408), "input_layernorm.weight": (2048,)}
    for rank in range(4):
        for suffix, shape in expected.items():
            name = layer + suffix
            assert np.empty(shapes[name], np.int8)[tuple(slice(a, b) for a, b in boxes[rank][name])].shape == shape
        assert boxes[rank]["model.embed_tokens.weight"] == ((8000 * rank, 8000 * (rank + 1)),)
        assert boxes[rank]["lm_head.weight"] == ((8000 * rank, 8000 * (rank + 1)),)
        assert boxes[rank]["model.norm.weight"] == ()
    assert boxes[2][layer + "self_attn.o_proj.weight"] == ((0, 2048), (1024, 1536))


@pytest.mark.parametrize(("size", "tp"), [(10, 3), (9, 3), (7, 4), (2000, 4)])
def test_the_ranks_cover_a_split_dimension_once(size: int, tp: int) -> None:
    parts = [tensor_parallel.bounds(size, tp, rank) for rank in range(tp)]
    assert parts[0][0] == 0 and parts[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_tp_aligned_chunks_fall_on_the_split_within_the_budget() -> None:
    budget = 2**20 // 2  # 1 MiB of bfloat16
    for tp in (2, 4):
        for name, shape in preset_shapes("tinyllama-1.1b")[:12]:
            dim = tensor_parallel.split_dim(name, shape)
            chunk = chunking.chunk_shape(shape, budget, "tp_aligned", None if dim is None else (dim, tp))
            assert math.prod(chunk) <= budget
            if dim is None:
                assert chunk == chunking.chunk_shape(shape, budget, "divisor")
            else:
                assert (shape[dim] // tp) % chunk[dim] == 0, (name, chunk)
    # rows: whole rows first (every dimension but the first whole while a row fits the budget)
    assert chunking.chunk_shape((5632, 2048), budget, "rows") == [176, 2048]


# --- a bad tp: one line, exit 2, nothing written --------------------------------------------------------

@pytest.mark.parametrize(("args", "start"), [
    (["--tp", "0"], "error: --tp: 0 is not a number of tensor-parallel ranks"),
    (["--tp", "two"], "error: --tp: 'two' is not a number"),
    (["--tp", "2"], "error: --tp 2: model smollm2-135m has 9 attention heads and 3 kv heads"),  # the default
    (["--tp", "3", "--model", "tiny"], "error: --tp 3: model tiny has 4 attention heads"),
    (["--tp", "8", "--model", "tiny"], "error: --tp 8: model tiny has 4 attention heads"),
])
def test_a_bad_tp_is_refused_in_one_line(tmp_path: Path, run_cli, args: list[str], start: str) -> None:
    out = tmp_path / "out"
    status, _, err = run_cli("run", "--runs", "1", "--output-dir", out, *args)
    assert status == 2 and err.startswith(start) and err.count("\n") == 1, err
    assert not out.exists()


def test_the_default_models_refusal_names_the_fix(tmp_path: Path, run_cli) -> None:
    status, _, err = run_cli("run", "--tp", "2", "--output-dir", tmp_path / "out")
    assert status == 2 and "use --tp 3, or --model tiny" in err


def test_a_checkpoint_tp_must_split_every_split_dimension(tmp_path: Path, run_cli, checkpoint) -> None:
    """The small HF LLaMA: q 32 rows, k/v 16 (2 kv heads of 8), mlp 64, vocabulary 128."""
    for tp, words in (("32", "has 16 rows along its split dimension 0, fewer than 32 ranks"),
                      ("3", "which 3 ranks cannot split evenly")):
        out = tmp_path / f"out{tp}"
        status, _, err = run_cli("run", "--weights", checkpoint / "single", "--tp", tp, "--runs", "1",
                                 "--output-dir", out)
        assert status == 2 and words in err and err.count("\n") == 1, err
        assert not out.exists()


def test_a_launch_of_another_size_than_tp_is_refused() -> None:
    raw = {"model": "tiny", "test_configurations": [{"name": "a", "chunk_bytes": "1MB", "concurrency_limit": 8}]}
    with pytest.raises(UserError, match="tp 4 under torchrun with 2 ranks"):
        session.suite_for_launch(config.from_dict(raw, tp=4), Launch("torchrun", 0, 2, 0, "127.0.0.1", 29500))
    suite = session.suite_for_launch(config.from_dict(raw, tp=2), Launch("torchrun", 0, 2, 0, "127.0.0.1", 29500))
    assert [(t.tp, t.processes) for t in suite.tests] == [(2, 2)]


def test_tp_save_needs_aligned_chunks_and_processes_must_match() -> None:
    raw = {"model": "tiny", "test_configurations": [{"name": "a", "chunk_bytes": "1MB", "concurrency_limit": 8,
                                                     "tp": 2, "tp_save": True}]}
    with pytest.raises(UserError, match="tp_save .* set chunk_strategy \"tp_aligned\""):
        config.from_dict(raw)
    with pytest.raises(UserError, match="tp 2 loads with 2 reader processes, and the suite runs 3"):
        config.from_dict({**raw, "test_configurations": [{"name": "a", "chunk_bytes": "1MB", "concurrency_limit": 8,
                                                          "tp": 2}]}, processes=3)


# --- real readers ------------------------------------------------------------------------------------------

def _runs(out: Path) -> dict[str, dict]:
    document = json.loads((out / "results.json").read_text())
    return {t["name"]: t for t in document["tests"]} | {"_skipped": document["skipped_tests"]}


@pytest.mark.slow  # tp readers: many processes
def test_tp2_on_tiny_gives_verified_slices_and_each_readers_bytes(tmp_path: Path, write_config, run_cli) -> None:
    """--tp 2 with the default process count: 2 spawned readers per row, every slice verified; the rows layout
    makes the readers' read calls return more than their slices, tp_aligned their slices (x1)."""
    path = write_config({
        "model": "tiny", "testing": {"num_runs": 1, "cache_eviction": "fadvise"},
        "references": {"safetensors": True, "torch_save": True, "torch_dcp": True, "device_ceiling": True},
        "test_configurations": [
            {"name": "rows", "chunk_bytes": "64KB", "chunk_strategy": "rows", "concurrency_limit": 8,
             "compression": "none"},
            {"name": "aligned", "chunk_bytes": "64KB", "chunk_strategy": "tp_aligned", "concurrency_limit": 8,
             "compression": "none"},
            {"name": "aligned_tp_save", "chunk_bytes": "64KB", "chunk_strategy": "tp_aligned", "format": "zarr3",
             "shard_bytes": "1MB", "concurrency_limit": 8, "compression": "none", "tp_save": True}]})
    out = tmp_path / "out"
    status, _, err = run_cli("run", "--config", path, "--tp", "2", "--output-dir", out, "--no-progress")
    assert status == 0, err
    tests = _runs(out)
    for name in ("rows", "aligned", "aligned_tp_save", "safetensors", "torch_save", "torch_dcp", "device_ceiling"):
        run = tests[name]["runs"][0]
        assert tests[name]["settings"]["tp"] == 2 and tests[name]["settings"]["processes"] == 2
        assert run["verified"] is True and run["error"] is None and run["load_cache"] == "cold", (name, run)
        assert len(run["process_load_s"]) == 2 and run["load_s"] >= max(run["process_load_s"]) > 0
        assert len(run["process_load_read_bytes"]) == len(run["process_load_slice_bytes"]) == 2
        assert all(b > 0 for b in run["process_load_slice_bytes"]), name
        assert tests[name]["tensor_parallel"]["tp"] == 2
    model_bytes = sum(4 * math.prod(s) for _, s in preset_shapes("tiny"))
    norms = sum(4 * math.prod(s) for n, s in preset_shapes("tiny") if tensor_parallel.split_dim(n, s) is None)
    assert sum(tests["aligned"]["runs"][0]["process_load_slice_bytes"]) == model_bytes + norms  # norms twice
    # Row chunks: the o/down (and the 64 KB q/k/v, one chunk each) readers read whole tensors, the rest about
    # their slices' chunks; tp_aligned: exactly the slices
    assert tests["rows"]["tensor_parallel"]["rchar_amplification"] > 1.25
    assert tests["aligned"]["tensor_parallel"]["rchar_amplification"] == pytest.approx(1.0, abs=0.1)
    assert tests["torch_save"]["tensor_parallel"]["rchar_amplification"] == pytest.approx(2.0, rel=0.1)
    assert tests["torch_dcp"]["tensor_parallel"]["rchar_amplification"] > 1.25  # whole saved tensors, narrowed
    assert tests["_skipped"] == []
    assert (out / "tensor_parallel_analysis.png").is_file()


@pytest.mark.slow  # the default model: 0.54 GB
def test_tp3_on_the_default_model(tmp_path: Path, write_config, run_cli) -> None:
    """The default model's 9 heads and 3 kv heads split 3 ways (--tp 2 is refused above)."""
    path = write_config({"dtype": "bfloat16", "testing": {"num_runs": 1, "cache_eviction": "fadvise"},
                         "test_configurations": [{"name": "aligned", "chunk_bytes": "1MB", "concurrency_limit": 32,
                                                  "chunk_strategy": "tp_aligned", "compression": "none"}]})
    out = tmp_path / "out"
    status, _, err = run_cli("run", "--config", path, "--tp", "3", "--output-dir", out, "--no-progress")
    assert status == 0, err
    run = _runs(out)["aligned"]["runs"][0]
    assert run["verified"] is True and len(run["process_load_slice_bytes"]) == 3


def _drop_caches_or_skip() -> None:
    if not cache.drop_caches():
        pytest.skip("/proc/sys/vm/drop_caches is not writable here (not root): cold device reads cannot be made")


@pytest.mark.parametrize("tp", [2, 4])
def test_row_chunks_make_a_row_parallel_reader_read_tp_times_its_slice(tmp_path: Path, tp: int) -> None:
    """One reader alone, cold (drop_caches), reading its slice of two row-parallel tensors from real files: with
    chunks of whole rows it reads every chunk, N times its slice from the device; with tp_aligned chunks, its slice."""
    rng = np.random.default_rng(21)
    # Large enough that what a cold open reads besides the chunks (inodes, directories, .zarray) is a few %
    tensors = {"model.layers.0.self_attn.o_proj.weight": rng.standard_normal((2048, 2048), np.float32),
               "model.layers.0.mlp.down_proj.weight": rng.standard_normal((2048, 4096), np.float32)}
    boxes = tensor_parallel.rank_boxes({n: a.shape for n, a in tensors.items()}, tp)[tp - 1]
    amplification = {}
    for strategy in ("rows", "tp_aligned"):
        layout = storage.Layout(chunk_budget_elements=2**18, chunk_strategy=strategy, concurrency_limit=8,
                                compression=None, tp=tp)
        location = RunLocation.local(tmp_path / strategy)
        storage.TensorStoreBackend(layout, 2**30).save(tensors, location)
        perform(Job("load", location, layout, boxes), tensors, time.perf_counter(), "warm-up")  # imports, once
        read_bytes = []
        # Device bytes can only be inflated by what else the process faults in from disk (code pages a reclaimer
        # paged out, say), never deflated below the chunks read, so the least of three cold reads is the estimate
        for attempt in range(3):
            _drop_caches_or_skip()
            done, verified = list(perform(Job("load", location, layout, boxes), tensors, time.perf_counter(),
                                          f"r{attempt}"))
            assert done[0] == "done" and verified == ("verified", [])
            figures = done[1]
            assert figures["slice_bytes"] == sum(a.nbytes for a in tensors.values()) // tp
            read_bytes.append(figures["read_bytes"])
        amplification[strategy] = min(read_bytes) / figures["slice_bytes"]
    assert amplification["rows"] == pytest.approx(tp, rel=0.2)
    assert amplification["tp_aligned"] == pytest.approx(1.0, abs=0.2)


@pytest.mark.parametrize("kind", ["safetensors", "torch_save", "torch_dcp", "runai_streamer", "device_ceiling"])
def test_each_reference_kind_loads_a_ranks_slices(tmp_path: Path, tiny_weights, kind: str) -> None:
    if REFERENCES[kind].tp_unsupported or (REFERENCES[kind].modules and config.unavailable(kind)):
        pytest.skip(f"{kind} cannot run here")
    backend = BACKENDS[kind]()
    location = RunLocation.local(tmp_path)
    backend.prepare(tiny_weights.tensors)
    backend.save(tiny_weights.tensors, location)
    shapes = {n: a.shape for n, a in tiny_weights.tensors.items()}
    for rank in range(2):
        boxes = tensor_parallel.rank_boxes(shapes, 2)[rank]
        loaded = BACKENDS[kind]().load_slices(location, boxes, rank, 2)
        if kind == "device_ceiling":  # raw bytes: its share of them
            total = sum(a.nbytes for a in tiny_weights.tensors.values())
            assert abs(loaded["share"].nbytes - total / 2) <= os.sysconf("SC_PAGE_SIZE")
            continue
        assert mismatches(tiny_weights.tensors, loaded, boxes) == []


def test_fastsafetensors_under_tp_is_skipped_with_the_reason() -> None:
    raw = {"model": "tiny", "references": {"torch_dcp": True, "fastsafetensors": True},
           "test_configurations": [{"name": "a", "chunk_bytes": "1MB", "concurrency_limit": 8}]}
    suite = config.from_dict(raw, tp=[1, 2])
    skipped = dict(suite.skipped)
    assert list(skipped) == ["fastsafetensors_tp=2"] and "process group" in skipped["fastsafetensors_tp=2"]
    assert {t.name for t in suite.tests} >= {"a", "a_tp=2", "torch_dcp_tp=2"}
    assert "tp 2: each rank: dcp.load" in suite.test("torch_dcp_tp=2").description


@pytest.mark.slow  # torchrun
def test_tp2_under_torchrun_with_two_ranks(tmp_path: Path) -> None:
    """The ranks of a launch are the readers: each loads its slice, verifies it, and reports its bytes."""
    import subprocess

    from test_ranks import _env, _suite_file, _torchrun

    tests = [{"name": "aligned", "chunk_bytes": "64KB", "chunk_strategy": "tp_aligned", "concurrency_limit": 8,
              "compression": "none"}]
    out = tmp_path / "out"
    done = subprocess.run(_torchrun("--config", str(_suite_file(tmp_path, tests, references={"safetensors": True})),
                                    "--tp", "2", "--output-dir", str(out)),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    tested = _runs(out)
    for name in ("aligned", "safetensors"):
        run = tested[name]["runs"][0]
        assert run["verified"] is True and len(run["process_load_read_bytes"]) == 2, (name, run)
        assert tested[name]["tensor_parallel"]["reader_rchar_amplification"][0] is not None
        # the ranks' own clock: from the barrier's release to the slowest rank's end, rank 0 a reader too
        assert run["load_clock"] == "readers" and run["eviction"] == "fadvise"
        assert max(run["process_load_s"]) <= run["load_s"] <= max(run["process_load_s"]) + 0.05, run
    assert tested["aligned"]["tensor_parallel"]["rchar_amplification"] == pytest.approx(1.0, abs=0.1)


def test_tune_with_tp_adds_tp_aligned_and_loads_tensor_parallel(tmp_path: Path) -> None:
    from ckptbench.tune import space as space_mod
    from ckptbench.tune.settings import Settings

    space = space_mod.load_space(space_mod.Path(__file__).parents[1] / "ckptbench" / "tune" / "tune_space.json")
    assert space_mod.for_tp(space, 1) == space  # tp 1: the space as it is
    assert space_mod.for_tp(space, 2)["axes"]["chunk_strategy"] == ["halve", "divisor", "tp_aligned"]
    small = {**space, "axes": {**space["axes"], "chunk_bytes": ["1MB"], "concurrency_limit": [16],
                               "compression": ["none"], "file_io_mode": ["default"]}}
    suite = space_mod.candidates(small, Settings(output_dir=tmp_path, model="tiny", tp=2))
    assert {t.tp for t in suite.tests} == {2} and {t.processes for t in suite.tests} == {2}
    assert any(t.chunk_strategy == "tp_aligned" for t in suite.tests)
