"""An independent check of the harness's load verdict: the Run:ai Model Streamer against TensorStore's fastest
loading layout, timed by a short script that shares no code with ckptbench.

It makes random bfloat16 weights of a LLaMA shape (open_llama_3b by default: 6.85 GB), writes them once as one
safetensors file and as zarr v2 arrays of raw 16 MiB chunks, fsyncs both, then loads each in interleaved
rounds (the order rotates every round) from a cold page cache, and prints each load's seconds. Every load is
checked against the weights' digests after its clock stops.

    python docs/measurements/independent_loads.py --rounds 4 --dir /path/with/15GB/free

Cold: as root the page cache is dropped (`/proc/sys/vm/drop_caches`); otherwise each file is evicted with
posix_fadvise(DONTNEED) after an fsync, and the script says which it used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import tensorstore as ts
import torch
import xxhash
from safetensors.torch import save_file

# Published configurations (hidden, intermediate, layers, vocabulary); every model here has an untied lm_head.
SHAPES = {"open_llama_3b": (3200, 8640, 26, 32000), "tinyllama-1.1b": (2048, 5632, 22, 32000),
          "llama-2-7b": (4096, 11008, 32, 32000),
          "smoke": (256, 688, 2, 1000)}  # a few MB: checks the script, measures nothing
CHUNK_BYTES = 16 << 20


def tensor_shapes(model: str) -> dict[str, tuple[int, ...]]:
    hidden, inter, layers, vocab = SHAPES[model]
    kv = hidden  # these three models use full multi-head attention
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
                                          "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                       p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, kv),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    return shapes


def digest(array: np.ndarray) -> str:
    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(array).view(np.uint8))


def zarr_spec(root: Path, name: str, shape: tuple[int, ...] | None = None) -> dict:
    spec: dict = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(root / name)}}
    if shape is not None:  # 16 MiB chunks of whole rows
        row_bytes = 2 * (shape[1] if len(shape) > 1 else 1)
        rows = max(1, min(shape[0], CHUNK_BYTES // row_bytes))
        spec.update(create=True, metadata={"shape": list(shape), "chunks": [rows, *shape[1:]],
                                           "dtype": "bfloat16", "compressor": None})
    return spec


def fsync_tree(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make(model: str, root: Path, seed: int) -> dict[str, str]:
    """Write the weights both ways; return each tensor's digest."""
    torch.manual_seed(seed)
    weights = {n: torch.empty(s, dtype=torch.bfloat16).normal_(0, 0.02) for n, s in tensor_shapes(model).items()}
    save_file(weights, str(root / "model.safetensors"))
    context = ts.Context({"file_io_concurrency": {"limit": 128}})
    arrays = {n: t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16) for n, t in weights.items()}
    stores = {n: ts.open(zarr_spec(root / "zarr", n, a.shape), context=context).result() for n, a in arrays.items()}
    for future in [stores[n].write(a) for n, a in arrays.items()]:
        future.result()
    fsync_tree(root)
    return {n: digest(a) for n, a in arrays.items()}


def evict(root: Path) -> str:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        for path in root.rglob("*"):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
        return "fadvise"


def load_streamer(root: Path) -> dict[str, np.ndarray]:
    from runai_model_streamer import SafetensorsStreamer

    out = {}
    with SafetensorsStreamer() as streamer:
        streamer.stream_file(str(root / "model.safetensors"), device="cpu")
        for name, tensor in streamer.get_tensors():
            out[name] = tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return out


def load_tensorstore(root: Path, names: list[str], into: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    context = ts.Context({"file_io_concurrency": {"limit": 128}, "file_io_mode": {"mode": "direct"}})
    stores = {n: ts.open(zarr_spec(root / "zarr", n), context=context) for n in names}
    stores = {n: f.result() for n, f in stores.items()}
    if into is None:
        reads = {n: s.read() for n, s in stores.items()}
        return {n: f.result() for n, f in reads.items()}
    writes = [ts.array(into[n], copy=False, write=True).write(s) for n, s in stores.items()]
    for future in writes:
        future.result()
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="open_llama_3b", choices=sorted(SHAPES))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=Path("saved_models/independent_loads"))
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=False)  # never reuse (or delete) a folder this run did not make
    try:
        digests = make(args.model, args.dir, args.seed)
        names = list(digests)
        shapes = tensor_shapes(args.model)
        loaders = {
            "runai_streamer": lambda into: load_streamer(args.dir),
            "tensorstore_16MiB_direct": lambda into: load_tensorstore(args.dir, names, None),
            "tensorstore_16MiB_direct_preallocated": lambda into: load_tensorstore(args.dir, names, into),
        }
        seconds: dict[str, list[float]] = {name: [] for name in loaders}
        for round_index in range(args.rounds):
            order = list(loaders)[round_index % 3:] + list(loaders)[:round_index % 3]
            for name in order:
                into = None
                if name.endswith("preallocated"):  # allocated and touched before the clock
                    into = {n: np.ones(shapes[n], dtype=ml_dtypes.bfloat16) for n in names}
                how = evict(args.dir)
                start = time.perf_counter()
                loaded = loaders[name](into)
                load_s = time.perf_counter() - start
                bad = [n for n in names if digest(loaded[n]) != digests[n]]
                if bad:
                    raise SystemExit(f"{name}: {len(bad)} tensors differ from what was written, e.g. {bad[0]}")
                seconds[name].append(load_s)
                print(f"round {round_index} {name}: {load_s:.2f} s (cold by {how}, verified)", flush=True)
                del loaded, into
        for name, values in seconds.items():
            print(f"{name}: median {statistics.median(values):.2f} s, runs " + ", ".join(f"{v:.2f}" for v in values))
    finally:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
