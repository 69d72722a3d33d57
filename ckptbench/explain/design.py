"""The design: which arms measure the claims, and the one suite that measures every arm.

An arm is a set of the original's conditions switched at once: ``true`` (none: the user's config as
given), ``original`` (all of them), then one arm per condition (plus what it cannot run without:
timed conversions need float16 values). Every arm's tests go into one interleaved suite, so every arm
shares the machine's state; measuring them in separate suites would let the machine's drift between
suites pass for a condition's effect.

A condition the user's config already shares with the original gets no arm (it is reported as
shared). Identical tests of two arms are measured once, and a test that differs from an earlier arm's
only by warm loads takes them in that test's runs, right after the same save (`warm_load`): warm loads
change no save, and a warm and a cold load of one save are a paired comparison.

Everything here is plain data in, plain data out (no I/O), so the design can be checked without
measuring anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ckptbench.analysis import change as analysis
from ckptbench.core.errors import UserError
from ckptbench.core.units import parse_size
from ckptbench.explain.conditions import (
    BY_NAME,
    CONDITIONS,
    LEFT_OUT,
    NOT_SWITCHABLE,
    ORIGINAL,
    SHARED,
    SWITCHED,
    TRUE,
    Condition,
    load_original,
    switch,
)
from ckptbench.sources.weights import NUMPY_DTYPES
from ckptbench.spec import chunking, fields
from ckptbench.spec import config as config_mod
from ckptbench.spec.suite import SuiteConfig


@dataclass(frozen=True)
class Setup:
    """What `design` needs to know of the user's suite, as plain data (so a design needs no I/O)."""

    tests: tuple[dict[str, Any], ...]  # config entries (spec.fields.entry, every field); the baseline among them
    baseline: str
    values: str  # the suite's values ("checkpoint" for a checkpoint)
    cache_eviction: str
    order: str
    dtype: str
    original: dict[str, Any]  # the original's config (original_conditions.json), parsed
    shapes: tuple[tuple[int, ...], ...] | None = None  # the weights' shapes, where known before loading them


@dataclass(frozen=True)
class Arm:
    """A set of the original's conditions switched at once, and the suite tests that measure it."""

    name: str
    conditions: tuple[str, ...]  # switched to the original's
    tests: dict[str, str] = field(default_factory=dict)  # the user's test -> the suite test measuring it here
    # User tests whose loads here are the suite test's warm loads (warm_load_s): the same save, loaded
    # from the page cache before the eviction, since warm loads change no save
    warm_loads: tuple[str, ...] = ()

    def metric(self, test: str, metric: str) -> str:
        """The suite test's metric that holds this arm's figure of `metric` for `test`."""
        return "warm_load_s" if metric == "load_s" and test in self.warm_loads else metric


@dataclass(frozen=True)
class Claim:
    """One expected change of the user's config: a test's figure against the baseline, in a % band."""

    test: str
    metric: str  # save_s, load_s or size_bytes
    claimed_pct: tuple[float, float]


def outside_pp(measured_pct: float, band_pct: Sequence[float]) -> float:
    """How many percentage points a measured change lies outside a band (0 within it)."""
    lo, hi = band_pct
    return max(lo - measured_pct, 0.0, measured_pct - hi)


@dataclass(frozen=True)
class Design:
    """The arms, each condition's status, the claims and the one suite's tests."""

    baseline: str
    arms: tuple[Arm, ...]
    conditions: tuple[dict[str, Any], ...]  # per condition: name, title, original, status, reason, requires
    claims: tuple[Claim, ...]
    suite_tests: tuple[dict[str, Any], ...]  # the one suite's config entries, every arm's

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)

    def arm_with(self, conditions: Sequence[str]) -> Arm | None:
        """The arm that switches exactly these conditions."""
        wanted = set(conditions)
        return next((a for a in self.arms if set(a.conditions) == wanted), None)

    @property
    def switched(self) -> list[str]:
        return [c["name"] for c in self.conditions if c["status"] == SWITCHED]


