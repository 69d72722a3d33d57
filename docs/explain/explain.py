"""explain: which of the original Phase 4 harness's conditions produced each of its expectations.

The study is docs/explain.md (its runs: docs/measurements/explain-*.md). This script is its instrument,
kept beside it and out of the package: it measures nothing of its own, but runs the claims' tests of a
config under several arms (the config as given, every one of the original's conditions at once, one
condition at a time), all interleaved in one suite through ckptbench's `run_suite`, then credits each
condition with what switching it does to each claim. From the repository's root:

    python docs/explain/explain.py                                  # every claim of phase4_config.json
    python docs/explain/explain.py --model tiny --runs 2            # a quick look

It writes OUTPUT_DIR/explain.json beside the suite's results.json and prints one line per claim. Ctrl-C
keeps the runs so far (explained too); --resume with the same flags continues. Exit status: 0 explained;
1 some runs failed; 2 bad input; 130/143 stopped by Ctrl-C / SIGTERM.

The facts about the original are data: original_harness.json beside this script (each condition, in the
words the sentences use, and what cannot move a figure here) and sweeps/original_conditions.json (the
original's six tests as a config, where `switch` reads the original's setting of each condition).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: ckptbench is the repository's package
    sys.path.insert(0, str(REPO))

from ckptbench.analysis import change as analysis  # noqa: E402
from ckptbench.analysis.samples import samples as measured_samples  # noqa: E402
from ckptbench.core.errors import Stopped, UserError  # noqa: E402
from ckptbench.core.units import parse_size  # noqa: E402
from ckptbench.documents.store import weights_name, write_json  # noqa: E402
from ckptbench.spec import chunking, compression, fields  # noqa: E402
from ckptbench.spec import config as config_mod  # noqa: E402
from ckptbench.spec.suite import SuiteConfig  # noqa: E402

ORIGINAL_CONFIG = REPO / "sweeps" / "original_conditions.json"
USER_CONFIG = REPO / "phase4_config.json"
EXPLAIN_FILE = "explain.json"
OUTPUT_NAME = "explain"  # beside the config's output folder: saved_models/explain by default
DEFAULT_RUNS = 3
# Sizes have no run-to-run noise, so a size moves when its distance to the band changes by this many points.
SIZE_MOVE_PP = 0.5

# The two arms every design has: the user's config as given, and every condition switched at once.
TRUE, ORIGINAL = "true", "original"
# A condition's status in a design.
SWITCHED, SHARED, NOT_SWITCHABLE, LEFT_OUT = "switched", "shared", "not switchable", "left out"
# What switching one condition does to one claim.
INTO, OUT_OF, TOWARD, AWAY, NO_MOVE = "into", "out of", "toward", "away", "none"
_MOVES = {INTO: "into the band", OUT_OF: "out of the band", TOWARD: "toward the band", AWAY: "away from the band"}
_OPS = {"save_s": ("save", "faster", "slower"), "load_s": ("load", "faster", "slower"),
        "size_bytes": ("size", "smaller", "larger")}
_SAME_AS_ORIGINAL = "your config already does what the original did"


# --- the original's conditions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One way the original harness measured differently, and how the sentences speak of it."""

    name: str  # the arm's name and the word --conditions takes
    title: str  # in sentences: "reproduced only with warm loads"
    yours: str  # the measurement under the user's setting, in a few words ("cold")
    theirs: str  # the same under the original's ("warm")
    original: str  # what the original did
    consequence: str  # why switching it moves a figure
    requires: tuple[str, ...] = ()  # conditions it cannot be measured without
    default: bool = True  # measured unless --conditions leaves it out


_HARNESS = json.loads((HERE / "original_harness.json").read_text(encoding="utf-8"))
CONDITIONS = tuple(Condition(**{**c, "requires": tuple(c["requires"])}) for c in _HARNESS["conditions"])
BY_NAME = {c.name: c for c in CONDITIONS}
NOT_MODELLED: tuple[dict[str, str], ...] = tuple(_HARNESS["not_modelled"])


def load_original(path: Path = ORIGINAL_CONFIG) -> dict[str, Any]:
    """The original's six tests and suite settings, as sweeps/original_conditions.json states them."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _original_test(original: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The original's test of that name, else its baseline (whose per-test habits every test shared)."""
    tests = {t["name"]: t for t in original["test_configurations"]}
    return tests.get(name, tests[original["baseline"]])


