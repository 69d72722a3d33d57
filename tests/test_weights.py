"""Weights: the seeded presets, dtype conversion, and real checkpoints written by transformers and torch."""

from __future__ import annotations

import copy
import json
import math
import shutil

import ml_dtypes
import numpy as np
import pytest
import torch
from conftest import assert_same_bits, reference_state

from ckptbench.core.errors import UserError
from ckptbench.sources import weights

# tiny: hidden 128, intermediate 344, 4 layers, 4 heads (4 KV heads), vocab 2000, untied
TINY_PARAMS = 2 * 2000 * 128 + 128 + 4 * (4 * 128 * 128 + 3 * 128 * 344 + 2 * 128)


# --- presets ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(weights.PRESETS))
def test_every_preset_has_transformers_llama_names_and_shapes(name):
    """The presets' names, shapes and order are written out in weights.py; transformers is the judge."""
    from transformers import LlamaConfig, LlamaForCausalLM

    preset = weights.PRESETS[name]
    cfg = LlamaConfig(hidden_size=preset.hidden_size, intermediate_size=preset.intermediate_size,
                      num_hidden_layers=preset.num_hidden_layers, num_attention_heads=preset.num_attention_heads,
                      num_key_value_heads=preset.num_key_value_heads, vocab_size=preset.vocab_size,
                      tie_word_embeddings=preset.tie_word_embeddings, head_dim=preset.head_dim)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    expected = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    assert weights.preset_shapes(name) == expected
    assert preset.n_params == sum(math.prod(shape) for _, shape in expected)


def test_tiny_shapes():
    shapes = dict(weights.preset_shapes("tiny"))
    assert len(shapes) == 3 + 4 * 9  # embed, norm, lm_head; per layer q k v o, gate up down, 2 norms
    assert shapes["model.embed_tokens.weight"] == (2000, 128)
    assert shapes["model.layers.3.mlp.down_proj.weight"] == (128, 344)
    assert shapes["lm_head.weight"] == (2000, 128)


def test_tiny_preset_follows_its_shapes(tiny_weights):
    assert [(n, a.shape) for n, a in tiny_weights.tensors.items()] == weights.preset_shapes("tiny")
    assert tiny_weights.n_params == TINY_PARAMS == 1_303_680
    assert tiny_weights.size_bytes == 4 * TINY_PARAMS
    assert tiny_weights.dtype == "float32"
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in tiny_weights.tensors.values())
    info = tiny_weights.describe()
    assert info["kind"] == "preset" and info["name"] == "tiny" and info["n_tensors"] == 39


def test_preset_values_are_deterministic(tiny_weights):
    again = weights.from_preset("tiny", "float32")
    assert_same_bits(tiny_weights.tensors, again.tensors)


def test_preset_values_look_like_llama_init(tiny_weights):
    everything = np.concatenate([a.reshape(-1) for a in tiny_weights.tensors.values()]).astype(np.float64)
    assert abs(everything.std() - 0.02) < 0.0005
    assert abs(everything.mean()) < 0.0005
    for name, array in tiny_weights.tensors.items():
        if array.size >= 10000:
            assert abs(array.std() - 0.02) < 0.002, name


def test_each_tensor_gets_its_own_values(tiny_weights):
    q = tiny_weights.tensors["model.layers.0.self_attn.q_proj.weight"]
    k = tiny_weights.tensors["model.layers.0.self_attn.k_proj.weight"]
    q1 = tiny_weights.tensors["model.layers.1.self_attn.q_proj.weight"]
    assert q.shape == k.shape == q1.shape
    assert not np.array_equal(q, k) and not np.array_equal(q, q1)


@pytest.mark.parametrize("dtype, numpy_dtype", [("bfloat16", ml_dtypes.bfloat16), ("float16", np.float16)])
def test_preset_in_half_precision_is_the_rounded_float32(tiny_weights, dtype, numpy_dtype):
    half = weights.from_preset("tiny", dtype)
    assert half.dtype == dtype
    assert half.n_params == tiny_weights.n_params
    assert half.size_bytes == tiny_weights.size_bytes // 2
    expected = {n: a.astype(numpy_dtype) for n, a in tiny_weights.tensors.items()}
    assert_same_bits(expected, half.tensors)


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="unknown preset 'gpt-5'"):
        weights.from_preset("gpt-5")


# --- real checkpoints ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, hf_model):
    """The same model written three ways: model.safetensors, sharded safetensors, pytorch_model.bin."""
    root = tmp_path_factory.mktemp("checkpoints")
    hf_model.save_pretrained(root / "single")
    hf_model.save_pretrained(root / "sharded", max_shard_size="40KB")
    (root / "bin").mkdir()
    torch.save(hf_model.state_dict(), root / "bin" / "pytorch_model.bin")
    return root


