"""Where the weights come from: LLaMA-shaped presets made in code, or a real checkpoint.

Presets carry published LLaMA-architecture hyperparameters and the real parameter
names and shapes of `LlamaForCausalLM` (written out here; a test checks them against
transformers' model on the meta device); the values are drawn from a seeded normal
distribution (std 0.02, LLaMA's initializer), per tensor from a seed derived from
its name, so every run and every subset sees the same bytes.

How the values are drawn decides how well they compress, so it is a setting:
- ``random``: float32 draws, full-entropy mantissas (zlib level 1 saves about 7 %);
- ``float16`` / ``bfloat16``: drawn in that type, then stored in the run's dtype. A
  checkpoint trained or shipped in half precision and stored as float32 has 13 or 16
  zero mantissa bits per value, which compressors find (about 37 % / 48 % saved).
  The original Phase 4 harness stored open_llama_3b's fp16 weights as float32.

A checkpoint folder or a Hugging Face model id (`--weights`) gives the real values.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import ml_dtypes
import numpy as np

from ckptbench.documents import store as documents
from ckptbench.sources import hub
from ckptbench.core.errors import UserError

NUMPY_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
INIT_STD = 0.02
SEED = 20240604
VALUES = ("random", "float16", "bfloat16")
_VALUE_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


@dataclass(frozen=True)
class Preset:
    """LLaMA-architecture hyperparameters, as published in the model's config.json."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    origin: str
    head_dim: int | None = None

    @property
    def n_params(self) -> int:
        """Parameters of LlamaForCausalLM with these hyperparameters (a test checks it against transformers)."""
        hidden, heads, kv_heads = self.hidden_size, self.num_attention_heads, self.num_key_value_heads
        head_dim = self.head_dim or hidden // heads
        attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q and o, k and v
        mlp = 3 * hidden * self.intermediate_size  # gate, up, down
        per_layer = attention + mlp + 2 * hidden  # + two RMSNorm weights
        embeddings = self.vocab_size * hidden * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_hidden_layers * per_layer + hidden  # + the final norm


PRESETS: dict[str, Preset] = {
    "tiny": Preset(128, 344, 4, 4, 4, 2000, False, "made up for tests (about 5 MB in float32)"),
    "smollm2-135m": Preset(576, 1536, 30, 9, 3, 49152, True, "HuggingFaceTB/SmolLM2-135M"),
    "smollm2-360m": Preset(960, 2560, 32, 15, 5, 49152, True, "HuggingFaceTB/SmolLM2-360M"),
    "tinyllama-1.1b": Preset(2048, 5632, 22, 32, 4, 32000, False, "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"),
    "llama-3.2-1b": Preset(2048, 8192, 16, 32, 8, 128256, True, "meta-llama/Llama-3.2-1B", head_dim=64),
    "open_llama_3b": Preset(3200, 8640, 26, 32, 32, 32000, False, "openlm-research/open_llama_3b"),
    "llama-2-7b": Preset(4096, 11008, 32, 32, 32, 32000, False, "meta-llama/Llama-2-7b-hf"),
}
DEFAULT_PRESET = "smollm2-135m"


