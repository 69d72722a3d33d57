"""Why the original's expectations differ: its conditions, one at a time, in one suite.

The Phase 4 summary's expected results came from the original harness, whose
conditions are known; `original_conditions.json` (sweeps/original_conditions.json)
holds its six tests as its code measured them, and is where this module reads what
"the original's setting" of each condition is. `explain` measures the claims' tests
under several arms, all interleaved in one suite so they share the machine's state:

- ``true``: the user's config as given;
- ``original``: every condition switched to the original's at once;
- one arm per condition, with only that condition switched (plus what it cannot run
  without: timed conversions need float16 values).

A condition the user's config already shares with the original gets no arm (it is
reported as shared). Identical tests of two arms are measured once, and a test that
differs from an earlier arm's only by warm loads takes them in that test's runs, from
the same save. Each arm's claim
outcome comes from `analysis.compare` (the one analysis path); a condition is then
credited with what switching it does to the claim: moving the measured change into the
claimed band or out of it, toward it or away from it.

This module is the design and the judgement, without I/O: `design` builds the arms and
the suite's tests from plain data, `judge` turns measured samples into explain.json's
claims, `answer` into the console's lines. `commands/explain.py` runs it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ckptbench.analysis import change as analysis
from ckptbench.spec import chunking, compression
from ckptbench.documents import store as documents
from ckptbench.core.errors import UserError
from ckptbench.core.units import parse_size
from ckptbench.sources.weights import NUMPY_DTYPES

EXPLAIN_VERSION = 1
EXPLAIN_FILE = "explain.json"
SCHEMA_FILE = Path(__file__).parent.parent / "documents" / "schemas" / "explain.schema.json"
ORIGINAL_CONFIG = Path(__file__).with_name("original_conditions.json")
TRUE, ORIGINAL = "true", "original"
SWITCHED, SHARED, NOT_SWITCHABLE, LEFT_OUT = "switched", "shared", "not switchable", "left out"
# Effects of switching one condition on one claim.
INTO, OUT_OF, TOWARD, AWAY, NO_MOVE = "into", "out of", "toward", "away", "none"
SIZE_MOVE_PP = 0.5  # a size moves (sizes have no run-to-run noise) when its distance to the band changes by this


@dataclass(frozen=True)
class Condition:
    """One way the original harness measured differently, and the test setting that reproduces it."""

    name: str  # the arm's name and the word --conditions takes
    title: str  # in sentences: "reproduced only with warm loads"
    yours: str  # the measurement under the user's setting, in a few words ("cold")
    theirs: str  # the same under the original's ("warm")
    original: str  # what the original did
    consequence: str  # why switching it moves a figure
    requires: tuple[str, ...] = ()  # conditions it cannot be measured without
    default: bool = True  # measured unless --conditions leaves it out


# The original's conditions, as data (original_harness.json: what it did, read from its public copy).
_HARNESS = json.loads(Path(__file__).with_name("original_harness.json").read_text())
CONDITIONS: tuple[Condition, ...] = tuple(
    Condition(**{**c, "requires": tuple(c["requires"])}) for c in _HARNESS["conditions"])
BY_NAME = {c.name: c for c in CONDITIONS}

# What the original did that is not a setting, and why it cannot move a claim here.
NOT_MODELLED: tuple[dict[str, str], ...] = tuple(_HARNESS["not_modelled"])


@dataclass(frozen=True)
class Setup:
    """What `design` needs to know of the user's suite, as plain data (tests need no I/O)."""

    tests: tuple[dict[str, Any], ...]  # raw test dicts, as a config file holds them; the baseline among them
    baseline: str
    values: str  # the suite's values ("checkpoint" for a checkpoint)
    cache_eviction: str
    order: str
    dtype: str
    original: dict[str, Any]  # the original's config (original_conditions.json), parsed
    shapes: tuple[tuple[int, ...], ...] | None = None  # the weights' shapes, where known before loading them


@dataclass(frozen=True)
class Arm:
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
    test: str
    metric: str  # save_s, load_s or size_bytes
    claimed_pct: tuple[float, float]


