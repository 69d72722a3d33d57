"""A made-up disk for checks of decisions: deterministic seconds and sizes from a test's settings.

Each run's figures come from the test's settings plus a 5 % log-normal noise seeded by the
stage, the test and the round, so the same suite gives the same figures whatever order it
runs in. The tune and explain tests use it to check that the same measurements lead to
the same answers (`tests/fixtures/same_answers.json` holds them).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

REFERENCE_SECONDS = {"safetensors": (1.0, 2.0), "torch_save": (2.4, 1.1), "device_ceiling": (0.4, 0.3),
                     "runai_streamer": (1.0, 0.9), "fastsafetensors": (1.0, 1.6), "torch_dcp": (1.5, 1.4)}
CPU_S = {None: 0.0, "zstd": 0.6, "blosc": 0.4, "blosc-default": 0.4, "gzip": 5.0, "zlib": 5.0, "bz2": 9.0}
SIZE_RATIO = {"random": {None: 1.0, "zstd": 0.93, "blosc": 0.97, "blosc-default": 0.97, "gzip": 0.92, "zlib": 0.92,
                         "bz2": 0.9},
              "float16": {None: 1.0, "zstd": 0.62, "blosc": 0.7, "blosc-default": 0.7, "gzip": 0.63, "zlib": 0.63,
                          "bz2": 0.6},
              "bfloat16": {None: 1.0, "zstd": 0.5, "blosc": 0.6, "blosc-default": 0.6, "gzip": 0.52, "zlib": 0.52,
                           "bz2": 0.5}}
RUN_OVERHEAD_S = 1.5  # eviction, verification, deletion: counted in a run's wall time, not in its figures
MODEL_BYTES = 5_000_000


def noise(stage: str, test: str, round_: int, which: str) -> float:
    seed = zlib.crc32(f"{stage}|{test}|{round_}|{which}".encode())
    return float(math.exp(np.random.default_rng(seed).normal(0.0, 0.05)))


def true_seconds(test: Any, values: str) -> tuple[float, float]:
    """(save s, load s) of one run on the made-up disk."""
    if test.backend != "tensorstore":
        return REFERENCE_SECONDS[test.backend]
    chunk = test.chunk_bytes or test.chunk_size_elements * 4
    io = 0.3 + 2.0 / math.sqrt(chunk / 2 ** 18) / math.sqrt(test.concurrency_limit)
    cpu = CPU_S[(test.compression or {}).get("id")]
    save_s = io + cpu + 0.2 * (test.format == "zarr3")
    load_s = io * (0.8 if test.file_io_mode == "direct" else 1.0) + cpu / 3
    if test.in_flight == "one_tensor":
        save_s, load_s = 1.3 * save_s, 1.3 * load_s
    if test.timed_conversion:
        save_s, load_s = save_s + 0.3, load_s + 0.3
    return save_s, load_s


def true_size(test: Any, values: str) -> int:
    if test.backend != "tensorstore":
        return MODEL_BYTES
    ratio = SIZE_RATIO.get(values, SIZE_RATIO["random"])[(test.compression or {}).get("id")]
    return int(MODEL_BYTES * ratio) + 4096 * (test.format == "zarr3")


def record_for(record_class: Any, suite: Any, stage: str, test: Any, planned: Any) -> tuple[Any, float]:
    """The run's record on the made-up disk, and the run's wall seconds."""
    values = suite.values_for(test)
    save_s, load_s = true_seconds(test, values)
    save_s *= noise(stage, test.name, planned.round, "save")
    load_s *= noise(stage, test.name, planned.round, "load")
    warm = suite.eviction_for(test) == "none"
    if warm:
        load_s *= 0.3
    size = true_size(test, values)
    record = record_class(test.name, planned.round, planned.position, planned.warmup, save_s=save_s, load_s=load_s,
                          size_bytes=size, disk_bytes=size, n_files=10, load_cache="warm" if warm else "cold",
                          eviction=None if warm else "drop_caches", verified=True)
    if test.warm_load:
        record.warm_load_s = 0.3 * load_s / noise(stage, test.name, planned.round, "load") \
            * noise(stage, test.name, planned.round, "warm")
        record.warm_load_cache = "warm"
    return record, save_s + load_s + (record.warm_load_s or 0.0) + RUN_OVERHEAD_S
