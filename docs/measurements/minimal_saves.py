"""A minimal script of the Phase 4 protocol, to measure what the harness adds around a save.

It shares no code with ckptbench. It makes random weights of SmolLM2-135M's shape (float32 holding
float16-exact values, normal(0, 0.02)), then runs the six tests of phase4_config.json in interleaved
rounds (the order rotates every round): each save opens every array and issues every write at once,
waits for all (TensorStore's file kvstore fsyncs each file), then writes manifest.json through the
same kvstore; each cold load follows a page-cache drop, and is checked bit for bit after its clock
stops. Each run's folder is deleted before the next run.

    python docs/measurements/minimal_saves.py --rounds 3 --dir /path/with/2GB/free

Prints each run's seconds, and per test the median save and load, with their sums. As root the page
cache is dropped (`/proc/sys/vm/drop_caches`); otherwise each file is evicted with
posix_fadvise(DONTNEED), and the script says which it used.

`--like-harness` adds what the harness does around a save, one part at a time, to attribute its cost:
`sampler` (a thread reading /proc/self/status every 10 ms during the save, as the harness's memory
sampler does), `mapped` (the weights read from a file mapped read-only and made resident before each
save, as the harness's source file is), `parallel-rm` (each run's folder removed by 16 threads, one
per array folder, as the harness removes it), `bounded` (writes issued within a 512 MiB in-flight
budget, the harness's `max_inflight_bytes`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorstore as ts

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, VOCAB = 576, 1536, 30, 9, 3, 49152  # tied lm_head
GZIP1 = {"id": "gzip", "level": 1}
TESTS = {  # name: (chunk elements, file_io_concurrency, zarr v2 compressor)
    "baseline": (16384, 1, None), "concurrency_128": (16384, 128, None), "chunks_1mb": (262144, 1, None),
    "compression_gzip": (16384, 1, GZIP1), "concurrency_chunks": (262144, 128, None),
    "t5x_full": (262144, 128, GZIP1),
}


def shapes() -> dict[str, tuple[int, ...]]:
    head_dim = HIDDEN // HEADS
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out.update({p + "self_attn.q_proj.weight": (HEADS * head_dim, HIDDEN),
                    p + "self_attn.k_proj.weight": (KV_HEADS * head_dim, HIDDEN),
                    p + "self_attn.v_proj.weight": (KV_HEADS * head_dim, HIDDEN),
                    p + "self_attn.o_proj.weight": (HIDDEN, HEADS * head_dim),
                    p + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
                    p + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
                    p + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE), p + "input_layernorm.weight": (HIDDEN,),
                    p + "post_attention_layernorm.weight": (HIDDEN,)})
    out["model.norm.weight"] = (HIDDEN,)
    return out


def chunks(shape: tuple[int, ...], budget: int) -> list[int]:
    """Halve the largest dimension (rounding up) until the chunk holds at most `budget` elements."""
    chunk = list(shape)
    while math.prod(chunk) > budget:
        axis = chunk.index(max(chunk))
        chunk[axis] = (chunk[axis] + 1) // 2
    return chunk


def spec(root: Path, name: str, shape: tuple[int, ...] | None = None, test: str = "") -> dict:
    out: dict = {"driver": "zarr", "kvstore": {"driver": "file", "path": f"{root}/{name}/"}}
    if shape is None:
        return {**out, "open": True}
    budget, _, compressor = TESTS[test]
    metadata = {"shape": list(shape), "chunks": chunks(shape, budget), "dtype": "<f4", "compressor": compressor}
    return {**out, "create": True, "metadata": metadata, "store_data_equal_to_fill_value": True}


def context(test: str) -> ts.Context:
    return ts.Context({"file_io_concurrency": {"limit": TESTS[test][1]}, "file_io_sync": True})


FACTORS = ("sampler", "mapped", "parallel-rm", "bounded")
BOUND_BYTES = 512 << 20


def sample_status(stop: threading.Event) -> None:
    while not stop.wait(0.01):
        with open("/proc/self/status") as handle:
            for line in handle:
                line.startswith("RssAnon:")


def save(weights: dict[str, np.ndarray], root: Path, test: str, factors: set[str]) -> float:
    root.mkdir(parents=True)
    ctx = context(test)
    stop = threading.Event()
    sampler = threading.Thread(target=sample_status, args=(stop,), daemon=True)
    if "sampler" in factors:
        sampler.start()
    start = time.perf_counter()
    stores = [ts.open(spec(root, n, a.shape, test), context=ctx) for n, a in weights.items()]
    inflight: deque = deque()
    inflight_bytes = 0
    for store, array in zip(stores, weights.values()):
        while "bounded" in factors and inflight and inflight_bytes + array.nbytes > BOUND_BYTES:
            done_bytes, future = inflight.popleft()
            future.result()
            inflight_bytes -= done_bytes
        inflight.append((array.nbytes, store.result().write(array)))
        inflight_bytes += array.nbytes
    for _, future in inflight:
        future.result()
    manifest = json.dumps({"tensors": [[n, list(a.shape)] for n, a in weights.items()]}).encode()
    kv = ts.KvStore.open({"driver": "file", "path": f"{root}/"}, context=ctx).result()
    kv.write("manifest.json", manifest).result()
    elapsed_s = time.perf_counter() - start
    stop.set()
    if sampler.is_alive():
        sampler.join()
    return elapsed_s


def remove(root: Path, factors: set[str]) -> None:
    if "parallel-rm" in factors:
        folders = [entry.path for entry in os.scandir(root) if entry.is_dir()]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(shutil.rmtree, folders))
    shutil.rmtree(root)


def mapped(weights: dict[str, np.ndarray], folder: Path) -> dict[str, np.ndarray]:
    """The weights as one read-only mapped file, each tensor at a 4096-byte boundary."""
    path, offsets, end = folder / "source.bin", {}, 0
    for name, array in weights.items():
        offsets[name], end = end, -(-(end + array.nbytes) // 4096) * 4096
    with open(path, "wb") as handle:
        handle.truncate(end)
        for name, array in weights.items():
            handle.seek(offsets[name])
            handle.write(array.tobytes())
        os.fsync(handle.fileno())
    data = np.memmap(path, dtype=np.uint8, mode="r")
    return {n: data[offsets[n]:offsets[n] + a.nbytes].view(np.float32).reshape(a.shape) for n, a in weights.items()}


def make_resident(weights: dict[str, np.ndarray]) -> None:
    """Touch every page of a mapped source before the clock (the harness uses MADV_POPULATE_READ)."""
    for array in weights.values():
        int(array.reshape(-1).view(np.uint8)[::4096].sum())


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


def load(names: list[str], root: Path, test: str) -> tuple[float, dict[str, np.ndarray]]:
    ctx = context(test)
    start = time.perf_counter()
    stores = [ts.open(spec(root, n), context=ctx) for n in names]
    reads = [s.result().read() for s in stores]
    out = {n: f.result() for n, f in zip(names, reads)}
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("saved_models/minimal_saves"))
    parser.add_argument("--tests", default=",".join(TESTS), help="comma-separated subset of the six")
    parser.add_argument("--like-harness", default="",
                        help=f"comma-separated parts of the harness's protocol: {', '.join(FACTORS)}")
    args = parser.parse_args()
    factors = {f for f in args.like_harness.split(",") if f}
    if factors - set(FACTORS):
        raise SystemExit(f"--like-harness: unknown {sorted(factors - set(FACTORS))}; choose from {FACTORS}")
    rng = np.random.default_rng(0)
    weights = {n: (rng.standard_normal(s, dtype=np.float32) * 0.02).astype(np.float16).astype(np.float32)
               for n, s in shapes().items()}
    print(f"{sum(a.nbytes for a in weights.values()) / 1e9:.2f} GB in {len(weights)} tensors; "
          f"like the harness: {sorted(factors) or 'nothing'}")
    args.dir.mkdir(parents=True, exist_ok=True)
    source = mapped(weights, args.dir) if "mapped" in factors else weights
    names, tests = list(weights), args.tests.split(",")
    times: dict[str, dict[str, list[float]]] = {t: {"save": [], "load": []} for t in tests}
    for round_ in range(args.rounds):
        for test in tests[round_ % len(tests):] + tests[:round_ % len(tests)]:
            root = args.dir / f"r{round_}_{test}"
            if "mapped" in factors:
                make_resident(source)
            save_s = save(source, root, test, factors)
            how = evict(root)
            load_s, loaded = load(names, root, test)
            exact = all(np.array_equal(loaded[n].view(np.uint32), weights[n].view(np.uint32)) for n in names)
            del loaded
            remove(root, factors)
            if not exact:
                raise SystemExit(f"{test}: the load differs from the weights")
            times[test]["save"].append(save_s)
            times[test]["load"].append(load_s)
            print(f"round {round_} {test:20s} save {save_s:6.2f} s  load {load_s:6.2f} s  ({how})", flush=True)
    medians = {t: {k: statistics.median(v) for k, v in times[t].items()} for t in tests}
    for test in tests:
        print(f"{test:20s} median save {medians[test]['save']:6.2f} s  load {medians[test]['load']:6.2f} s")
    print(f"sum of medians: save {sum(m['save'] for m in medians.values()):.2f} s, "
          f"load {sum(m['load'] for m in medians.values()):.2f} s")


if __name__ == "__main__":
    main()
