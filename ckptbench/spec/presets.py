"""The LLaMA shapes the harness can make weights for, and the dtypes and values it stores them in.

Presets carry published LLaMA-architecture hyperparameters and the real parameter names and shapes of
`LlamaForCausalLM`, written out here (a test checks them against transformers' model on the meta device): importing
transformers costs seconds in every run. How weights are made from a preset, or read from a checkpoint, is
`sources.weights`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

NUMPY_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
VALUES = ("random", "float16", "bfloat16")


def dtype_name(dtype: np.dtype) -> str:
    """'float32', 'float16' or 'bfloat16' for a numpy dtype."""
    return next(name for name, np_dtype in NUMPY_DTYPES.items() if np_dtype == dtype)


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
        return sum(math.prod(shape) for _, shape in _shapes(self))


PRESETS: dict[str, Preset] = {
    "tiny": Preset(128, 344, 4, 4, 4, 2000, False, "made up for tests (about 5 MB in float32)"),
    "smollm2-135m": Preset(576, 1536, 30, 9, 3, 49152, True, "HuggingFaceTB/SmolLM2-135M"),
    "smollm2-360m": Preset(960, 2560, 32, 15, 5, 49152, True, "HuggingFaceTB/SmolLM2-360M"),
    "tinyllama-1.1b": Preset(2048, 5632, 22, 32, 4, 32000, False,
                             "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"),
    "llama-3.2-1b": Preset(2048, 8192, 16, 32, 8, 128256, True, "meta-llama/Llama-3.2-1B", head_dim=64),
    "open_llama_3b": Preset(3200, 8640, 26, 32, 32, 32000, False, "openlm-research/open_llama_3b"),
    "llama-2-7b": Preset(4096, 11008, 32, 32, 32, 32000, False, "meta-llama/Llama-2-7b-hf"),
}
DEFAULT_PRESET = "smollm2-135m"


def preset_shapes(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of a preset, in the order LlamaForCausalLM.named_parameters() lists
    them (a tied lm_head once, as save_pretrained stores it)."""
    return _shapes(PRESETS[name])


def _shapes(preset: Preset) -> list[tuple[str, tuple[int, ...]]]:
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