# --- from the user's suite and to the one suite -----------------------------------------------

def setup_of(suite: SuiteConfig, names: Sequence[str] | None = None, shapes: Sequence[Sequence[int]] | None = None,
             original: Mapping[str, Any] | None = None) -> Setup:
    """What `design` needs from a finished suite: its baseline and the tests with claims (or the tests
    named, the baseline always among them), run by one process, as the original's were."""
    candidates = [t for t in suite.tests if not t.is_reference and t.processes == 1]
    by_name = {t.name: t for t in candidates}
    if suite.baseline not in by_name:
        raise UserError(f"baseline: explain compares every test with the baseline, and {suite.baseline!r} is not a "
                        "single-process TensorStore test; choose another baseline in the config")
    if names is not None:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise UserError(f"--tests: no TensorStore test named {missing[0]!r}; valid: {', '.join(by_name)}")
        chosen = [t for t in candidates if t.name in names or t.name == suite.baseline]
    else:
        chosen = [t for t in candidates if t.expected or t.name == suite.baseline]
    if len(chosen) < 2:
        raise UserError("explain needs the baseline and at least one other test; the config's tests carry no "
                        "expected ranges, so name some with --tests")
    # Every field written (a canonical entry): two arms' identical tests then give identical entries,
    # which is how the design measures them once.
    return Setup(tests=tuple(fields.entry(t, every_field=True) for t in chosen), baseline=suite.baseline,
                 values=suite.values, cache_eviction=suite.cache_eviction, order=suite.order, dtype=suite.dtype,
                 original=dict(original or load_original()),
                 shapes=None if shapes is None else tuple(tuple(int(d) for d in s) for s in shapes))


def build_suite(design_: Design, user: SuiteConfig, output_dir: Path, num_runs: int) -> SuiteConfig:
    """The one suite that measures every arm: the user's model and protocol, every arm's tests,
    interleaved; no expected ranges (each arm's claims are judged here, not by the suite)."""
    testing = {"num_runs": num_runs, "warmup_rounds": user.warmup_rounds, "seed": user.seed,
               "cache_eviction": user.cache_eviction, "order": "interleaved",
               "max_inflight_bytes": user.max_inflight_bytes, "noise_pct": user.noise_pct}
    data = config_mod.suite_data(
        [dict(t) for t in design_.suite_tests], output_dir=output_dir, testing=testing, model=user.model,
        weights=user.weights, dtype=user.dtype, values=user.values, baseline=design_.arms[0].tests[design_.baseline],
        description="explain: the claims' tests under each arm of the original's conditions")
    return config_mod.from_dict(data, source="explain")


# --- the design -------------------------------------------------------------------------------

def design(setup: Setup, chosen: Sequence[str] | None = None) -> Design:
    """The arms, the conditions' statuses, the claims and the one suite's tests.

    `chosen`: the conditions to measure (None: every condition whose `default` is on)."""
    unknown = sorted(set(chosen or ()) - set(BY_NAME))
    if unknown:
        raise UserError(f"--conditions: unknown condition {unknown[0]!r}; use any of {', '.join(BY_NAME)}")
    if setup.baseline not in {t["name"] for t in setup.tests}:
        raise ValueError(f"the baseline {setup.baseline!r} is not among the tests")
    wanted = [c.name for c in CONDITIONS if c.default] if chosen is None else list(chosen)
    statuses = {c.name: _status(c, setup, wanted) for c in CONDITIONS}
    for name, status in statuses.items():  # a chosen condition brings what it cannot run without
        if status["status"] == SWITCHED:
            for needed in BY_NAME[name].requires:
                if statuses[needed]["status"] == LEFT_OUT:
                    statuses[needed] = {**statuses[needed], "status": SWITCHED, "reason": f"needed by {name}"}
    switched = [c.name for c in CONDITIONS if statuses[c.name]["status"] == SWITCHED]
    sets: list[tuple[str, tuple[str, ...]]] = [(TRUE, ())]
    if switched:
        sets.append((ORIGINAL, tuple(switched)))
    for name in switched:
        needed = {name, *(r for r in BY_NAME[name].requires if r in switched)}
        sets.append((name, tuple(c for c in switched if c in needed)))
    arms: list[Arm] = []
    for name, conditions in sets:
        if all(set(a.conditions) != set(conditions) for a in arms):
            arms.append(Arm(name, conditions))
    suite_tests, measured_by, warm_loads = _suite_tests(setup, arms)
    arms = [Arm(a.name, a.conditions, measured_by[a.name], warm_loads[a.name]) for a in arms]
    conditions = [*(statuses[c.name] for c in CONDITIONS), _dtype_status(setup)]
    return Design(setup.baseline, tuple(arms), tuple(conditions), tuple(_claims(setup)), tuple(suite_tests))