def switch(name: str, test: Mapping[str, Any], original: Mapping[str, Any]) -> dict[str, Any]:
    """A config entry with one condition switched to the original's setting. "blocked" changes the suite's
    order, not a test: the design puts the arm's tests in a block of their own instead."""
    theirs = _original_test(original, test["name"])
    out = dict(test)
    if name == "blosc" and compression.normalize(test.get("compression")) is None:
        out["compression"] = _original_test(original, original["baseline"])["compression"]
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
    return out


# --- the design: arms, conditions, claims and the one suite (no I/O) ------------------------------------


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
        return next((a for a in self.arms if set(a.conditions) == set(conditions)), None)

    @property
    def switched(self) -> list[str]:
        return [c["name"] for c in self.conditions if c["status"] == SWITCHED]


def outside_pp(measured_pct: float, band_pct: Sequence[float]) -> float:
    """How many percentage points a measured change lies outside a band (0 within it)."""
    lo, hi = band_pct
    return max(lo - measured_pct, 0.0, measured_pct - hi)


def setup_of(suite: SuiteConfig, names: Sequence[str] | None = None, shapes: Sequence[Sequence[int]] | None = None,
             original: Mapping[str, Any] | None = None) -> Setup:
    """What `design` needs from a finished suite: its baseline and the tests with claims (or the tests
    named, the baseline always among them), run by one process, as the original's were."""
    candidates = [t for t in suite.tests if not t.is_reference and t.processes == 1]
    by_name = {t.name: t for t in candidates}
    if suite.baseline not in by_name:
        raise UserError(f"baseline: explain compares every test with the baseline, and {suite.baseline!r} is not a "
                        "single-process TensorStore test; choose another baseline in the config")
    missing = [n for n in names or () if n not in by_name]
    if missing:
        raise UserError(f"--tests: no TensorStore test named {missing[0]!r}; valid: {', '.join(by_name)}")
    chosen = [t for t in candidates if (t.name in names if names is not None else t.expected)
              or t.name == suite.baseline]
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


def design(setup: Setup, chosen: Sequence[str] | None = None) -> Design:
    """The arms, the conditions' statuses, the claims and the one suite's tests.

    `chosen`: the conditions to measure (None: every condition whose `default` is on)."""
    unknown = sorted(set(chosen or ()) - set(BY_NAME))
    if unknown:
        raise UserError(f"--conditions: unknown condition {unknown[0]!r}; use any of {', '.join(BY_NAME)}")
    wanted = [c.name for c in CONDITIONS if c.default] if chosen is None else list(chosen)
    statuses = {c.name: _status(c, setup, wanted) for c in CONDITIONS}
    for name, status in statuses.items():  # a chosen condition brings what it cannot run without
        if status["status"] == SWITCHED:
            for needed in BY_NAME[name].requires:
                if statuses[needed]["status"] == LEFT_OUT:
                    statuses[needed] = {**statuses[needed], "status": SWITCHED, "reason": f"needed by {name}"}
    switched = [c.name for c in CONDITIONS if statuses[c.name]["status"] == SWITCHED]
    sets: list[tuple[str, tuple[str, ...]]] = [(TRUE, ())] + ([(ORIGINAL, tuple(switched))] if switched else [])
    for name in switched:
        needed = {name, *BY_NAME[name].requires}
        sets.append((name, tuple(c for c in switched if c in needed)))
    arms: list[Arm] = []
    for name, conditions in sets:
        if all(set(a.conditions) != set(conditions) for a in arms):
            arms.append(Arm(name, conditions))
    suite_tests, measured_by, warm_loads = _suite_tests(setup, arms)
    arms = [Arm(a.name, a.conditions, measured_by[a.name], warm_loads[a.name]) for a in arms]
    claims = [Claim(t["name"], metric, (float(band[0]), float(band[1])))
              for t in setup.tests if t["name"] != setup.baseline
              for key, metric in analysis.CLAIM_METRICS.items()
              if (band := (t.get("expected") or {}).get(key)) is not None]
    conditions = [*(statuses[c.name] for c in CONDITIONS), _dtype_status(setup)]
    return Design(setup.baseline, tuple(arms), tuple(conditions), tuple(claims), tuple(suite_tests))


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


