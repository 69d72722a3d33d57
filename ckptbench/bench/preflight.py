"""Everything a suite is checked for before anything is written, and the plan a dry run prints.

`check` reads the config, the storage target and the weights' headers, and estimates the suite's wall time, disk and
peak memory (bench.capacity). A mistake in the input raises a UserError at once; a suite that would not fit (too long,
too little disk or memory) gives its reason in `refusal`, so `run_suite` refuses it and `--dry-run` prints the plan and
the verdict. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptbench.bench import capacity, targets, workspace
from ckptbench.core import system
from ckptbench.core.errors import UserError
from ckptbench.sources import weights
from ckptbench.spec import tensor_parallel
from ckptbench.spec.presets import NUMPY_DTYPES
from ckptbench.spec.suite import SuiteConfig


@dataclass(frozen=True)
class Preflight:
    """A checked suite: what it will measure and need, and why it cannot run (None: it can)."""

    config: SuiteConfig
    target: targets.Target
    planned: weights.Planned | None  # None when the caller brings its own weights
    weights: dict[str, Any]  # what results.json will say of them
    model_bytes: int
    n_runs: int
    estimate_s: float
    disk_need_bytes: int | None  # None: a remote store
    disk_free_bytes: int | None
    memory_need_bytes: int
    memory_available_bytes: int | None
    hungriest: str  # the test that sets the memory peak
    other_values: tuple[str, ...]  # values of tests whose own differ from the suite's (a source file each)
    refusal: str | None

    def to_json(self) -> dict[str, Any]:
        """The plan as a dry run reports it."""
        return {"tests": len(self.config.tests), "runs_per_test": self.config.num_runs + self.config.warmup_rounds,
                "confirmation_runs": capacity.confirmation_runs_upper(self.config),
                "runs": self.n_runs, "order": self.config.order, "weights": self.weights,
                "estimate_s": self.estimate_s, "disk_need_bytes": self.disk_need_bytes,
                "disk_free_bytes": self.disk_free_bytes, "output_dir": str(self.config.output_dir),
                "memory_need_bytes": self.memory_need_bytes, "memory_available_bytes": self.memory_available_bytes,
                "hungriest": self.hungriest, "refusal": self.refusal}


def check(config: SuiteConfig, source: weights.Weights | None = None, whole: bool = True) -> Preflight:
    """The checks before a suite writes anything (module docstring). `whole` False: the suite is a set of candidates of
    which only some will run (tune), so its duration is not judged."""
    targets.set_http_timeouts()
    workspace.check_output_dir(config.output_dir)
    target = targets.parse(config.storage, config.output_dir, config.storage_options)
    target.check()  # a remote store: endpoint, credentials and bucket, before anything is written
    local_weights, origin = weights.resolve(config.weights)  # a hub id: from the cache, or downloaded
    itemsize = NUMPY_DTYPES[config.dtype].itemsize
    model_bytes = (source.size_bytes if source is not None
                   else weights.estimate_bytes(config.model, local_weights, config.dtype))
    other_values = tuple(sorted({config.values_for(t) for t in config.tests} - {config.values}))
    refusal = ((capacity.duration_refusal(config, model_bytes, itemsize) if whole else None)
               or capacity.memory_refusal(config, model_bytes))
    if local_weights is not None:
        for folder, what in ((config.output_dir, "--output-dir"), (getattr(target, "output_dir", None), "--storage")):
            if folder is not None and Path(folder).is_relative_to(local_weights.resolve()):
                raise UserError(f"{what}: {folder} is inside the weights folder; choose another folder")
    planned = None
    if source is None and refusal is None:  # reading a checkpoint's headers comes after the cheap checks
        planned = weights.plan(config.model, local_weights, config.dtype, config.values, origin)
        model_bytes = planned.size_bytes
    if planned is not None and config.weights is not None:  # a checkpoint's split dimensions, known only now
        _check_tp(config, dict(planned.shapes))
    if source is not None:
        shapes, described = [a.shape for a in source.tensors.values()], source.describe()
    elif planned is not None:
        shapes, described = [shape for _, shape in planned.shapes], planned.describe()
    else:
        named = {"name": config.model, "values": config.values} if config.weights is None else {"path": config.weights}
        shapes, described = None, {**named, "size_bytes": model_bytes, "dtype": config.dtype}
    disk_need = disk_free = None
    if target.kind == "local" and shapes is not None:
        sources_bytes = (source is None) * model_bytes + len(other_values) * model_bytes
        disk_need = max(capacity.run_bytes_upper(t, shapes, itemsize) for t in config.tests) + sources_bytes
        disk_free = system.free_bytes(target.output_dir)
        refusal = refusal or capacity.disk_refusal(target.output_dir, disk_need,
                                                   "one run of the largest test and the source weights")
    memory_need, hungriest = capacity.memory_need(config, model_bytes)
    return Preflight(config, target, planned, described, model_bytes,
                     len(config.tests) * (config.num_runs + config.warmup_rounds)
                     + capacity.confirmation_runs_upper(config),
                     capacity.estimate_suite_s(config, model_bytes, itemsize), disk_need, disk_free, memory_need,
                     capacity.memory_available_bytes(), hungriest, other_values, refusal)


def _check_tp(config: SuiteConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """A checkpoint's tensor-parallel tests: tp must split every split dimension evenly (no head counts known)."""
    for tp in sorted({t.tp for t in config.tests if t.tp > 1}):
        why = tensor_parallel.refusal(tp, None, shapes, flag="--tp" if config.tp is not None else "tp")
        if why is not None:
            raise UserError(why)