def test_checkpoint_folders_are_what_they_claim(checkpoints):
    assert (checkpoints / "single" / "model.safetensors").is_file()
    index = json.loads((checkpoints / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    assert not (checkpoints / "sharded" / "model.safetensors").exists()


@pytest.mark.parametrize("layout", ["single", "sharded", "bin"])
def test_checkpoint_reads_back_bit_for_bit(checkpoints, hf_model, layout):
    read = weights.from_directory(checkpoints / layout)
    assert read.dtype == "float32"
    assert_same_bits(reference_state(hf_model), read.tensors)
    info = read.describe()
    assert info["kind"] == "directory" and info["n_params"] == sum(p.numel() for p in hf_model.parameters())


def test_sharded_checkpoint_reads_every_shard(checkpoints):
    read = weights.from_directory(checkpoints / "sharded")
    shards = sorted(p.name for p in (checkpoints / "sharded").glob("model-*.safetensors"))
    assert read.source["files"] == shards


@pytest.mark.parametrize("layout", ["single", "sharded", "bin"])
def test_checkpoint_in_bfloat16_is_torch_rounding(checkpoints, hf_model, layout):
    read = weights.from_directory(checkpoints / layout, "bfloat16")
    assert read.dtype == "bfloat16"
    expected = {n: t.detach().to(torch.bfloat16).view(torch.int16).numpy().view(ml_dtypes.bfloat16)
                for n, t in hf_model.state_dict().items()}
    assert_same_bits(expected, read.tensors)


def test_checkpoint_in_float16(checkpoints, hf_model):
    read = weights.from_directory(checkpoints / "single", "float16")
    expected = {n: t.detach().to(torch.float16).numpy() for n, t in hf_model.state_dict().items()}
    assert_same_bits(expected, read.tensors)


def test_bfloat16_checkpoint_read_as_float32_is_exact(tmp_path, hf_model):
    copy.deepcopy(hf_model).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")  # the fixture stays float32
    read = weights.from_directory(tmp_path / "bf16", "float32")
    expected = {n: t.detach().to(torch.bfloat16).to(torch.float32).numpy() for n, t in hf_model.state_dict().items()}
    assert_same_bits(expected, read.tensors)


def test_load_dispatches_to_folder_or_preset(checkpoints):
    assert weights.load("tiny", checkpoints / "single", "float32").source["kind"] == "directory"
    assert weights.load("tiny", None, "float32").source["kind"] == "preset"


# --- damaged and empty checkpoints -------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "overwrite-header", "empty"])
def test_corrupted_safetensors_names_the_file(checkpoints, tmp_path, damage):
    folder = shutil.copytree(checkpoints / "single", tmp_path / "broken")
    target = folder / "model.safetensors"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "overwrite-header":
        target.write_bytes(b"\xff" * 16 + data[16:])
    else:
        target.write_bytes(b"")
    with pytest.raises(UserError) as caught:
        weights.from_directory(folder)
    message = str(caught.value)
    assert str(target) in message and "cannot be read" in message
    assert "\n" not in message


def test_corrupted_shard_names_that_shard(checkpoints, tmp_path):
    folder = shutil.copytree(checkpoints / "sharded", tmp_path / "broken")
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(UserError, match=shard.name):
        weights.from_directory(folder)


def test_missing_shard_is_named(checkpoints, tmp_path):
    folder = shutil.copytree(checkpoints / "sharded", tmp_path / "partial")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(UserError, match=f"lists {shard.name}, which is missing"):
        weights.from_directory(folder)


def test_corrupted_pytorch_bin_names_the_file(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a zip archive")
    with pytest.raises(UserError, match="pytorch_model.bin cannot be read"):
        weights.from_directory(tmp_path)


@pytest.mark.parametrize("case", ["missing", "file", "no-weights", "no-tensors", "integer-tensors"])
def test_unusable_weights_folder(tmp_path, case):
    from safetensors.torch import save_file

    path = tmp_path / "ckpt"
    if case == "file":
        path.write_text("{}")
    elif case != "missing":
        path.mkdir()
        (path / "config.json").write_text("{}")
        if case == "no-tensors":
            save_file({}, str(path / "model.safetensors"))
        elif case == "integer-tensors":
            save_file({"ids": torch.arange(10)}, str(path / "model.safetensors"))
    expected = {"missing": "does not exist", "file": "is a file", "no-weights": "holds no model.safetensors",
                "no-tensors": "holds no tensors", "integer-tensors": "only floating-point"}[case]
    with pytest.raises(UserError, match=expected):
        weights.from_directory(path)