@dataclass(frozen=True)
class Design:
    baseline: str
    arms: tuple[Arm, ...]
    conditions: tuple[dict[str, Any], ...]  # per condition: name, title, original, status, reason, requires
    claims: tuple[Claim, ...]
    suite_tests: tuple[dict[str, Any], ...]  # the one suite's raw tests, every arm's

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)

    def arm_with(self, conditions: Sequence[str]) -> Arm | None:
        """The arm that switches exactly these conditions."""
        wanted = set(conditions)
        return next((a for a in self.arms if set(a.conditions) == wanted), None)

    @property
    def switched(self) -> list[str]:
        return [c["name"] for c in self.conditions if c["status"] == SWITCHED]


def load_original(path: Path = ORIGINAL_CONFIG) -> dict[str, Any]:
    """The original's conditions, as sweeps/original_conditions.json states them."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --- from a suite and back -----------------------------------------------------------

def raw_test(spec: Any) -> dict[str, Any]:
    """A config.TestSpec as a config file would hold it."""
    from ckptbench.spec.config import TEST_SCHEMA

    data = spec.to_json()
    out = {key: data[key] for key in TEST_SCHEMA["properties"] if data.get(key) is not None}
    out["compression"] = "none" if data["compression"] is None else data["compression"]
    return out


def setup_of(suite: Any, names: Sequence[str] | None = None, shapes: Sequence[Sequence[int]] | None = None,
             original: Mapping[str, Any] | None = None) -> Setup:
    """What `design` needs from a finished suite (config.SuiteConfig): its baseline and the tests with
    claims (or the tests named, the baseline always among them), run by one process, as the original's were."""
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
    return Setup(tests=tuple(raw_test(t) for t in chosen), baseline=suite.baseline, values=suite.values,
                 cache_eviction=suite.cache_eviction, order=suite.order, dtype=suite.dtype,
                 original=dict(original or load_original()),
                 shapes=None if shapes is None else tuple(tuple(int(d) for d in s) for s in shapes))


def suite_data(design_: Design, suite: Any, output_dir: Path, num_runs: int) -> dict[str, Any]:
    """The one suite that measures every arm, as a config (for config.from_dict): the user's model and
    protocol, every arm's tests, interleaved; no expected ranges (claims are judged per arm here)."""
    testing = {"num_runs": num_runs, "warmup_rounds": suite.warmup_rounds, "seed": suite.seed,
               "cache_eviction": suite.cache_eviction, "order": "interleaved",
               "max_inflight_bytes": suite.max_inflight_bytes, "noise_pct": suite.noise_pct}
    weights = {"weights": suite.weights} if suite.weights is not None else {"values": suite.values}
    return {"description": "explain: the claims' tests under each arm of the original's conditions",
            "model": suite.model, "dtype": suite.dtype, **weights, "output_dir": str(output_dir),
            "baseline": design_.arms[0].tests[design_.baseline], "testing": testing,
            "test_configurations": [dict(t) for t in design_.suite_tests]}


# --- the design ------------------------------------------------------------------

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
        switched = _switch(name, switched, setup)
    settings = {k: v for k, v in switched.items() if k not in ("name", "description", "expected")}
    if blocked:
        settings["block"] = arm
    elif "block" in settings:  # a block of the user's own stays within its arm
        settings["block"] = f"{arm}.{settings['block']}"
    return settings


def _original_test(setup: Setup, name: str) -> dict[str, Any]:
    """The original's test of that name, else its baseline (whose per-test habits every test shared)."""
    tests = {t["name"]: t for t in setup.original["test_configurations"]}
    return tests.get(name, tests[setup.original["baseline"]])


def _is_raw(test: Mapping[str, Any]) -> bool:
    return compression.normalize(test.get("compression")) is None