def _claims(setup: Setup) -> list[Claim]:
    out = []
    for test in setup.tests:
        for key, metric in analysis.CLAIM_METRICS.items():
            claimed = (test.get("expected") or {}).get(key)
            if claimed is not None and test["name"] != setup.baseline:
                out.append(Claim(test["name"], metric, (float(claimed[0]), float(claimed[1]))))
    return out


def _suite_tests(setup: Setup, arms: Sequence[Arm]) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]],
                                                               dict[str, tuple[str, ...]]]:
    """Every arm's tests in one list, and per arm which suite test measures each user test.

    A test identical to an earlier arm's is measured once, under the earlier arm's name. A test that
    differs from an earlier arm's only by warm loads is measured by that test too: its runs also load
    from the page cache right after each save (`warm_load`), before the eviction, so both arms' loads
    come from one save. Arms that run blocked have a block of their own, so theirs are never shared."""
    tests: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    measured_by: dict[str, dict[str, str]] = {}
    warm_loads: dict[str, tuple[str, ...]] = {}
    for arm in arms:
        measured_by[arm.name], warm = {}, []
        blocked = "blocked" in arm.conditions or setup.order == "blocked"
        for test in setup.tests:
            settings = _arm_settings(test, arm.name, arm.conditions, blocked, setup)
            key = json.dumps(settings, sort_keys=True)
            cold_key = None  # the same test without warm loads, where this arm could share its saves
            if "warm" in arm.conditions and not blocked and "block" not in settings:
                cold = [c for c in arm.conditions if c != "warm"]
                cold_key = json.dumps(_arm_settings(test, arm.name, cold, blocked, setup), sort_keys=True)
            if key not in seen and cold_key in seen:
                tests[seen[cold_key]]["warm_load"] = True
                warm.append(test["name"])
                measured_by[arm.name][test["name"]] = seen[cold_key]
                continue
            if key not in seen:
                seen[key] = f"{arm.name}.{test['name']}"
                what = ", ".join(BY_NAME[c].title for c in arm.conditions) or "your config as given"
                tests[seen[key]] = {"name": seen[key], "description": f"{test['name']} with {what}", **settings}
            measured_by[arm.name][test["name"]] = seen[key]
        warm_loads[arm.name] = tuple(warm)
    return list(tests.values()), measured_by, warm_loads


def _arm_settings(test: Mapping[str, Any], arm: str, conditions: Sequence[str], blocked: bool,
                  setup: Setup) -> dict[str, Any]:
    """A user test's settings with the conditions switched, as the arm's suite test runs them."""
    switched = dict(test)
    for name in conditions:
        switched = switch(name, switched, setup.original)
    settings = {k: v for k, v in switched.items() if k not in ("name", "description", "expected")}
    if blocked:
        settings["block"] = arm
    elif "block" in settings:  # a block of the user's own stays within its arm
        settings["block"] = f"{arm}.{settings['block']}"
    return settings


# --- each condition's status ----------------------------------------------------------------------

