"""Tensor parallelism: which part of each LLaMA tensor a rank of N needs, and which N a model allows.

Megatron's rule on HF's [out_features, in_features] layout, as vLLM shards LLaMA (PHASE4_GUIDE.md, section 4.11):
column-parallel tensors split their rows, row-parallel ones their columns, the rest is replicated whole. A rank's part
is a `Box` (verification selects the same part of the source with it); a split dimension N does not divide is split as
evenly as possible, the lower ranks taking one more row.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

from ckptbench.spec.presets import PRESETS, preset_shapes

Box = tuple[tuple[int, int], ...]  # the same as sources.source_file.Box (spec sits below sources)

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head", "embed_tokens")
ROW_PARALLEL = ("o_proj", "down_proj")


def split_dim(name: str, shape: Sequence[int]) -> int | None:
    """The dimension a tensor is split on across ranks, or None: replicated whole."""
    parts = name.split(".")  # its module: "model.layers.0.self_attn.o_proj.weight" -> "o_proj"
    module = parts[-2] if len(parts) >= 2 else parts[0]
    if module in COLUMN_PARALLEL and len(shape) >= 1:
        return 0  # a column-parallel bias splits with its rows too
    if module in ROW_PARALLEL and len(shape) >= 2:
        return 1  # a row-parallel bias is added after the all-reduce: replicated
    return None


def bounds(size: int, tp: int, rank: int) -> tuple[int, int]:
    """Rank `rank`'s [start, stop) of `size` split `tp` ways, as evenly as possible."""
    base, extra = divmod(size, tp)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def rank_box(name: str, shape: Sequence[int], tp: int, rank: int) -> Box:
    """The part of a tensor rank `rank` of `tp` reads: its slice of the split dimension, or () (all of it)."""
    dim = split_dim(name, shape) if tp > 1 else None
    if dim is None:
        return ()
    return tuple((0, int(shape[d])) for d in range(dim)) + (bounds(int(shape[dim]), tp, rank),)


def rank_boxes(shapes: Mapping[str, Sequence[int]], tp: int) -> list[dict[str, Box]]:
    """Per rank, the box of every tensor it reads (every tensor: replicated ones whole)."""
    return [{name: rank_box(name, shape, tp, rank) for name, shape in shapes.items()} for rank in range(tp)]


def refusal(tp: int, model: str | None, shapes: Mapping[str, Sequence[int]] | None = None,
            flag: str = "--tp", aligned: bool = False) -> str | None:
    """Why `tp` cannot shard this model (one line naming the fix), or None (PHASE4_GUIDE.md, section 4.11, says which
    N each model takes). `model`: a preset's name, None for a checkpoint (no head counts known), whose split
    dimensions are `shapes`; `aligned`: chunk_strategy "tp_aligned", which needs every split to be even."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        return f"{flag}: {tp!r} is not a number of tensor-parallel ranks; use 1 or more (1: one whole load)"
    if tp == 1:
        return None
    if model is not None:
        preset = PRESETS[model]
        heads, kv_heads = preset.num_attention_heads, preset.num_key_value_heads
        if heads % tp or kv_heads % tp:
            fits = [n for n in range(2, kv_heads + 1) if heads % n == 0 and kv_heads % n == 0]
            others = [name for name, p in PRESETS.items()
                      if name != model and p.num_attention_heads % tp == 0 and p.num_key_value_heads % tp == 0]
            fixes = [f"{flag} {' or '.join(map(str, fits[:3]))}"] if fits else []
            fixes += [f"--model {' or '.join(others[:2])}"] if others else []
            return (f"{flag} {tp}: model {model} has {heads} attention heads and {kv_heads} kv heads, and a rank "
                    f"holds whole heads; use {', or '.join(fixes) or 'a smaller ' + flag}")
        if shapes is None:
            shapes = dict(preset_shapes(model))
    splits = {name: (dim, int(shape[dim])) for name, shape in (shapes or {}).items()
              if (dim := split_dim(name, shape)) is not None}
    even = model is None or aligned  # a preset's dimension tp does not divide is split as evenly as possible
    for name, (dim, size) in splits.items():
        if size < tp:
            return (f"{flag} {tp}: tensor {name} has {size} rows along its split dimension {dim}, fewer than "
                    f"{tp} ranks; use {flag} {size} or less")
        if even and size % tp:
            by_chunks = aligned and model is not None  # a preset's uneven split is refused for tp_aligned only
            why = "chunk_strategy \"tp_aligned\" puts chunk boundaries on the split, and " if by_chunks else ""
            other = ", or a chunk_strategy other than \"tp_aligned\"" if by_chunks else ""
            return (f"{flag} {tp}: {why}tensor {name} has {size} along its split dimension {dim}, which {tp} ranks "
                    f"cannot split evenly; {_dividing(model, splits.values(), flag)}{other}")
    return None


def _dividing(model: str | None, splits: Iterable[tuple[int, int]], flag: str) -> str:
    """The tp values (up to 64) that divide every split dimension, and a preset's heads and kv heads, in words."""
    common = math.gcd(*(size for _, size in splits))
    if model is not None:
        common = math.gcd(common, PRESETS[model].num_attention_heads, PRESETS[model].num_key_value_heads)
    fits = [n for n in range(2, min(common, 64) + 1) if common % n == 0]
    if not fits:
        return f"no tp above 1 divides them all; use {flag} 1"
    return f"use {flag} {', '.join(map(str, fits[:-1]))}{' or ' if len(fits) > 1 else ''}{fits[-1]}"