def _switch(name: str, test: dict[str, Any], setup: Setup) -> dict[str, Any]:
    """The test with one condition switched to the original's setting."""
    original = setup.original
    theirs = _original_test(setup, test["name"])
    out = dict(test)
    if name == "blosc" and _is_raw(test):
        out["compression"] = _original_test(setup, original["baseline"])["compression"]
    elif name == "warm":
        out["cache_eviction"] = original["testing"]["cache_eviction"]
    elif name == "fp16":
        out["values"] = original["values"]
    elif name == "serial":
        out["in_flight"] = theirs["in_flight"]
    elif name == "conversions":
        out["timed_conversion"] = theirs["timed_conversion"]
    elif name == "chunks64" and test["name"] in {t["name"] for t in original["test_configurations"]}:
        out.pop("chunk_bytes", None)
        out["chunk_size_elements"] = theirs["chunk_size_elements"]
        out["chunk_strategy"] = theirs["chunk_strategy"]
    return out  # "blocked" changes the order, not a test: see _suite_tests


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
        return any(_chunk_shapes(t, setup) != _chunk_shapes(_switch(name, t, setup), setup) for t in setup.tests)
    return any(_effective(_switch(name, t, setup), setup) != _effective(t, setup) for t in setup.tests)


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
    """Chunk files one run of the largest of the original's chunk-switched tests writes, or None."""
    if setup.shapes is None:
        return None
    counts = []
    for test in setup.tests:
        chunks = _chunk_shapes(_switch("chunks64", test, setup), setup)
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
    entry = {"name": "float32", "title": "float32 storage", "requires": [],
             "original": "it stored every tensor as float32 ('<f4')"}
    if setup.dtype == "float32":
        return {**entry, "status": SHARED, "reason": "your config already does what the original did"}
    return {**entry, "status": NOT_SWITCHABLE,
            "reason": f"the dtype is suite-wide: every arm stores {setup.dtype}; run explain with --dtype float32"}


# --- the judgement --------------------------------------------------------------------

def judge(design_: Design, samples: Mapping[str, Mapping[str, Sequence[float]]], noise_pct: float,
          preset_values: bool = True) -> list[dict[str, Any]]:
    """Each claim's outcome under each arm, what each switched condition does to it, and a summary.

    `samples`: per suite test, per metric, the measured runs (results.samples). `preset_values`:
    the weights are a preset's synthetic values (their sizes then say nothing of a real checkpoint's)."""
    out = []
    for claim in design_.claims:
        arms = {arm.name: _arm_outcome(arm, claim, design_.baseline, samples, noise_pct) for arm in design_.arms}
        effects = [_effect(name, claim, design_, arms, noise_pct) for name in design_.switched]
        effects = [e for e in effects if e is not None]
        entry = {"test": claim.test, "metric": claim.metric, "claimed_pct": list(claim.claimed_pct),
                 "label": claim_label(claim), "arms": arms, "effects": effects}
        entry["summary"] = summary(entry, design_, preset_values)
        out.append(entry)
    return out


def _arm_outcome(arm: Arm, claim: Claim, baseline: str, samples: Mapping[str, Mapping[str, Sequence[float]]],
                 noise_pct: float) -> dict[str, Any]:
    values = list((samples.get(arm.tests[claim.test]) or {}).get(arm.metric(claim.test, claim.metric), []))
    base = list((samples.get(arm.tests[baseline]) or {}).get(arm.metric(baseline, claim.metric), []))
    comparison = analysis.compare(values, base, metric=claim.metric, noise_pct=noise_pct,
                                  claimed_pct=claim.claimed_pct)
    judged = comparison["claim"]
    return {"conditions": list(arm.conditions), "test": arm.tests[claim.test], "baseline": arm.tests[baseline],
            "figure": arm.metric(claim.test, claim.metric),
            "outcome": judged["outcome"], "measured_pct": comparison["change_pct"],
            "ci_pct": comparison["change_ci95_pct"], "band_pct": judged["band_pct"], "verdict": comparison["verdict"],
            "n": len(values), "n_baseline": len(base), "reason": judged["reason"]}


def _distance(measured: float, band: Sequence[float]) -> float:
    lo, hi = band
    return max(lo - measured, 0.0, measured - hi)


