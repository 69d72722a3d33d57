"""Will it fit, and is it sensible? Disk, memory, run-count and scale checks before a suite starts.

Disk: the source weights and one run of the largest test must fit in the output
filesystem's free space. zarr v2 pads edge chunks to full size and every chunk file
occupies whole blocks, so the estimate counts padded chunks rounded up to 4 KiB blocks
(an upper bound for uncompressed data; compressed data is assumed no smaller, to stay
safe). The device ceiling keeps three copies (its 1-, 4- and 16-stream file sets).

Memory: the peak anonymous memory of the whole process, estimated per row as a fixed
part plus what the row holds (measured with the per-operation split of resident memory;
docs/measurements/memory.md). The source weights are a mapped file, page cache the
kernel can drop, so they are not counted: a load holds the loaded copy (1x the model),
and TensorStore's reads and writes hold at most `max_inflight_bytes` in flight besides.
The bound this keeps is 1.25 x the model + 1 GB.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

from ckptbench.core import system
from ckptbench.core.errors import UserError
from ckptbench.core.units import human_bytes
from ckptbench.spec import chunking
from ckptbench.spec.fields import TestSpec
from ckptbench.spec.references import REFERENCES
from ckptbench.spec.suite import SuiteConfig

BLOCK_BYTES = 4096
SAFETY = 1.05
CEILING_COPIES = 3
# Peak anonymous memory of the whole process = FIXED + multiplier x model bytes (+ TensorStore's bytes in
# flight). The multipliers are the reference registry's (spec.references), TensorStore's is the loaded copy.
FIXED_BYTES = 1.0e9  # Python, torch, TensorStore's threads: 0.2-0.3 GB measured; the bound allows 1 GB
TENSORSTORE_MULTIPLIER = 1.0
BOUND_MULTIPLIER = 1.25  # the bound the design keeps: 1.25 x the model + FIXED_BYTES
MAX_SUITE_S = 7 * 24 * 3600.0  # a suite estimated to run longer than a week is refused
ESTIMATE_GBPS = 0.5  # for the run-time estimate: a pessimistic disk, fsync'd writes and cold reads
ESTIMATE_RUN_OVERHEAD_S = 0.5


def checkpoint_bytes_upper(shapes: Iterable[Sequence[int]], itemsize: int, budget_elements: int, strategy: str) -> int:
    """Bytes on disk of one zarr v2 checkpoint at most (before compression)."""
    total = 0
    for shape in shapes:
        chunk = chunking.chunk_shape(shape, budget_elements, strategy)
        n_chunks = math.prod(math.ceil(d / c) for d, c in zip(shape, chunk)) if shape else 1
        chunk_bytes = math.prod(chunk) * itemsize
        total += n_chunks * math.ceil(chunk_bytes / BLOCK_BYTES) * BLOCK_BYTES + BLOCK_BYTES  # + .zarray
    return total


def run_bytes_upper(test: TestSpec, shapes: Sequence[Sequence[int]], itemsize: int) -> int:
    """Disk bytes one run of a test may take: padded chunks for TensorStore, the raw bytes for references."""
    raw = sum(math.prod(s) for s in shapes) * itemsize + BLOCK_BYTES
    if test.backend == "device_ceiling":
        return CEILING_COPIES * raw
    if test.is_reference:
        return raw
    if test.kvstore == "memory":
        return BLOCK_BYTES * 2  # only the manifest touches the disk
    return checkpoint_bytes_upper(shapes, itemsize, test.chunk_budget_elements(itemsize), test.chunk_strategy)


def check_disk(output_dir: Path, need_bytes: int, what: str) -> None:
    free = system.free_bytes(output_dir)
    if need_bytes * SAFETY > free:
        raise UserError(
            f"output_dir: {what} needs about {human_bytes(need_bytes)} on disk but {output_dir} has "
            f"{human_bytes(free)} free; free space, choose another --output-dir, or use a smaller --model or "
            "--dtype bfloat16"
        )


def peak_memory_bytes(test: TestSpec, model_bytes: int, max_inflight_bytes: int) -> int:
    """Estimated peak anonymous memory of the whole process while a test runs."""
    if test.is_reference:
        need = REFERENCES[test.backend].memory_multiplier * model_bytes
    else:
        # The loaded copy, and what TensorStore holds in flight besides (a read's chunks, a write's copies).
        need = TENSORSTORE_MULTIPLIER * model_bytes + min(max_inflight_bytes, model_bytes)
        if test.kvstore == "memory":
            need += model_bytes  # the checkpoint itself lives in RAM
    if test.timed_conversion:
        need += TIMED_CONVERSION_MULTIPLIER * model_bytes
    return int(FIXED_BYTES + need)


# timed_conversion holds float16 copies (half the model) and, while a load casts, the arrays read
# beside their copies and casts (up to one more model).
TIMED_CONVERSION_MULTIPLIER = 1.5


def check_memory(config: SuiteConfig, model_bytes: int) -> None:
    """Refuse up front a suite whose hungriest test would not fit in RAM, saying what would.

    What this process already holds counts as available: it is part of the estimate's fixed part (a later
    stage of tune or explain must not be refused for memory its own process holds)."""
    available = system.available_memory_bytes()
    if available is None or not config.tests:
        return
    available += system.resident_bytes()[0]
    hungriest = max(config.tests, key=lambda t: peak_memory_bytes(t, model_bytes, config.max_inflight_bytes))
    need = peak_memory_bytes(hungriest, model_bytes, config.max_inflight_bytes)
    if need * SAFETY <= available:
        return
    alternatives = []
    if config.dtype == "float32":
        half = peak_memory_bytes(hungriest, model_bytes // 2, config.max_inflight_bytes)
        alternatives.append(f"--dtype bfloat16 (needs about {human_bytes(half)})")
    alternatives.append("a smaller --model (see --list-models)")
    raise UserError(
        f"memory: the weights ({human_bytes(model_bytes)}) need about {human_bytes(need)} of RAM at the peak "
        f"(test {hungriest.name!r}) but {human_bytes(available)} is available; use {' or '.join(alternatives)}"
    )


def estimate_suite_s(n_runs: int, model_bytes: int) -> float:
    """A rough, pessimistic duration: every run writes and reads the model once."""
    return n_runs * (2 * model_bytes / (ESTIMATE_GBPS * 1e9) + ESTIMATE_RUN_OVERHEAD_S)


def check_duration(n_runs: int, model_bytes: int, what: str = "--runs") -> None:
    """Refuse a suite whose estimated duration is absurd, with the estimate."""
    seconds = estimate_suite_s(n_runs, model_bytes)
    if seconds > MAX_SUITE_S:
        raise UserError(f"{what}: {n_runs:,} runs of a {human_bytes(model_bytes)} checkpoint would take about "
                        f"{_duration(seconds)} (at {ESTIMATE_GBPS:g} GB/s); ask for fewer runs")


def _duration(seconds: float) -> str:
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("hours", 3600)):
        if seconds >= size:
            return f"{seconds / size:,.0f} {unit}"
    return f"{seconds / 60:,.0f} minutes"


def suggest_preset(ram_bytes: int | None, dtype: str, config: SuiteConfig) -> str | None:
    """The smallest preset of at least a quarter of RAM that would still fit in memory here, as flags."""
    from ckptbench.sources.weights import NUMPY_DTYPES, PRESETS

    if not ram_bytes:
        return None
    for candidate_dtype in dict.fromkeys((dtype, "bfloat16")):
        itemsize = NUMPY_DTYPES[candidate_dtype].itemsize
        sized = sorted((PRESETS[name].n_params * itemsize, name) for name in PRESETS)
        for model_bytes, name in sized:
            fits = all(peak_memory_bytes(t, model_bytes, config.max_inflight_bytes) * SAFETY <= ram_bytes
                       for t in config.tests)
            if model_bytes >= ram_bytes / 4 and fits:
                return f"--model {name}" + (f" --dtype {candidate_dtype}" if candidate_dtype != dtype else "")
    return None