def _status(condition: Condition, setup: Setup, wanted: Sequence[str]) -> dict[str, Any]:
    entry = {"name": condition.name, "title": condition.title, "original": condition.original,
             "requires": list(condition.requires), "status": SWITCHED, "reason": ""}
    if not _differs(condition.name, setup):
        return {**entry, "status": SHARED, "reason": _SAME_AS_ORIGINAL}
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
    defaults = {"cache_eviction": setup.cache_eviction, "values": setup.values, "in_flight": "all",
                "timed_conversion": False}
    return {**defaults, **test}


def _chunk_shapes(test: Mapping[str, Any], setup: Setup) -> Any:
    """The chunk shapes of every tensor (or, with the shapes unknown, the chunk settings)."""
    from ckptbench.spec.presets import NUMPY_DTYPES

    itemsize = NUMPY_DTYPES[setup.dtype].itemsize
    elements = test.get("chunk_size_elements") or max(1, parse_size(test["chunk_bytes"], "chunk_bytes") // itemsize)
    strategy = test.get("chunk_strategy", "halve")
    if setup.shapes is None:
        return (elements, strategy)
    return [tuple(chunking.chunk_shape(shape, elements, strategy)) for shape in setup.shapes]


def chunk_files(setup: Setup) -> int | None:
    """Chunk files one run of the largest chunks64-switched test writes, or None (the shapes unknown)."""
    if setup.shapes is None:
        return None
    counts = [sum(math.prod(-(-d // c) for d, c in zip(shape, chunk))
                  for shape, chunk in zip(setup.shapes, _chunk_shapes(switch("chunks64", t, setup.original), setup)))
              for t in setup.tests]
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
        return {**entry, "status": SHARED, "reason": _SAME_AS_ORIGINAL}
    return {**entry, "status": NOT_SWITCHABLE,
            "reason": f"the dtype is suite-wide: every arm stores {setup.dtype}; run explain with --dtype float32"}


# --- the judgement: each claim under each arm, and each condition's effect ----------------------------

Samples = Mapping[str, Mapping[str, Sequence[float]]]  # per suite test, per metric, the measured runs


def judge(design_: Design, samples: Samples, noise_pct: float, preset_values: bool = True) -> list[dict[str, Any]]:
    """Each claim's outcome under each arm (through `analysis.compare`, the one path every report judges a
    claimed change by), what each switched condition does to it, and a summary. `preset_values`: the weights
    are a preset's synthetic values (their sizes then say nothing of a real checkpoint's)."""
    out = []
    for claim in design_.claims:
        arms = {arm.name: _arm_outcome(arm, claim, design_.baseline, samples, noise_pct) for arm in design_.arms}
        effects = [_effect(name, claim, design_, arms, noise_pct) for name in design_.switched]
        entry = {"test": claim.test, "metric": claim.metric, "claimed_pct": list(claim.claimed_pct),
                 "label": claim_label(claim), "arms": arms, "effects": [e for e in effects if e is not None]}
        entry["summary"] = summary(entry, preset_values)
        out.append(entry)
    return out


def _arm_outcome(arm: Arm, claim: Claim, baseline: str, samples: Samples, noise_pct: float) -> dict[str, Any]:
    """The claim judged on one arm's runs: the arm's test against the arm's baseline."""
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


def _apart(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two arms' 95 % intervals do not overlap (a move the runs cannot tell from noise is not credited)."""
    if a["ci_pct"] is None or b["ci_pct"] is None:
        return False
    return a["ci_pct"][1] < b["ci_pct"][0] or b["ci_pct"][1] < a["ci_pct"][0]


def _effect(name: str, claim: Claim, design_: Design, arms: Mapping[str, Mapping[str, Any]],
            noise_pct: float) -> dict[str, Any] | None:
    """What switching one condition (on top of what it needs) does to a claim; None without both arms.
    Into the band: confirmed with it, not without; out of: confirmed without, contradicted with; toward /
    away: the distance to the band shrinks / grows by more than the noise threshold, the intervals apart."""
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
        closer_pp = (outside_pp(base["measured_pct"], base["band_pct"])
                     - outside_pp(with_["measured_pct"], with_["band_pct"]))
        threshold_pp = noise_pct if analysis.METRICS[claim.metric][3] else SIZE_MOVE_PP
        effect = TOWARD if closer_pp > threshold_pp else AWAY if closer_pp < -threshold_pp else NO_MOVE
    shift_pp = (None if base["measured_pct"] is None or with_["measured_pct"] is None
                else with_["measured_pct"] - base["measured_pct"])
    return {"condition": name, "base_arm": base_arm.name, "arm": with_arm.name, "effect": effect,
            "base_pct": base["measured_pct"], "switched_pct": with_["measured_pct"], "shift_pp": shift_pp,
            "base_outcome": base["outcome"], "switched_outcome": with_["outcome"]}


# --- the words: a claim's label, its one-sentence summary, the console's answer -----------------------


def claim_label(claim: Claim) -> str:
    """'chunks_1mb load +20..+30 % slower'."""
    op, less, more = _OPS[claim.metric]
    lo, hi = sorted(claim.claimed_pct)
    word = f" {more}" if lo >= 0 else f" {less}" if hi <= 0 else ""
    return f"{claim.test} {op} {lo:+g}..{hi:+g} %{word}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0f} %" if abs(value) >= 10 else f"{value:+.1f} %"


def summary(entry: Mapping[str, Any], preset_values: bool = True) -> str:
    """One sentence per judged claim: where it holds, which condition makes it hold, or why it does not."""
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
        words = "contradicted" if true["outcome"] == analysis.CONTRADICTED else "undecided"
        return (f"{label}: {words} as measured ({_pct(true['measured_pct'])}), and your config "
                f"shares every condition of the original, so its harness does not explain it")
    if original["outcome"] == analysis.CONFIRMED:
        return (f"{label}: reproduced only with the original's conditions together ({_pct(true['measured_pct'])} "
                f"as measured vs {_pct(original['measured_pct'])}); no single condition does it{moved}")
    if original["outcome"] in (analysis.NOT_PINNED, analysis.INCONCLUSIVE):
        return (f"{label}: undecided under the original's conditions ({_pct(original['measured_pct'])}, "
                f"{original['n']} runs); more --runs would decide{moved}")
    points_out = (outside_pp(original["measured_pct"], original["band_pct"])
                  if original["measured_pct"] is not None else 0)
    return (f"{label}: not reproduced even under the original's conditions ({_pct(original['measured_pct'])} there, "
            f"{points_out:.1f} points outside the band; {_pct(true['measured_pct'])} as measured){moved}; "
            f"{_why_still(entry, preset_values)}")


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
    """The console's answer to an explain.json: what was compared, the conditions without an arm, one line
    per claim."""
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
    return lines + [claim["summary"] for claim in document["claims"]]


# --- explain.json ----------------------------------------------------------------------------------------


def build(design_: Design, results: Mapping[str, Any], samples: Samples) -> dict[str, Any]:
    """explain.json from the design, the suite's results document (its weights, protocol and completeness)
    and its samples per suite test: each claim judged under each arm, with its summary."""
    weights, protocol = results["weights"], results["protocol"]
    return {
        "tool": dict(results.get("tool") or {}),
        "complete": bool(results["complete"]),
        "results_file": "results.json",
        "weights": dict(weights),
        "weights_label": f"{weights_name(weights)} ({weights['dtype']}, values {weights.get('values')})",
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
        "claims": judge(design_, samples, float(protocol["noise_pct"]), preset_values=weights.get("kind") == "preset"),
    }


# --- running it -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What an explain measures, as its flags give it."""

    config: Path = USER_CONFIG  # the user's config, whose claims are explained
    overrides: Mapping[str, Any] = field(default_factory=dict)  # spec.config.load's: model, weights, seed, ...
    output_dir: Path | None = None  # None: OUTPUT_NAME beside the config's output folder
    num_runs: int = DEFAULT_RUNS  # per test and arm
    tests: tuple[str, ...] | None = None  # None: every test with an expected range (the baseline always)
    conditions: tuple[str, ...] | None = None  # None: every condition on by default
    resume: bool = False  # continue an interrupted explain in output_dir


class Explanation(NamedTuple):
    document: dict[str, Any]  # explain.json
    path: Path
    results: Any  # ckptbench.documents.results.Results: the suite's raw runs


Executor = Callable[..., Any]  # ckptbench.bench.context.Executor: RunContext -> Results; a test injects a made-up disk


def run_one_suite(suite: SuiteConfig, resume: bool, progress: bool, execute: Executor | None = None) -> Any:
    """The one call of ckptbench's run_suite, with its progress display. Every arm's test runs in this
    process, so the context's default writers do."""
    from ckptbench.bench.context import RunContext
    from ckptbench.bench.suite import run_suite
    from ckptbench.reports.progress import Progress

    shown = Progress(enabled=progress)
    try:
        return (execute or run_suite)(RunContext(suite, observer=shown, resume=resume))
    finally:
        shown.close()


def designed(settings: Settings) -> tuple[Design, SuiteConfig]:
    """The design of an explain and the one suite that measures it, from its settings."""
    from ckptbench.spec.presets import preset_shapes

    user = config_mod.load(settings.config, **settings.overrides)
    output_dir = Path(settings.output_dir).resolve() if settings.output_dir else user.output_dir.parent / OUTPUT_NAME
    shapes = None if user.weights is not None else [s for _, s in preset_shapes(user.model)]
    design_ = design(setup_of(user, settings.tests, shapes), settings.conditions)
    return design_, build_suite(design_, user, output_dir, settings.num_runs)


def run(settings: Settings, execute: Executor | None = None, progress: bool = False) -> Explanation:
    """Measure the one suite, judge every claim and write explain.json beside the suite's results.json.
    A stop (Ctrl-C, SIGTERM) raises `Stopped` with the runs so far explained as `.partial` (None when the suite
    stopped before it wrote any results)."""
    design_, suite = designed(settings)
    try:
        outcome = run_one_suite(suite, settings.resume, progress, execute)
    except Stopped as stop:
        if stop.partial is not None:
            stop.partial = _explain(design_, stop.partial)
        raise
    return _explain(design_, outcome)


def _explain(design_: Design, outcome: Any) -> Explanation:
    results = outcome.document
    data_bytes = int(results["weights"]["size_bytes"])
    document = build(design_, results, {t["name"]: measured_samples(t["runs"], data_bytes) for t in results["tests"]})
    return Explanation(document, write_json(Path(outcome.path).parent / EXPLAIN_FILE, document), outcome)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (module docstring); the exit status."""
    from ckptbench.cli.options import add_weight_arguments, parse_tests, positive_int, weight_overrides

    parser = argparse.ArgumentParser(prog="docs/explain/explain.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=USER_CONFIG, help="the config whose claims are explained")
    parser.add_argument("--output-dir", type=Path, help=f"where results.json and explain.json go (default: "
                                                        f"{OUTPUT_NAME}/ beside the config's output folder)")
    parser.add_argument("--runs", type=positive_int, default=DEFAULT_RUNS, help="measured runs per test and arm")
    add_weight_arguments(parser)
    parser.add_argument("--tests", help="comma-separated tests (default: every test with an expected range)")
    parser.add_argument("--conditions", help="comma-separated conditions, or 'all' (default: every one but "
                                             "chunks64): " + ", ".join(BY_NAME))
    parser.add_argument("--seed", type=int, help="seed of the rounds' shuffles (default: random, recorded)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted explain (same flags)")
    parser.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    args = parser.parse_args(argv)
    conditions = list(BY_NAME) if args.conditions == "all" else parse_tests(args.conditions)
    tests = parse_tests(args.tests)
    stopped: Stopped | None = None
    try:
        settings = Settings(args.config, {**weight_overrides(args), "seed": args.seed}, args.output_dir, args.runs,
                            None if tests is None else tuple(tests), None if conditions is None else tuple(conditions),
                            args.resume)
        explained = run(settings, progress=not args.no_progress)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Stopped as stop:
        stopped, explained = stop, stop.partial
    if explained is None:
        return stopped.exit_status if stopped is not None else 1
    print("\n".join(answer(explained.document)))
    print(f"\nExplained: {explained.path}\nRuns:      {explained.results.path}")
    if stopped is not None:
        print(f"error: stopped by {stopped}; the claims above use the runs so far; --resume continues", file=sys.stderr)
        return stopped.exit_status
    if explained.results.failed_runs:
        print(f"error: {explained.results.failed_runs} run(s) failed; see {explained.results.path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