def _apart(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two arms measured clearly different changes: their 95 % intervals do not overlap
    (conservative: a move the runs cannot separate from noise is not credited to a condition)."""
    if a["ci_pct"] is None or b["ci_pct"] is None:
        return False
    return a["ci_pct"][1] < b["ci_pct"][0] or b["ci_pct"][1] < a["ci_pct"][0]


def _effect(name: str, claim: Claim, design_: Design, arms: Mapping[str, Mapping[str, Any]],
            noise_pct: float) -> dict[str, Any] | None:
    """What switching one condition (on top of what it needs) does to a claim."""
    needed = [r for r in BY_NAME[name].requires if r in design_.switched]
    base_arm, with_arm = design_.arm_with(needed), design_.arm_with([name, *needed])
    if base_arm is None or with_arm is None:
        return None
    base, with_ = arms[base_arm.name], arms[with_arm.name]
    effect = NO_MOVE
    if with_["outcome"] == analysis.CONFIRMED and base["outcome"] != analysis.CONFIRMED:
        effect = INTO
    elif base["outcome"] == analysis.CONFIRMED and with_["outcome"] == analysis.CONTRADICTED:
        effect = OUT_OF
    elif _apart(base, with_):
        closer = _distance(base["measured_pct"], base["band_pct"]) - _distance(with_["measured_pct"], with_["band_pct"])
        threshold = noise_pct if analysis.METRICS[claim.metric][3] else SIZE_MOVE_PP
        effect = TOWARD if closer > threshold else AWAY if closer < -threshold else NO_MOVE
    shift = (None if base["measured_pct"] is None or with_["measured_pct"] is None
             else with_["measured_pct"] - base["measured_pct"])
    return {"condition": name, "base_arm": base_arm.name, "arm": with_arm.name, "effect": effect,
            "base_pct": base["measured_pct"], "switched_pct": with_["measured_pct"], "shift_pp": shift,
            "base_outcome": base["outcome"], "switched_outcome": with_["outcome"]}


# --- words ---------------------------------------------------------------------------------

_MOVES = {INTO: "into the band", OUT_OF: "out of the band", TOWARD: "toward the band", AWAY: "away from the band"}
_OPS = {"save_s": ("save", "faster", "slower"), "load_s": ("load", "faster", "slower"),
        "size_bytes": ("size", "smaller", "larger")}


def claim_label(claim: Claim) -> str:
    """'chunks_1mb load +20..+30 % slower'."""
    op, less, more = _OPS[claim.metric]
    lo, hi = sorted(claim.claimed_pct)
    word = f" {more}" if lo >= 0 else f" {less}" if hi <= 0 else ""
    return f"{claim.test} {op} {lo:+g}..{hi:+g} %{word}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0f} %" if abs(value) >= 10 else f"{value:+.1f} %"


def _undecided(arm: Mapping[str, Any]) -> bool:
    return arm["outcome"] in (analysis.NOT_PINNED, analysis.INCONCLUSIVE)


def summary(entry: Mapping[str, Any], design_: Design, preset_values: bool = True) -> str:
    """One sentence per claim: where it holds, which condition makes it hold, or why it does not."""
    label, arms, effects = entry["label"], entry["arms"], entry["effects"]
    true, original = arms[TRUE], arms.get(ORIGINAL)
    if true["n"] < 2 or true["n_baseline"] < 2:
        return f"{label}: not measured (fewer than 2 runs)"
    if true["outcome"] == analysis.CONFIRMED:
        out = [e for e in effects if e["effect"] == OUT_OF]
        tail = (f"; {_titles(out)} would break it ({_pair(out[0])})" if out else "")
        return f"{label}: holds as measured ({_pct(true['measured_pct'])}){tail}"
    into = [e for e in effects if e["effect"] == INTO]
    if into:
        first = BY_NAME[into[0]["condition"]]
        together = ("" if original is None or original["outcome"] == analysis.CONFIRMED else
                    f" (though not with all the original's conditions together: {_pct(original['measured_pct'])})")
        return f"{label}: reproduced only with {_titles(into)} ({_pair(into[0])}){together}; {first.consequence}"
    real = [e for e in effects if e["effect"] != NO_MOVE and e["shift_pp"] is not None]
    biggest = max(real, key=lambda e: abs(e["shift_pp"]), default=None)
    moved = (f"; {BY_NAME[biggest['condition']].title} moves it most, {_MOVES[biggest['effect']]} "
             f"({_pair(biggest)})" if biggest is not None else "")
    if original is None:
        return (f"{label}: {_outcome_words(true)} as measured ({_pct(true['measured_pct'])}), and your config "
                f"shares every condition of the original, so its harness does not explain it")
    if original["outcome"] == analysis.CONFIRMED:
        return (f"{label}: reproduced only with the original's conditions together ({_pct(true['measured_pct'])} "
                f"as measured vs {_pct(original['measured_pct'])}); no single condition does it{moved}")
    if _undecided(original):
        return (f"{label}: undecided under the original's conditions ({_pct(original['measured_pct'])}, "
                f"{original['n']} runs); more --runs would decide{moved}")
    outside = _distance(original["measured_pct"], original["band_pct"]) if original["measured_pct"] is not None else 0
    return (f"{label}: not reproduced even under the original's conditions ({_pct(original['measured_pct'])} there, "
            f"{outside:.1f} points outside the band; {_pct(true['measured_pct'])} as measured){moved}; "
            f"{_why_still(entry, preset_values)}")


def _outcome_words(arm: Mapping[str, Any]) -> str:
    return "contradicted" if arm["outcome"] == analysis.CONTRADICTED else "undecided"


def _titles(effects: Sequence[Mapping[str, Any]]) -> str:
    titles = [BY_NAME[e["condition"]].title for e in effects]
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " or " + titles[-1]


def _pair(effect: Mapping[str, Any]) -> str:
    """'-61 % cold vs +18 % warm'."""
    condition = BY_NAME[effect["condition"]]
    return f"{_pct(effect['base_pct'])} {condition.yours} vs {_pct(effect['switched_pct'])} {condition.theirs}"


def _why_still(entry: Mapping[str, Any], preset_values: bool) -> str:
    """Why a claim can fail under every condition of the original's that can be reproduced."""
    if entry["metric"] == "size_bytes":
        if preset_values:
            return ("sizes depend only on the layout and the values, and the preset's values are synthetic "
                    "(normal, std 0.02), not open_llama_3b's; measure a real checkpoint with --weights")
        return "sizes depend only on the layout and the values: your checkpoint's values are not the original's"
    return ("the summary's expectations were written from Phase 3, not measured by Phase 4, and this machine's "
            "disk and CPU set the times")


def answer(document: Mapping[str, Any]) -> list[str]:
    """The console's short answer: what was compared, then one line per claim."""
    shared = [c["title"] for c in document["conditions"] if c["status"] == SHARED]
    lines = [f"explain: {len(document['arms'])} arms x {document['n_user_tests']} tests x "
             f"{document['num_runs']} runs on {document['weights_label']}, one interleaved suite"
             + ("" if document["complete"] else " (incomplete: stopped early)")]
    if shared:
        lines.append(f"shared with the original (no arm): {', '.join(shared)}")
    for status in (NOT_SWITCHABLE, LEFT_OUT):
        by_reason: dict[str, list[str]] = {}
        for c in document["conditions"]:
            if c["status"] == status:
                by_reason.setdefault(c["reason"], []).append(c["title"])
        if by_reason:
            lines.append(f"{status}: " + "; ".join(f"{', '.join(t)} ({r})" for r, t in by_reason.items()))
    lines += [claim["summary"] for claim in document["claims"]]
    return lines


# --- explain.json -----------------------------------------------------------------------------

def document(design_: Design, results: Mapping[str, Any], samples: Mapping[str, Mapping[str, Sequence[float]]],
             tool: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """explain.json: the design, each claim under each arm, and the summaries (versioned)."""
    weights = results["weights"]
    preset = weights.get("kind") == "preset"
    protocol = results["protocol"]
    return {
        "explain_version": EXPLAIN_VERSION,
        "tool": dict(tool or results.get("tool") or {}),
        "complete": bool(results["complete"]),
        "results_file": "results.json",
        "weights": dict(weights),
        "weights_label": f"{documents.weights_name(weights)} "
                         f"({weights['dtype']}, values {weights.get('values')})",
        "num_runs": protocol["num_runs"],
        "seed": protocol["seed"],
        "noise_pct": protocol["noise_pct"],
        "blocks": protocol.get("blocks", []),
        "n_user_tests": len({t for arm in design_.arms for t in arm.tests}),
        "baseline": design_.baseline,
        "conditions": [dict(c) for c in design_.conditions],
        "not_modelled": [dict(n) for n in NOT_MODELLED],
        "arms": [{"name": a.name, "conditions": list(a.conditions), "tests": dict(a.tests),
                  "warm_loads": list(a.warm_loads)} for a in design_.arms],
        "claims": judge(design_, samples, float(protocol["noise_pct"]), preset_values=preset),
    }


def validate(document_: Any, source: str = "explain.json") -> None:
    """Raise a one-line UserError naming the first field that breaks explain.schema.json."""
    documents.validate(document_, SCHEMA_FILE, source, "explanation")


def write(document_: Mapping[str, Any], folder: Path) -> Path:
    """Validate and write explain.json atomically."""
    validate(document_)
    return documents.write_json(Path(folder) / EXPLAIN_FILE, document_)