def preset_shapes(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of a preset, in the order LlamaForCausalLM.named_parameters() lists
    them (a tied lm_head once, as save_pretrained stores it).

    Written out from the architecture rather than built by transformers on the meta device:
    importing transformers costs seconds in every run. A test checks every preset against
    transformers' own model.
    """
    preset = PRESETS[name]
    hidden, heads, kv_heads = preset.hidden_size, preset.num_attention_heads, preset.num_key_value_heads
    head_dim = preset.head_dim or hidden // heads
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (preset.vocab_size, hidden))]
    for layer in range(preset.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        shapes += [(prefix + "self_attn.q_proj.weight", (heads * head_dim, hidden)),
                   (prefix + "self_attn.k_proj.weight", (kv_heads * head_dim, hidden)),
                   (prefix + "self_attn.v_proj.weight", (kv_heads * head_dim, hidden)),
                   (prefix + "self_attn.o_proj.weight", (hidden, heads * head_dim)),
                   (prefix + "mlp.gate_proj.weight", (preset.intermediate_size, hidden)),
                   (prefix + "mlp.up_proj.weight", (preset.intermediate_size, hidden)),
                   (prefix + "mlp.down_proj.weight", (hidden, preset.intermediate_size)),
                   (prefix + "input_layernorm.weight", (hidden,)),
                   (prefix + "post_attention_layernorm.weight", (hidden,))]
    shapes.append(("model.norm.weight", (hidden,)))
    if not preset.tie_word_embeddings:
        shapes.append(("lm_head.weight", (preset.vocab_size, hidden)))
    return shapes


@dataclass
class Weights:
    """Named tensors, C-contiguous, all in one dtype, plus where they came from."""

    tensors: dict[str, np.ndarray]
    dtype: str
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(int(a.size) for a in self.tensors.values())

    @property
    def size_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.tensors.values())

    def describe(self) -> dict[str, Any]:
        return {**self.source, "dtype": self.dtype, "n_tensors": len(self.tensors),
                "n_params": self.n_params, "size_bytes": self.size_bytes}


def from_preset(name: str, dtype: str = "float32", values: str = "random") -> Weights:
    """Seeded synthetic weights with a preset's real names and shapes (values: see VALUES)."""
    if name not in PRESETS:
        raise UserError(f"--model: unknown preset {name!r}; run --list-models to see the presets")
    if values not in VALUES:
        raise UserError(f"--values: unknown values {values!r}; use one of {', '.join(VALUES)}")
    target = NUMPY_DTYPES[dtype]
    tensors = {}
    for param, shape in preset_shapes(name):
        rng = np.random.default_rng([SEED, zlib.crc32(param.encode())])
        drawn = rng.standard_normal(shape, dtype=np.float32)
        drawn *= np.float32(INIT_STD)
        if values in _VALUE_DTYPES:  # round to the half-precision grid first, as a real checkpoint's values are
            drawn = drawn.astype(_VALUE_DTYPES[values])
        tensors[param] = np.ascontiguousarray(drawn.astype(target, copy=False))
        del drawn
    return Weights(tensors, dtype, {"kind": "preset", "name": name, "origin": PRESETS[name].origin,
                                    "values": values,
                                    "init": f"normal(0, {INIT_STD}) drawn as {'float32' if values == 'random' else values}, "
                                            f"seed {SEED} + crc32(name)"})


def from_directory(path: Path, dtype: str = "float32") -> Weights:
    """Read a local Hugging Face checkpoint folder (safetensors, sharded or single, or pytorch_model.bin)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--weights: {path} does not exist; give a local checkpoint folder")
    if not path.is_dir():
        raise UserError(f"--weights: {path} is a file; give the folder that holds it")
    files, loader = _checkpoint_files(path)
    target = NUMPY_DTYPES[dtype]
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        try:
            for name, tensor in loader(file):
                tensors[name] = _to_numpy(tensor, target)
        except UserError:
            raise
        except Exception as exc:  # safetensors and torch raise many types for a damaged file
            raise UserError(f"--weights: {file} cannot be read ({documents.first_line(exc)}); is it complete and uncorrupted?") from None
    if not tensors:
        raise UserError(f"--weights: {path} holds no tensors; give a folder with model weights")
    return Weights(tensors, dtype, {"kind": "directory", "path": str(path.resolve()), "values": "checkpoint",
                                    "files": [f.name for f in files]})


def _checkpoint_files(path: Path) -> tuple[list[Path], Callable[[Path], Iterator[tuple[str, Any]]]]:
    """The weight files of a checkpoint folder, sharded (by an index) or single, and their reader."""
    for index_name, reader in (("model.safetensors.index.json", _read_safetensors),
                               ("pytorch_model.bin.index.json", _read_torch)):
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise UserError(f"--weights: {index} is not a valid index (needs a 'weight_map')") from None
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise UserError(f"--weights: {index} lists {missing[0]}, which is missing from {path}")
            return [path / s for s in shards], reader
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"], _read_safetensors
    if (path / "pytorch_model.bin").is_file():
        return [path / "pytorch_model.bin"], _read_torch
    raise UserError(
        f"--weights: {path} holds no model.safetensors.index.json, model.safetensors, pytorch_model.bin.index.json "
        "or pytorch_model.bin"
    )


def _read_safetensors(file: Path) -> Iterator[tuple[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        for name in handle.keys():
            yield name, handle.get_tensor(name)


def _read_torch(file: Path) -> Iterator[tuple[str, Any]]:
    import torch

    state = torch.load(str(file), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise UserError(f"--weights: {file} holds no state dict of tensors")
    yield from ((n, t) for n, t in state.items() if isinstance(t, torch.Tensor))


def _to_numpy(tensor: Any, target: np.dtype) -> np.ndarray:
    import torch

    if not tensor.is_floating_point():
        raise UserError(f"--weights: tensor of dtype {tensor.dtype} found; only floating-point weights are benchmarked")
    if target == NUMPY_DTYPES["bfloat16"]:
        # numpy has no bfloat16: reinterpret torch's bits as ml_dtypes' bfloat16.
        bits = tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
        return np.ascontiguousarray(bits.view(target))
    return np.ascontiguousarray(tensor.to(torch.float32).numpy().astype(target, copy=False))


def estimate_bytes(model: str, weights_source: str | Path | None, dtype: str) -> int:
    """Bytes the weights will take in memory, known before loading them (an upper bound for folders)."""
    itemsize = NUMPY_DTYPES[dtype].itemsize
    if weights_source is None:
        if model not in PRESETS:
            raise UserError(f"--model: unknown preset {model!r}; run --list-models to see the presets")
        return preset_params(model) * itemsize
    folder = Path(weights_source)
    if not folder.is_dir():
        return 0  # from_directory gives the precise error
    stored = sum(f.stat().st_size for f in folder.iterdir()
                 if f.is_file() and f.suffix in (".safetensors", ".bin"))
    return stored * itemsize // 2  # stored tensors are at least 2 bytes per element


def preset_params(model: str) -> int:
    return PRESETS[model].n_params


def resolve(weights_source: str | None) -> tuple[Path | None, dict[str, Any]]:
    """(local folder, what to record about it) for --weights: a folder, or a Hugging Face id resolved
    through the local cache (downloaded when there is a network)."""
    if weights_source is None:
        return None, {}
    local = Path(weights_source)
    if not local.exists() and hub.looks_like_hub_id(weights_source):
        checkpoint = hub.resolve(weights_source)
        return checkpoint.path, hub.describe(checkpoint)
    return local, {}


def load(model: str, weights_source: str | Path | None, dtype: str, values: str = "random") -> Weights:
    """The configured weights: a checkpoint (folder or hub id) when given, else the preset."""
    if weights_source is None:
        return from_preset(model, dtype, values)
    folder, origin = resolve(str(weights_source))
    made = from_directory(folder, dtype)
    made.source.update(origin)
    return made