def _status(condition: Condition, setup: Setup, wanted: Sequence[str]) -> dict[str, Any]:
    entry = {"name": condition.name, "title": condition.title, "original": condition.original,
              "requires": list(condition.requires), "status": SWITCHED, "reason": ""}
    if not _differs(condition.name, setup):
        return {**entry, "status": SHARED, "reason": "your config already does what the original did"}
    why_not = _not_switchable(condition.name, setup)
    if why_not:
        return {**entry, "status": NOT_SWITCHABLE, "reason": why_not}
    if condition.name not in wanted:
        reason = "not in --conditions"
        if condition.name == "chunks64":
            files = chunk_files(setup)
            cost = f"they write about {files:,} chunk files per run here; " if files is not None else ""
            reason = f"{cost}measure them with --conditions ...,chunks64 on a small preset"
        return {**entry, "status": LEFT_OUT, "reason": reason}
    return entry


def _differs(name: str, setup: Setup) -> bool:
    """Whether switching the condition changes anything the suite measures."""
    if name == "blocked":
        return setup.order != setup.original["testing"]["order"]
    if name == "chunks64":
        return any(_chunk_shapes(t, setup) != _chunk_shapes(switch(name, t, setup.original), setup)
                   for t in setup.tests)
    return any(_effective(switch(name, t, setup.original), setup) != _effective(t, setup) for t in setup.tests)


def _effective(test: Mapping[str, Any], setup: Setup) -> dict[str, Any]:
    """The test with the suite-wide defaults its per-test fields fall back to written out."""
    out = dict(test)
    out.setdefault("cache_eviction", setup.cache_eviction)
    out.setdefault("values", setup.values)
    out.setdefault("in_flight", "all")
    out.setdefault("timed_conversion", False)
    return out


def _chunk_shapes(test: Mapping[str, Any], setup: Setup) -> Any:
    """The chunk shapes of every tensor (or, with the shapes unknown, the chunk settings)."""
    itemsize = NUMPY_DTYPES[setup.dtype].itemsize
    elements = test.get("chunk_size_elements") or max(1, parse_size(test["chunk_bytes"], "chunk_bytes") // itemsize)
    strategy = test.get("chunk_strategy", "halve")
    if setup.shapes is None:
        return (elements, strategy)
    return [tuple(chunking.chunk_shape(shape, elements, strategy)) for shape in setup.shapes]


def chunk_files(setup: Setup) -> int | None:
    """Chunk files one run of the largest of the original's chunk-switched tests writes, or None (the
    shapes unknown): what the left-out chunks64 condition would cost, so its reason can say so."""
    if setup.shapes is None:
        return None
    counts = []
    for test in setup.tests:
        chunks = _chunk_shapes(switch("chunks64", test, setup.original), setup)
        counts.append(sum(math.prod(-(-d // c) for d, c in zip(shape, chunk))
                          for shape, chunk in zip(setup.shapes, chunks)))
    return max(counts, default=0)


def _not_switchable(name: str, setup: Setup) -> str:
    if name == "fp16" and setup.values == "checkpoint":
        return "a checkpoint brings its own values (the original's were open_llama_3b's float16 weights)"
    if name == "conversions" and setup.dtype != "float32":
        return f"the original cast float16 to float32; your weights are stored as {setup.dtype}"
    return ""


def _dtype_status(setup: Setup) -> dict[str, Any]:
    """float32 storage: listed with the conditions, though no arm can switch it (the dtype is suite-wide)."""
    entry = {"name": "float32", "title": "float32 storage", "requires": [],
              "original": "it stored every tensor as float32 ('<f4')"}
    if setup.dtype == "float32":
        return {**entry, "status": SHARED, "reason": "your config already does what the original did"}
    return {**entry, "status": NOT_SWITCHABLE,
            "reason": f"the dtype is suite-wide: every arm stores {setup.dtype}; run explain with --dtype float32"}
