"""Will it fit, and is it sensible? Disk, memory, run-count and scale checks before a suite starts.

Disk: the source weights and one run of the largest test must fit in the output filesystem's free space. zarr v2 pads
edge chunks to full size and every chunk file occupies whole blocks, so the estimate counts padded chunks rounded up to
4 KiB blocks (an upper bound for uncompressed data; compressed data is assumed no smaller, to stay safe). The device
ceiling keeps five copies (its 1-, 4-, 16- and 32-stream file sets and fio's, whose files are whole 1 MiB blocks).

Memory: the peak anonymous memory of the whole process, estimated per row as a fixed part plus what the row holds
(`peak_memory_bytes`; PHASE4_GUIDE.md, section 9, says what each holds and why the source weights are not counted).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from ckptbench.core import system
from ckptbench.core.units import human_bytes
from ckptbench.spec import chunking
from ckptbench.spec.fields import TestSpec
from ckptbench.spec.references import CEILING, REFERENCES
from ckptbench.spec.suite import MEMORY_BOUND_FIXED_BYTES, SuiteConfig

BLOCK_BYTES = 4096
SAFETY = 1.05
CEILING_COPIES = 5
_FIO_ROUNDING_BYTES = 16 * 2**20  # fio's 16 files, each rounded up to a whole 1 MiB block
# Peak anonymous memory of the whole process = FIXED + multiplier x model bytes (+ TensorStore's bytes in
# flight). The multipliers are the reference registry's (spec.references), TensorStore's is the loaded copy.
FIXED_BYTES = MEMORY_BOUND_FIXED_BYTES  # Python, torch, TensorStore's threads: 0.2-0.3 GB measured
TENSORSTORE_MULTIPLIER = 1.0
# Each worker or tp reader process: Python, torch, TensorStore (0.16-0.24 GB measured on smollm2-135m: 4 workers,
# 3 tp readers of each kind; docs/measurements/memory.md)
WORKER_FIXED_BYTES = 300_000_000
# timed_conversion holds float16 copies (half the model) and, while a load casts, the arrays read
# beside their copies and casts (up to one more model).
TIMED_CONVERSION_MULTIPLIER = 1.5
MAX_SUITE_S = 7 * 24 * 3600.0  # a suite estimated to run longer than a week is refused


@lru_cache(maxsize=65536)  # a sweep of thousands of tests asks for the same few shapes and budgets
def _array_bytes_upper(shape: tuple[int, ...], itemsize: int, budget_elements: int, strategy: str) -> int:
    """Bytes on disk of one zarr v2 array at most (before compression)."""
    chunk = chunking.chunk_shape(shape, budget_elements, strategy)
    n_chunks = math.prod(math.ceil(d / c) for d, c in zip(shape, chunk)) if shape else 1
    chunk_bytes = math.prod(chunk) * itemsize
    return n_chunks * math.ceil(chunk_bytes / BLOCK_BYTES) * BLOCK_BYTES + BLOCK_BYTES  # + .zarray


def run_bytes_upper(test: TestSpec, shapes: Sequence[Sequence[int]], itemsize: int) -> int:
    """Disk bytes one run of a test may take: padded chunks for TensorStore, the raw bytes for references."""
    raw = sum(math.prod(s) for s in shapes) * itemsize + BLOCK_BYTES
    if test.backend == CEILING:
        return CEILING_COPIES * raw + _FIO_ROUNDING_BYTES
    if test.is_reference:
        return raw
    if test.kvstore == "memory":
        return BLOCK_BYTES * 2  # only the manifest touches the disk
    return sum(_array_bytes_upper(tuple(int(d) for d in shape), itemsize, test.chunk_budget_elements(itemsize),
                                  test.chunk_strategy) for shape in shapes)


def disk_refusal(output_dir: Path, need_bytes: int, what: str) -> str | None:
    """Why the output filesystem cannot hold `need_bytes`, or None."""
    free = system.free_bytes(output_dir)
    if need_bytes * SAFETY <= free:
        return None
    return (f"output_dir: {what} needs about {human_bytes(need_bytes)} on disk but {output_dir} has "
            f"{human_bytes(free)} free; free space, choose another --output-dir, or use a smaller --model or "
            "--dtype bfloat16")


def peak_memory_bytes(test: TestSpec, model_bytes: int, max_inflight_bytes: int) -> int:
    """Estimated peak anonymous memory of the whole process while a test runs."""
    if test.is_reference:
        need = REFERENCES[test.backend].memory_bytes(test.reference_settings, model_bytes, test.load_into)
    else:
        # The loaded copy, and what TensorStore holds in flight besides (a read's chunks, a write's copies).
        need = TENSORSTORE_MULTIPLIER * model_bytes + min(max_inflight_bytes, model_bytes)
        if test.kvstore == "memory":
            need += model_bytes  # the checkpoint itself lives in RAM
    if test.timed_conversion:
        need += TIMED_CONVERSION_MULTIPLIER * model_bytes
    if test.save_mode == "async":  # an async save's staged copy (TensorStore's, DCP's stager's, the others')
        need += model_bytes
    if test.processes > 1:
        # The workers (tp readers) at once, all on this host as spawned ones are (a launch has at most as many
        # per host): their parts add up to the model, which `need` counts, each with its own fixed part ...
        need += test.processes * WORKER_FIXED_BYTES
    if _reads_whole_files(test):
        # ... but a reader of the whole file holds all of it before it copies its slice out
        need += (test.tp - 1) * REFERENCES[test.backend].memory_bytes(test.reference_settings, model_bytes)
    return int(FIXED_BYTES + need)


def _reads_whole_files(test: TestSpec) -> bool:
    """A tp row whose every reader loads the whole file (torch.load, the Run:ai streamer), then its slice."""
    return test.tp > 1 and test.is_reference and REFERENCES[test.backend].tp_reads_whole


def memory_need(config: SuiteConfig, model_bytes: int) -> tuple[int, str]:
    """(peak anonymous bytes, the test that sets the peak) of a suite."""
    hungriest = max(config.tests, key=lambda t: peak_memory_bytes(t, model_bytes, config.max_inflight_bytes))
    return peak_memory_bytes(hungriest, model_bytes, config.max_inflight_bytes), hungriest.name


def memory_available_bytes() -> int | None:
    """What this process may use: what the kernel could give it, and what it already holds (part of every estimate's
    fixed part: a later stage of tune or explain is not refused for memory its own process holds)."""
    available = system.available_memory_bytes()
    return None if available is None else available + system.resident_bytes()[0]


def memory_refusal(config: SuiteConfig, model_bytes: int) -> str | None:
    """Why the suite's hungriest test would not fit in RAM, saying what would; None when it fits."""
    available = memory_available_bytes()
    if available is None or not config.tests:
        return None
    need, hungriest = memory_need(config, model_bytes)
    if need * SAFETY <= available:
        return None
    alternatives = []
    row = next(t for t in config.tests if t.name == hungriest)
    if _reads_whole_files(row):
        alternatives.append(f"references.{row.backend}: false (each of its {row.tp} tp readers holds the whole model)")
    if config.dtype == "float32":
        half, _ = memory_need(config, model_bytes // 2)
        alternatives.append(f"--dtype bfloat16 (needs about {human_bytes(half)})")
    alternatives.append("a smaller --model (see --list-models)")
    return (f"memory: the weights ({human_bytes(model_bytes)}) need about {human_bytes(need)} of RAM at the peak "
            f"(test {hungriest!r}) but {human_bytes(available)} is available; use {' or '.join(alternatives)}")


# Seconds of one run before anything is measured: a fixed part, and seconds per GB of model by what the run
# does. Measured on a 2-core VM (smollm2-135m at 0.54 GB, open_llama_3b in bfloat16 at 6.85 GB; the guide's
# tables): raw chunks of 1 MiB or more cost about 3 s/GB (save + cold load); chunks under 256 KiB cost 20 s/GB
# more with one I/O at a time, 6 with many; gzip, zlib and bz2 add 14 s/GB (CPU), zstd 3, blosc 2. Each run
# also makes the source resident again, verifies and deletes: about 1 s/GB.
PRIOR_FIXED_S = 0.6
PRIOR_RUN_OVERHEAD_S_PER_GB = 1.0
PRIOR_RAW_S_PER_GB = 3.0
PRIOR_SMALL_CHUNK_BYTES = 256 * 2**10
PRIOR_SMALL_CHUNK_S_PER_GB = {True: 20.0, False: 6.0}  # one I/O at a time or not
PRIOR_CODEC_S_PER_GB = {"gzip": 14.0, "zlib": 14.0, "bz2": 14.0, "zstd": 3.0, "blosc": 2.0, "blosc-default": 2.0}
PRIOR_SOURCE_S_PER_GB = 8.0  # making the weights (drawn, or read and converted) and writing the source file


def prior_run_s(test: TestSpec, model_bytes: int, itemsize: int = 4, first: bool = True) -> float:
    """One run of a test, before any is measured (`first`: the device ceiling's first run runs its whole grid)."""
    if test.is_reference:
        kind = REFERENCES[test.backend]
        per_gb = kind.prior_s_per_gb if first else kind.prior_later_s_per_gb
    else:
        per_gb = PRIOR_RAW_S_PER_GB + PRIOR_CODEC_S_PER_GB.get((test.compression or {}).get("id", ""), 0.0)
        if test.chunk_budget_elements(itemsize) * itemsize < PRIOR_SMALL_CHUNK_BYTES:
            per_gb += PRIOR_SMALL_CHUNK_S_PER_GB[test.concurrency_limit == 1]
    return PRIOR_FIXED_S + (per_gb + PRIOR_RUN_OVERHEAD_S_PER_GB) * (model_bytes / 1e9)


def estimate_suite_s(config: SuiteConfig, model_bytes: int, itemsize: int = 4) -> float:
    """A suite's wall time before anything is measured: the source weights, then every run by its prior."""
    rounds = config.num_runs + config.warmup_rounds
    runs_s = sum(prior_run_s(t, model_bytes, itemsize) + (rounds - 1) * prior_run_s(t, model_bytes, itemsize, False)
                 for t in config.tests)
    return PRIOR_SOURCE_S_PER_GB * model_bytes / 1e9 + runs_s + _confirmation_s(config, model_bytes, itemsize)


def confirmation_runs_upper(config: SuiteConfig) -> int:
    """At most how many confirmation runs a suite makes: per objective its best and its fastest peer, and the ceiling,
    each confirm_rounds x confirm_blocks times (the finalists are known only after the rounds)."""
    references = [t for t in config.tests if t.is_reference]
    if not config.confirm_rounds or not references:  # nothing to compare a winner with: nothing to confirm
        return 0
    objectives = len(config.confirm_objectives)
    ceiling = any(t.backend == CEILING for t in references)
    finalists = (min(len(config.tests) - len(references), objectives) + min(len(references) - ceiling, objectives)
                 + ceiling)
    return finalists * config.confirm_rounds * config.confirm_blocks


def _confirmation_s(config: SuiteConfig, model_bytes: int, itemsize: int) -> float:
    """The confirmation rounds' time by the tests' mean prior, and the pauses between their blocks."""
    runs = confirmation_runs_upper(config)
    if not runs:
        return 0.0
    per_run_s = sum(prior_run_s(t, model_bytes, itemsize, False) for t in config.tests) / len(config.tests)
    return runs * per_run_s + (config.confirm_blocks - 1) * config.confirm_pause_s


def duration_refusal(config: SuiteConfig, model_bytes: int, itemsize: int = 4, what: str = "--runs") -> str | None:
    """Why a suite is absurdly long, with the estimate; None when it is not."""
    seconds = estimate_suite_s(config, model_bytes, itemsize)
    if seconds <= MAX_SUITE_S:
        return None
    n_runs = len(config.tests) * (config.num_runs + config.warmup_rounds)
    return (f"{what}: {n_runs:,} runs of a {human_bytes(model_bytes)} checkpoint would take about "
            f"{duration_words(seconds)}; ask for fewer runs or tests")


def duration_words(seconds: float) -> str:
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("hours", 3600)):
        if seconds >= size:
            return f"{seconds / size:,.0f} {unit}"
    return f"{seconds / 60:,.0f} minutes"


def suggest_preset(ram_bytes: int | None, dtype: str, config: SuiteConfig) -> str | None:
    """The smallest preset of at least a quarter of RAM that would still fit in memory here, as flags."""
    from ckptbench.spec.presets import NUMPY_DTYPES, PRESETS

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
