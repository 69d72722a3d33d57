"""A finished suite: its tests and every suite-wide setting, resolved (defaults filled, paths absolute)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptbench.spec.fields import TestSpec
from ckptbench.spec.presets import DEFAULT_PRESET

DTYPES = ("float32", "bfloat16", "float16")
DEFAULT_OUTPUT_DIR = "saved_models/phase4_tests"
MAX_PROCESSES = 256
# The bound on the whole process's anonymous memory that the harness keeps, over every row of a suite: the
# loaded copy and what is in flight within 1.25 x the model, Python, torch and TensorStore within 1 GB.
MEMORY_BOUND_MULTIPLIER = 1.25
MEMORY_BOUND_FIXED_BYTES = 1.0e9
# What a best is chosen by (a test's best, tune's --objective), each with the run figure it minimises.
OBJECTIVES = {"save": "save_s", "load": "load_s", "balanced": "total_s", "size": "size_bytes"}
CONFIRM_OBJECTIVES = tuple(OBJECTIVES)[:3]  # the timed objectives: a size has no run-to-run noise


@dataclass(frozen=True)
class SuiteConfig:
    """Everything a suite needs, resolved: defaults filled, paths absolute, tests expanded."""

    tests: tuple[TestSpec, ...]
    baseline: str
    output_dir: Path
    skipped: tuple[tuple[str, str], ...] = ()  # sweep points that cannot run: (name, reason)
    storage: str | None = None  # where checkpoints go: None (OUTPUT_DIR/runs), a folder, s3://, gs://, memory://
    storage_options: dict[str, Any] = field(default_factory=dict)
    processes: tuple[int, ...] = (1,)  # each value runs every TensorStore test with that many processes
    tp: tuple[int, ...] | None = None  # each value loads every test (references too) tensor-parallel; None: tests' own
    model: str = DEFAULT_PRESET
    weights: str | None = None  # a local checkpoint folder (absolute) or a Hugging Face id "org/name[@rev]"
    dtype: str = "float32"
    values: str = "random"  # how preset weights are drawn; see presets.VALUES
    num_runs: int = 3
    warmup_rounds: int = 0
    seed: int | None = None
    cache_eviction: str = "auto"
    load_into: str = "new"  # every row's destination (fields.LOAD_INTO), unless a TensorStore test sets its own
    order: str = "interleaved"
    max_inflight_bytes: int = 512 * 2**20  # TensorStore's write copies what is in flight: this bounds the copy
    noise_pct: float = 5.0
    # After the rounds: TensorStore's best and the fastest peer of each of `confirm_objectives` (and the device
    # ceiling) measured again in `confirm_blocks` blocks of `confirm_rounds` fresh interleaved rounds, a pause of
    # `confirm_pause_s` between blocks; the answer's ratios come from those runs alone. 0 rounds: off.
    confirm_rounds: int = 0
    confirm_blocks: int = 2
    confirm_pause_s: float = 0.0
    confirm_objectives: tuple[str, ...] = CONFIRM_OBJECTIVES
    config_path: Path | None = field(default=None, compare=False)

    def test(self, name: str) -> TestSpec:
        return next(t for t in self.tests if t.name == name)

    def values_for(self, test: TestSpec) -> str:
        """How the test's weights are drawn: its own `values`, else the suite's."""
        return test.values or self.values

    def eviction_for(self, test: TestSpec) -> str:
        """How the test's loads are made cold: its own `cache_eviction`, else the suite's. "auto" under tp > 1 is
        "fadvise": drop_caches also drops the libraries the readers have mapped, whose pages they then read back
        during the load, in its time and in their read_bytes; fadvise drops only the checkpoint's files."""
        method = test.cache_eviction or self.cache_eviction
        return "fadvise" if method == "auto" and test.tp > 1 else method

    @property
    def blocks(self) -> tuple[tuple[str, ...], ...]:
        """The tests of each `block`, in config order (records.Plan runs each block back to back)."""
        groups: dict[str, list[str]] = {}
        for test in self.tests:
            if test.block is not None:
                groups.setdefault(test.block, []).append(test.name)
        return tuple(tuple(names) for names in groups.values())

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["tests"] = [t.to_json() for t in self.tests]
        out["skipped"] = [list(pair) for pair in self.skipped]
        for key in ("output_dir", "config_path"):
            out[key] = None if out[key] is None else str(out[key])
        return out
