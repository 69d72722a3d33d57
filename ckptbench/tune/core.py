"""`tune`: the fastest TensorStore layout for this model on this disk, within a time budget.

The search space is data (`sweeps/tune_space.json`): axes (any per-test field of a suite
config, one value or a list), formats (fields fixed together: zarr2, zarr3, zarr3 with
sharding, OCDBT) and `always` entries (t5x_full). Every combination is a candidate test;
`config.from_dict` expands and validates them exactly as it does a sweep, so invalid
combinations are skipped with its reasons. Candidates that lay this model out the same
way (identical chunk and shard shapes for every tensor) are measured once.

Every measurement is a normal suite run by `runner.run` (fsync'd saves, cold loads,
bit-exact verification, a journal for `--resume`), one suite per stage, each in its own
folder under the tune folder, all sharing the weights made once:

- rung-0, rung-1, ...: successive halving. A rung runs every surviving candidate once
  and the reference rows (safetensors, torch.save, the device ceiling) once. It keeps
  the better half on the objective; a candidate below the cut is dropped only when it
  loses even in its best case (the noise model below). Rung 0 samples the space:
  seeded, each axis' values spread evenly along the sample, t5x_full always in it.
- final-1, final-2, ...: one round each of the two finalists and t5x_full (final-1 with
  the reference rows too), until the winner and the runner-up differ at p < 0.05 by
  `analysis.compare` (Welch), or the budget ends: then they are reported as tied.
  t5x_full is left out of later rounds once the winner's lead over it is significant.

Noise model. With one run per candidate there is no per-candidate interval, so the
run-to-run spread is pooled on the log scale: the variance of log(value) within every
group with two runs or more (candidates, and the reference rows, which run once per
rung), pooled with a prior of PRIOR_LOG_SD (10 %, pyperf's "noisy" threshold) weighted as
PRIOR_DF degrees of freedom. A candidate below the cut is dropped when the 95 % interval
of log(its mean / the cut's mean), t(df) x sd x sqrt(1/n + 1/n_cut), lies wholly above
zero. Sizes have no run-to-run noise: the larger one loses outright.

Budget. Everything counts: making the weights, every suite, writing the tuned
checkpoint and the report. Before rung 0 the run time is estimated from the model's
size (PRIOR_RUN_S_PER_GB, measured on a 2-core virtual machine), and from it how many
candidates fit: the halving's runs (n + n/2 + ... until FINALISTS are left) plus a
reference set per rung, after reserving the final. Rung 0 is planned OVERPLAN times
larger and stopped when its share of the budget is spent, so a wrong prior changes
how many candidates rung 0 measures, not the total time. Later stages are planned from
each test's measured durations; no run starts that is not expected to end in time.

State. `tune_state.json` (written atomically and fsync'd after every run) holds the
settings, the space, the seed, every stage's members and status, the survivors and the
eliminated with their reasons, and the measured durations. Ctrl-C keeps everything;
`resume` continues the interrupted stage through its journal, then goes on. A resumed
tune has what was left of its budget (or a new --budget, counting what was spent).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ckptbench.analysis import change as analysis, stats
from ckptbench.spec import config as config_mod
from ckptbench.documents import store as documents, journal, results
from ckptbench.core import interrupt
from ckptbench.bench import workspace
from ckptbench.spec.config import REFERENCES, TestSpec
from ckptbench.core.errors import UserError
from ckptbench.core.records import new_seed
from ckptbench.core.units import duration_label, human_bytes, size_label

SPACE_FILE = Path(__file__).with_name("tune_space.json")  # in the package (pip installs it); sweeps/ links to it
TUNING_FILE = "tuning.json"
STATE_FILE = "tune_state.json"
CHECKPOINT = "tuned_checkpoint"  # the run label of the weights written in the winning layout
PLACEHOLDER = "CHECKPOINT_DIR/"
SCHEMA_FILE = Path(__file__).parent.parent / "documents" / "schemas" / "tuning.schema.json"
SCHEMA_VERSION = 1
STATE_FORMAT = "ckptbench-tune-state-1"
T5X = "t5x_full"
OBJECTIVES = results.OBJECTIVES  # save -> save_s, load -> load_s, balanced -> total_s, size -> size_bytes
DEFAULT_OBJECTIVE = "balanced"
DEFAULT_BUDGET_S = 600.0
MIN_BUDGET_S = 10.0
FINALISTS = 2
ALPHA = stats.ALPHA
# Noise model (module docstring).
PRIOR_LOG_SD = 0.10
PRIOR_DF = 8
# Budget model: seconds per run = fixed + per GB of model, before anything is measured. A run is a
# save, a size walk, an eviction, a cold load, a bit-for-bit check and a delete. Measured on a 2-core
# VM with the 0.54 GB smollm2-135m: 7 s/GB for raw 1 MB chunks at concurrency 128, 25 s/GB for 256 KB
# chunks at concurrency 1, 36 s/GB with gzip; safetensors 9, torch.save 11, the ceiling's grid 15.
PRIOR_RUN_S_PER_GB = 12.0
PRIOR_REFERENCE_S_PER_GB = {"safetensors": 10.0, "torch_save": 11.0, "device_ceiling": 15.0}
PRIOR_FIXED_S = 0.6
PRIOR_SUITE_OVERHEAD_S = 0.5  # a suite's own work: pre-flight checks, the journal, results.json
FINISH_FIXED_S = 6.0  # tuning.json, and tuning.png (importing matplotlib takes seconds on a small machine)
OVERPLAN = 3
FINAL_ROUNDS_RESERVED = 2  # final rounds (after final-1) the plan keeps room for

RUNNING, COMPLETE, BUDGET = "running", "complete", "budget"


# --- settings ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What a tune measures and how long it may take."""

    output_dir: Path
    model: str | None = None
    weights: str | None = None
    dtype: str = "float32"
    values: str = "random"
    storage: str | None = None
    objective: str = DEFAULT_OBJECTIVE
    budget_s: float = DEFAULT_BUDGET_S
    seed: int | None = None
    space_path: Path = SPACE_FILE
    cache_eviction: str = "auto"
    noise_pct: float = 5.0
    keep_checkpoint: bool = False

    @property
    def metric(self) -> str:
        return OBJECTIVES[self.objective]

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed tune must share with the interrupted one."""
        return {"model": self.model, "weights": self.weights, "dtype": self.dtype, "values": self.values,
                "storage": self.storage, "objective": self.objective, "cache_eviction": self.cache_eviction,
                "noise_pct": self.noise_pct}


def check_settings(settings: Settings) -> None:
    if settings.objective not in OBJECTIVES:
        raise UserError(f"--objective: {settings.objective!r} is not one of {', '.join(OBJECTIVES)}")
    if not settings.budget_s >= MIN_BUDGET_S:
        raise UserError(f"--budget: {duration_label(settings.budget_s)} is too short; give at least "
                        f"{duration_label(MIN_BUDGET_S)} (e.g. 5m)")
    if (settings.storage or "").startswith("memory://"):
        raise UserError("--storage: memory:// measures no disk, and tune looks for the best layout on a disk; "
                        "give a folder or an object store")


# --- the search space -------------------------------------------------------------------------------

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,39}$"
_FIELDS = {f: config_mod.TEST_SCHEMA["properties"][f] for f in config_mod.SWEEP_FIELDS}
SPACE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["axes", "formats"],
    "properties": {
        "description": {"type": "string"},
        "axes": {"type": "object", "additionalProperties": False, "properties": _FIELDS},
        "formats": {"type": "object", "minProperties": 1, "propertyNames": {"pattern": _NAME},
                    "additionalProperties": {"type": "object", "additionalProperties": False,
                                             "properties": {**_FIELDS, "description": {"type": "string"}}}},
        "always": {"type": "array", "items": config_mod.TEST_SCHEMA},
    },
}


def load_space(path: Path | str) -> dict[str, Any]:
    """Read and validate a search-space file; every problem is one UserError line naming the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--space: {path}: no such file; give a search-space JSON file like "
                        "sweeps/tune_space.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--space: {path}: cannot be read ({exc}); check its permissions and encoding") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--space: {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    validate_space(data, str(path))
    return data


def validate_space(data: Any, source: str = "space") -> None:
    """The space's structure against SPACE_SCHEMA (its values with the config's own schema pieces)."""
    from jsonschema.exceptions import best_match

    if not isinstance(data, dict):
        raise UserError(f"{source}: the top level must be a JSON object {{...}}, got {type(data).__name__}")
    error = best_match(config_mod.Validator(SPACE_SCHEMA).iter_errors(data))
    if error is None:
        return
    where = ".".join(str(p) for p in error.absolute_path)
    if "propertyNames" in error.schema_path:
        text = (f"format name {error.instance!r} is not valid; use letters, digits, '_', '-', '.' or '=' "
                "(at most 40)")
    elif error.validator == "minProperties":
        text = "is empty; give at least one format, e.g. {\"zarr2\": {\"format\": \"zarr2\"}}"
    else:
        text = config_mod.describe_error(error)
    raise UserError(f"{source}: {'field ' + where if where else 'top level'}: {text}")


@dataclass(frozen=True)
class Universe:
    """Every candidate of a space for one model: measurable tests by name, in space order (always first)."""

    tests: dict[str, TestSpec]
    always: tuple[str, ...]
    axes: dict[str, dict[str, str]]  # candidate -> {axis: value}: what balanced sampling spreads
    skipped: tuple[tuple[str, str], ...]  # invalid combinations, with config's reasons
    duplicates: tuple[tuple[str, str], ...]  # (candidate, the candidate laying this model out the same way)

    @property
    def pool(self) -> list[str]:
        """Candidates rung 0 samples from (the `always` ones are added to every sample)."""
        return [n for n in self.tests if n not in self.always]


def space_tests(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The space as suite-config test entries: the `always` entries, then one sweep per format."""
    tests = [dict(entry) for entry in space.get("always", [])]
    for key, fixed in space["formats"].items():
        tests.append({"name": key, **space["axes"], **{k: v for k, v in fixed.items() if k != "description"}})
    return tests


def candidates(space: Mapping[str, Any], settings: Settings, source: str = "space") -> config_mod.SuiteConfig:
    """Every valid combination of the space, validated and expanded by `config.from_dict` (no I/O)."""
    data = suite_data(settings, space_tests(space), settings.output_dir, references=False, seed=0)
    try:
        return config_mod.from_dict(data, source=source)
    except UserError as exc:
        raise UserError(f"--space: {exc}") from None


def make_universe(space: Mapping[str, Any], suite: config_mod.SuiteConfig, shapes: Iterable[Sequence[int]]) -> Universe:
    """The space's candidates (`suite`, from `candidates`) for a model whose tensors have `shapes`, with
    effective duplicates removed."""
    always = tuple(entry["name"] for entry in space.get("always", []))
    keys = sorted(space["formats"], key=len, reverse=True)  # longest first: "zarr3_sharded" before "zarr3"
    unique_shapes = sorted({tuple(int(d) for d in s) for s in shapes})
    seen: dict[tuple, str] = {}
    tests: dict[str, TestSpec] = {}
    axes: dict[str, dict[str, str]] = {}
    duplicates: list[tuple[str, str]] = []
    for test in suite.tests:
        key = layout_key(test, suite.dtype, unique_shapes)
        if key in seen:
            duplicates.append((test.name, seen[key]))
            continue
        seen[key] = test.name
        tests[test.name] = test
        if test.name not in always:
            fmt = next(k for k in keys if test.name == k or test.name.startswith(k + "_"))
            swept = {f: json.dumps(v, sort_keys=True) for f, v in (test.sweep or {}).items()}
            axes[test.name] = {"formats": fmt, **swept}
    return Universe(tests, tuple(n for n in always if n in tests), axes, suite.skipped, tuple(duplicates))


# TestSpec fields that do not set up a candidate, or that act only through the chunk and shard shapes
_NOT_IN_KEY = {"name", "description", "expected", "sweep", "processes", "backend", "chunk_size_elements", "chunk_bytes",
               "chunk_strategy", "shard_bytes"}


def layout_key(test: TestSpec, dtype: str, shapes: Sequence[tuple[int, ...]]) -> tuple:
    """What a candidate does to tensors of these shapes: every setting, with the chunk settings only
    through the chunk and shard shapes they give."""
    from ckptbench.bench.storage import Layout

    layout = Layout.of(test, dtype)
    settings = tuple((f.name, json.dumps(getattr(test, f.name), sort_keys=True))
                     for f in dataclasses.fields(TestSpec) if f.name not in _NOT_IN_KEY)
    return (settings, tuple(tuple(layout.chunk_shape(s)) for s in shapes),
            tuple(tuple(layout.shard_shape(s) or ()) for s in shapes))


_ALWAYS_WRITTEN = ("chunk_strategy", "concurrency_limit", "compression", "format")  # a pasted entry reads on its own
_SIZES = ("chunk_bytes", "shard_bytes")


def test_entry(test: TestSpec, name: str | None = None, description: str | None = None) -> dict[str, Any]:
    """A test as a suite-config entry (phase4_config.json's test_configurations): every setting the config
    schema knows that differs from its default; `config.from_dict` reads it back to the same test."""
    defaults = TestSpec(name="")
    entry: dict[str, Any] = {"name": name or test.name}
    text = test.description if description is None else description
    if text:
        entry["description"] = text
    for key in config_mod.TEST_SCHEMA["properties"]:
        if key in ("name", "description", "expected"):
            continue
        value = getattr(test, key)
        if key not in _ALWAYS_WRITTEN and value == getattr(defaults, key):
            continue
        if key == "compression" and value is None:
            value = "none"  # written out: an omitted compressor is not raw storage in zarr v2
        elif key in _SIZES and value is not None:
            value = size_label(value)  # "1MB", or "1000B": both read back to the same bytes
        entry[key] = value
    return entry


def describe_layout(test: TestSpec) -> str:
    """'zarr3 on ocdbt, 4MB chunks (halve), concurrency 128, zstd-1, file_io_mode direct'."""
    from ckptbench.spec.compression import label

    fmt = test.format + (" on ocdbt" if test.kvstore == "ocdbt" else "")
    if test.shard_bytes is not None:
        fmt += f" sharded ({size_label(test.shard_bytes)} shards)"
    chunk = (f"{test.chunk_size_elements:,}-element" if test.chunk_size_elements is not None
             else size_label(test.chunk_bytes or 0))
    text = (f"{fmt}, {chunk} chunks ({test.chunk_strategy}), concurrency {test.concurrency_limit}, "
            f"{label(test.compression)}")
    if test.file_io_mode != "default":
        text += f", file_io_mode {test.file_io_mode}"
    return text


def suite_data(settings: Settings, tests: list[dict[str, Any]], output_dir: Path, references: bool,
               seed: int) -> dict[str, Any]:
    """A suite config (as `config.from_dict` reads it) of tests run once each, in the order given."""
    data: dict[str, Any] = {
        "output_dir": str(output_dir),
        "dtype": settings.dtype,
        "references": {name: references for name in REFERENCES},
        "testing": {"num_runs": 1, "warmup_rounds": 0, "seed": seed, "order": "blocked",
                    "cache_eviction": settings.cache_eviction, "noise_pct": settings.noise_pct},
        "test_configurations": tests,
    }
    if tests:
        data["baseline"] = tests[0]["name"]
    if settings.model is not None:
        data["model"] = settings.model
    if settings.weights is not None:
        data["weights"] = settings.weights
    else:
        data["values"] = settings.values
    if settings.storage is not None:
        data["storage"] = settings.storage
    return data


def sample(universe: Universe, n: int, seed: int) -> list[str]:
    """n candidates from the pool, seeded, chosen one after another so that every prefix spreads each
    axis' values evenly (the least-seen values first; ties broken by a seeded shuffle)."""
    rng = random.Random(f"ckptbench-tune-sample-{seed}")
    pool = universe.pool
    rng.shuffle(pool)
    seen: dict[tuple[str, str], int] = defaultdict(int)
    chosen: list[str] = []
    while pool and len(chosen) < n:
        best = min(range(len(pool)), key=lambda i: sum(seen[item] for item in universe.axes[pool[i]].items()))
        name = pool.pop(best)
        chosen.append(name)
        for item in universe.axes[name].items():
            seen[item] += 1
    return chosen


def stage_seed(seed: int, stage: str) -> int:
    return zlib.crc32(f"{seed}:{stage}".encode())


def shuffled(names: Sequence[str], seed: int, stage: str) -> list[str]:
    out = list(names)
    random.Random(stage_seed(seed, stage)).shuffle(out)
    return out


# --- the search: ranking, halving, separation (pure) -------------------------------------------------

@dataclass(frozen=True)
class Noise:
    """Run-to-run spread on the log scale, pooled over groups with >= 2 runs and a prior (module docstring)."""

    log_sd: float
    df: float
    measured_df: int = 0

    @property
    def t(self) -> float:
        return float(stats.t_quantile(1 - ALPHA / 2, self.df)) if self.log_sd > 0 else 0.0

    def halfwidth(self, n_a: int, n_b: int) -> float:
        """Half the 95 % interval of log(mean_a / mean_b) for means of n_a and n_b runs."""
        return self.t * self.log_sd * math.sqrt(1 / n_a + 1 / n_b)

    def to_json(self) -> dict[str, Any]:
        noisy = math.isfinite(self.df)  # sizes: no noise, no degrees of freedom
        return {"log_sd": self.log_sd, "df": self.df if noisy else None, "measured_df": self.measured_df,
                "prior_log_sd": PRIOR_LOG_SD if noisy else 0.0, "prior_df": PRIOR_DF if noisy else 0}


def noise_model(groups: Iterable[Sequence[float]], noisy: bool = True) -> Noise:
    """The pooled log-scale spread of repeated runs (each group: one test's values); none for sizes."""
    if not noisy:
        return Noise(0.0, math.inf)
    squares, df, measured = PRIOR_DF * PRIOR_LOG_SD ** 2, float(PRIOR_DF), 0
    for values in groups:
        positive = [float(v) for v in values if v > 0]
        if len(positive) < 2:
            continue
        spread = stats.mean_std(np.log(positive))[1]
        squares += (len(positive) - 1) * spread ** 2
        df += len(positive) - 1
        measured += len(positive) - 1
    return Noise(math.sqrt(squares / df), df, measured)


def mean(values: Sequence[float]) -> float:
    return stats.mean_std(stats.as_floats(values))[0]


def rank(values: Mapping[str, Sequence[float]], tiebreak: Mapping[str, Sequence[float]] | None = None) -> list[str]:
    """Names from best to worst by mean (lower is better), ties broken by `tiebreak`'s mean, then name."""
    def key(name: str) -> tuple[float, float, str]:
        second = mean(tiebreak[name]) if tiebreak and tiebreak.get(name) else 0.0
        return (mean(values[name]), second, name)
    return sorted((n for n in values if len(values[n])), key=key)


@dataclass(frozen=True)
class Halving:
    ranking: list[str]
    kept: list[str]
    eliminated: dict[str, dict[str, Any]]  # name -> {reason, mean, cut_mean, change_pct, best_case_pct}
    cut: str | None


def halve(values: Mapping[str, Sequence[float]], noise: Noise, *, keep_at_least: int = FINALISTS,
          tiebreak: Mapping[str, Sequence[float]] | None = None, metric: str = "total_s") -> Halving:
    """Keep the better half (at least keep_at_least); of the rest, drop only those that lose even in their
    best case against the cut (the last kept), by the noise model."""
    ranking = rank(values, tiebreak)
    keep = max(keep_at_least, math.ceil(len(ranking) / 2))
    if len(ranking) <= keep:
        return Halving(ranking, list(ranking), {}, None)
    cut = ranking[keep - 1]
    cut_mean, cut_n = mean(values[cut]), len(values[cut])
    kept, eliminated = list(ranking[:keep]), {}
    for name in ranking[keep:]:
        mine, n = mean(values[name]), len(values[name])
        loss = math.log(mine / cut_mean) if cut_mean > 0 and mine > 0 else 0.0
        best_case = loss - noise.halfwidth(n, cut_n)
        if best_case > 0 or (noise.log_sd == 0 and mine > cut_mean):
            change, best = 100 * (mine / cut_mean - 1), 100 * math.expm1(best_case)
            eliminated[name] = {
                "reason": f"{metric} {mine:.4g} ({n} run{'s' if n > 1 else ''}) vs {cut_mean:.4g} for {cut}, the last "
                          f"kept: {change:+.1f}%; even its best case ({best:+.1f}% at the 95% bound, pooled spread "
                          f"{100 * noise.log_sd:.1f}%) loses",
                "mean": mine, "n": n, "cut": cut, "cut_mean": cut_mean, "change_pct": change, "best_case_pct": best}
        else:
            kept.append(name)
    return Halving(ranking, kept, eliminated, cut)


def compare_metric(metric: str) -> str:
    """analysis.compare judges sizes as sizes and every time (total_s too) as a time."""
    return "size_bytes" if metric == "size_bytes" else "save_s"


def separation(values: Mapping[str, Sequence[float]], metric: str, noise_pct: float,
               tiebreak: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """The leader, the runner-up and whether they differ (p < ALPHA, Welch, by analysis.compare)."""
    ranking = rank(values, tiebreak)
    out: dict[str, Any] = {"winner": ranking[0] if ranking else None, "runner_up": None, "comparison": None,
                           "separated": False, "ranking": ranking}
    if len(ranking) >= 2:
        comparison = analysis.compare(values[ranking[1]], values[ranking[0]], metric=compare_metric(metric),
                                      noise_pct=noise_pct)
        out.update(runner_up=ranking[1], comparison=comparison,
                   separated=comparison["p_value"] is not None and comparison["p_value"] < ALPHA)
    return out


def pareto(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names not dominated in both coordinates (lower is better), by the first coordinate."""
    ordered = sorted(points, key=lambda n: (points[n][0], points[n][1]))
    front, best_y = [], math.inf
    for name in ordered:
        if points[name][1] < best_y:
            front.append(name)
            best_y = points[name][1]
    return front


# --- the budget (pure) ------------------------------------------------------------------------------

def prior_run_s(model_bytes: int) -> float:
    return PRIOR_FIXED_S + PRIOR_RUN_S_PER_GB * model_bytes / 1e9


def prior_reference_s(name: str, model_bytes: int) -> float:
    return PRIOR_FIXED_S + PRIOR_REFERENCE_S_PER_GB[name] * model_bytes / 1e9


@dataclass
class Durations:
    """Measured wall seconds per run of each test and per suite's own overhead; predictions from them."""

    model_bytes: int
    runs: dict[str, list[float]] = field(default_factory=dict)
    overheads: list[float] = field(default_factory=list)

    def add(self, test: str, seconds: float) -> None:
        self.runs.setdefault(test, []).append(float(seconds))

    def typical_candidate_s(self) -> float:
        """An unmeasured candidate: the median of the measured candidates' runs (>= 3), else the prior."""
        measured = [mean(v) for k, v in self.runs.items() if k not in REFERENCES and v]
        return float(np.median(measured)) if len(measured) >= 3 else prior_run_s(self.model_bytes)

    def of(self, test: str) -> float:
        if self.runs.get(test):
            return mean(self.runs[test])
        if test in REFERENCES:
            return prior_reference_s(test, self.model_bytes)
        return self.typical_candidate_s()

    def overhead_s(self) -> float:
        return mean(self.overheads) if self.overheads else PRIOR_SUITE_OVERHEAD_S

    def suite_s(self, tests: Iterable[str]) -> float:
        return sum(self.of(t) for t in tests) + self.overhead_s()

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "overheads": self.overheads}


def halving_sizes(n: int) -> list[int]:
    """Rung sizes of successive halving from n candidates until FINALISTS are left: 14 -> [14, 7, 4]."""
    sizes = []
    while n > FINALISTS:
        sizes.append(n)
        n = max(FINALISTS, math.ceil(n / 2))
    return sizes or [n]


def final_s(run_s: float, references_s: float, overhead_s: float, t5x_s: float | None = None) -> float:
    """The final the budget keeps room for: final-1 (the finalists, t5x_full and the reference rows),
    then FINAL_ROUNDS_RESERVED rounds of the finalists."""
    first = FINALISTS * run_s + (run_s if t5x_s is None else t5x_s) + references_s + overhead_s
    return first + FINAL_ROUNDS_RESERVED * (FINALISTS * run_s + overhead_s)


def continuation_s(n: int, run_s: float, references_s: float, overhead_s: float, t5x_s: float | None = None) -> float:
    """What follows a rung 0 of n candidates: the later halving rungs (each with the reference rows) and
    the final, where a survivor's run takes run_s. Rung 0 goes on while this still fits after its next run."""
    later = halving_sizes(n)[1:]  # [n] alone when n <= FINALISTS: no later rung
    return (sum(size * run_s + references_s + overhead_s for size in later)
            + final_s(run_s, references_s, overhead_s, t5x_s))


@dataclass(frozen=True)
class Plan:
    """How the budget is meant to be spent, estimated before rung 0 from the model's size."""

    n_candidates: int  # candidates expected to fit in rung 0
    rung_sizes: list[int]
    run_s: float
    references_s: float
    overhead_s: float
    final_reserve_s: float
    rung0_s: float
    time_left_s: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan_budget(time_left_s: float, run_s: float, references_s: float, overhead_s: float, n_available: int) -> Plan:
    """The largest rung 0 that, with what must follow it (`continuation_s`), fits the time left."""
    def total(n: int) -> float:
        return n * run_s + references_s + overhead_s + continuation_s(n, run_s, references_s, overhead_s)

    fit = 0
    for n in range(1, n_available + 1):
        if total(n) > time_left_s:
            break
        fit = n
    return Plan(fit, halving_sizes(fit) if fit else [], run_s, references_s, overhead_s,
                final_s(run_s, references_s, overhead_s),
                (fit * run_s + references_s + overhead_s) if fit else 0.0, time_left_s)


def fits(elapsed_s: float, predicted_s: float, deadline_s: float) -> bool:
    """Whether something predicted to take predicted_s, started now, ends by the deadline (budget time)."""
    return elapsed_s + predicted_s <= deadline_s


# --- the answer ---------------------------------------------------------------------------------------

FIGURES = ("save_s", "load_s", "total_s", "size_bytes", "save_gbps", "load_gbps")


def gather(documents: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Every test's per-metric values over several results documents (results.samples of each)."""
    out: dict[str, dict[str, list[float]]] = {}
    for document in documents:
        data_bytes = int(document["weights"]["size_bytes"])
        for test in document["tests"]:
            mine = results.samples(test["runs"], data_bytes)
            merged = out.setdefault(test["name"], {m: [] for m in FIGURES})
            for metric in FIGURES:
                merged[metric] += mine[metric]
    return out


def summaries(samples: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    return {metric: stats.summarize(samples.get(metric, [])) for metric in FIGURES}


def recommend(samples: Mapping[str, Mapping[str, list[float]]], finalists: Sequence[str], metric: str,
              noise_pct: float) -> dict[str, Any] | None:
    """The winner among the finalists, its figures with CIs, its place against the ceiling, the references
    and t5x_full, and the runner-up with whether the two can be told apart (all by analysis.compare)."""
    values = {n: samples[n][metric] for n in finalists if n in samples and samples[n][metric]}
    tiebreak = {n: samples[n]["total_s"] for n in values}
    decided = separation(values, metric, noise_pct, tiebreak)
    winner = decided["winner"]
    if winner is None:
        return None
    mine = samples[winner]
    out: dict[str, Any] = {"test": winner, "metric": metric, "figures": summaries(mine),
                           "objective": stats.summarize(mine[metric])}
    ceiling = samples.get("device_ceiling")
    out["pct_of_ceiling"] = {}
    if ceiling:
        for rate in ("save_gbps", "load_gbps"):
            limit = stats.summarize(ceiling[rate])["mean"]
            out["pct_of_ceiling"][rate] = None if not limit else 100.0 * out["figures"][rate]["mean"] / limit
        if metric != "size_bytes" and ceiling[metric]:
            out["pct_of_ceiling"][metric] = 100.0 * mean(ceiling[metric]) / out["objective"]["mean"]
    out["versus"] = {}
    for other in ("safetensors", "torch_save", T5X):
        if other == winner or other not in samples or not samples[other][metric]:
            continue
        comparison = analysis.compare(mine[metric], samples[other][metric], metric=compare_metric(metric),
                                      noise_pct=noise_pct)
        out["versus"][other] = {"mean": mean(samples[other][metric]), "n": len(samples[other][metric]), **comparison}
    out["runner_up"] = None
    if decided["runner_up"] is not None:
        second = decided["runner_up"]
        out["runner_up"] = {"test": second, "objective": stats.summarize(samples[second][metric]),
                            "comparison": decided["comparison"], "distinguishable": decided["separated"]}
    return out


def paste_ready(test: TestSpec, dtype: str, example: str, shape: Sequence[int], checkpoint: Any,
                context_extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What to paste: the TensorStore spec of one array (example) of a checkpoint at `checkpoint` (a folder
    or a targets.RunLocation) in the test's layout (open it with create=True to write, open=True to read;
    any other array: its own name in the kvstore path), the context JSON (with a remote target's
    resources), and a test entry for phase4_config.json."""
    from ckptbench.bench.storage import Layout

    layout = Layout.of(test, dtype)
    spec = layout.array_spec(checkpoint, example, tuple(int(d) for d in shape), dtype)
    for key in ("create", "store_data_equal_to_fill_value"):
        spec.pop(key, None)
    entry = test_entry(test, name="tuned", description=f"found by tune: {describe_layout(test)}")
    return {"spec": spec, "context": layout.context_spec(context_extra), "example_array": example,
            "test_entry": entry}


def array_spec_for(paste: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The pasted spec for another array of the same checkpoint: its name in the kvstore path, no metadata
    (each array's shape and chunks are read from its own metadata)."""
    spec = json.loads(json.dumps({k: v for k, v in paste["spec"].items() if k != "metadata"}))
    kvstore = spec["kvstore"]
    example = paste["example_array"]
    kvstore["path"] = kvstore["path"].replace(example, name)
    return spec


def read_back(paste: Mapping[str, Any], names: Iterable[str]) -> dict[str, np.ndarray]:
    """Read a checkpoint's arrays with nothing but the pasted spec and context."""
    import tensorstore as ts

    context = ts.Context(paste["context"])
    opened = {n: ts.open(array_spec_for(paste, n), open=True, context=context) for n in names}
    stores = {n: future.result() for n, future in opened.items()}
    reads = {n: store.read() for n, store in stores.items()}
    return {n: np.asarray(future.result()) for n, future in reads.items()}


# --- the tuning document --------------------------------------------------------------------------------

class Tuning(documents.Document):
    """A tuning document, as `tune.run` returns it and `read` loads it."""

    plot_path: Path | None = None  # tuning.png, once drawn (None: nothing measured to draw)

    @property
    def recommendation(self) -> dict[str, Any] | None:
        return self.document["recommendation"]

    def report(self) -> str:
        from ckptbench.tune import report as tune_report

        return tune_report.text(self.document)

    def draw(self, folder: Path) -> Path | None:
        from ckptbench.tune import plot as tune_plot

        return tune_plot.draw(self.document, Path(folder) / tune_plot.PLOT_FILE)


def validate(document: Any, source: str = "tuning") -> None:
    documents.validate(document, SCHEMA_FILE, source, "tuning")


def read(path: Path | str) -> Tuning:
    document = documents.read_json(path, "tuning")
    version = document.get("schema_version") if isinstance(document, dict) else None
    if version != SCHEMA_VERSION:
        raise UserError(f"{path}: schema_version {version!r} is not one this tool reads ({SCHEMA_VERSION})")
    validate(document, str(path))
    return Tuning(document, Path(path))


# --- running it -----------------------------------------------------------------------------------------

class _Stop(interrupt.Interrupted):
    """Raised from the runner's callbacks to end a suite early because the budget is spent (not a signal):
    the runner writes the partial results and re-raises it, as it does for Ctrl-C."""

    def __init__(self, why: str) -> None:
        BaseException.__init__(self, why)
        self.signum = 0
        self.results = None
        self.why = why


Event = Callable[[str, dict[str, Any]], None]


def _ignore(_kind: str, _data: dict[str, Any]) -> None:
    pass


def run(settings: Settings, *, on_event: Event = _ignore, clock: Callable[[], float] = time.monotonic) -> Tuning:
    """Tune (module docstring); the document is also written to OUTPUT_DIR/tuning.json, the figure beside it.

    on_event(kind, data) reports progress: "estimate", "stage", "phase", "run", "stage_end", "corrected",
    "finishing". A stop signal saves everything and raises `interrupt.Interrupted` with the partial
    tuning attached as `.results`; `resume(output_dir)` continues it."""
    check_settings(settings)
    return _Tuner(settings, on_event, clock).start()


def resume(output_dir: Path | str, *, given: Mapping[str, Any] | None = None, budget_s: float | None = None,
           keep_checkpoint: bool | None = None, on_event: Event = _ignore,
           clock: Callable[[], float] = time.monotonic) -> Tuning:
    """Continue an interrupted tune in output_dir. `given`: settings stated again (e.g. on the command
    line), which must equal the interrupted tune's; `budget_s`: a new total budget (what was spent counts)."""
    output_dir = Path(output_dir).resolve()
    state = _read_state(output_dir)
    stored = state["settings"]
    differences = [f"{key}: was {stored.get(key)!r}, now {value!r}" for key, value in (given or {}).items()
                   if value is not None and key in stored and _normalized(key, value) != stored.get(key)]
    if differences:
        raise UserError(f"--resume: the tune differs from the interrupted one ({'; '.join(differences)}); resume "
                        "with the same settings, or start afresh without --resume")
    settings = Settings(output_dir=output_dir, **stored, seed=state["seed"],
                        budget_s=float(budget_s if budget_s is not None else state["budget_s"]),
                        keep_checkpoint=bool(state["keep_checkpoint"] if keep_checkpoint is None else keep_checkpoint))
    check_settings(settings)
    return _Tuner(settings, on_event, clock, state).start()


def _normalized(key: str, value: Any) -> Any:
    if key == "weights" and value is not None:
        return config_mod.weights_source(str(value), Path.cwd())
    return value


def _read_state(output_dir: Path) -> dict[str, Any]:
    path = output_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--resume: no {STATE_FILE} in {output_dir}; there is no tune to resume there") from None
    except (OSError, ValueError):
        raise UserError(f"--resume: {path} is damaged; start afresh without --resume") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"--resume: {path} is not a tune state this version wrote; start afresh without --resume")
    return state


class _Tuner:
    """One session of a tune: fresh (`state` None) or resumed from the state an earlier session saved."""

    def __init__(self, settings: Settings, on_event: Event, clock: Callable[[], float],
                 state: dict[str, Any] | None = None) -> None:
        self.emit, self.clock = on_event, clock
        self.session_start = clock()
        self.out = Path(settings.output_dir).resolve()
        self.resumed = state is not None
        self.state: dict[str, Any] = state or {}
        self.spent_before_s = float(self.state.get("spent_s", 0.0))
        if self.resumed:
            self.state["budget_s"] = settings.budget_s
            self.state["keep_checkpoint"] = settings.keep_checkpoint
            self.space, self.space_source = self.state["space"]["data"], self.state["space"]["path"]
        else:
            workspace.check_output_dir(self.out)
            self.space, self.space_source = load_space(settings.space_path), str(settings.space_path)
            if settings.seed is None:
                settings = dataclasses.replace(settings, seed=new_seed())
        # The space and the settings are checked, and the weights' folder resolved, before the weights are made.
        self.base = candidates(self.space, settings, self.space_source)
        self.settings = dataclasses.replace(settings, weights=self.base.weights)
        self.documents: dict[str, dict[str, Any]] = {}

    # time
    def elapsed(self) -> float:
        """Seconds of the budget spent: earlier sessions', and this one's since it began."""
        return self.spent_before_s + self.clock() - self.session_start

    @property
    def budget_s(self) -> float:
        return float(self.state["budget_s"])

    def finish_reserve_s(self) -> float:
        """Writing and checking the tuned checkpoint (about one run of a finalist), tuning.json, the figure."""
        names = self.state.get("finalists") or self._ranked(self.state.get("alive") or [])[:FINALISTS]
        return FINISH_FIXED_S + max([self.durations.of(n) for n in names] or [self.durations.typical_candidate_s()])

    # the session
    def start(self) -> Tuning:
        if self.resumed and self.state.get("phase") == "done" and (self.out / TUNING_FILE).is_file():
            return read(self.out / TUNING_FILE)

        planned = False
        try:
            with interrupt.signals_raise():
                self.source = self._make_weights()
                self.durations = Durations(self.source.size_bytes)
                self.universe = make_universe(self.space, self.base, [a.shape for a in self.source.tensors.values()])
                if self.resumed:
                    self._check_resumed_weights()
                    self.durations.runs = {k: list(v) for k, v in self.state["durations"]["runs"].items()}
                    self.durations.overheads = list(self.state["durations"]["overheads"])
                    self._load_documents()
                else:
                    self._plan()
                planned = True
                self._loop()
                return self._finish()
        except interrupt.Interrupted as stop:
            if planned:  # before that, nothing was written
                self._save_state()
                stop.results = self._write_partial()
            raise

    def _make_weights(self):
        from ckptbench.sources import weights

        local, origin = weights.resolve(self.base.weights)
        made = weights.load(self.base.model, local, self.base.dtype, self.base.values)
        made.source.update(origin)
        return made

    def _plan(self) -> None:
        """Estimate what fits the budget, say so, and write the first state (the tune's first write)."""
        settings, universe = self.settings, self.universe
        model_bytes = self.source.size_bytes
        run_s = prior_run_s(model_bytes)
        references_s = sum(prior_reference_s(r, model_bytes) for r in self._references())
        setup_s = self.elapsed()
        left = settings.budget_s - setup_s - FINISH_FIXED_S - run_s
        plan = plan_budget(left, run_s, references_s, PRIOR_SUITE_OVERHEAD_S, len(universe.tests))
        if plan.n_candidates < min(len(universe.tests), FINALISTS + 1):
            need = setup_s + FINISH_FIXED_S + run_s + plan.final_reserve_s + (
                (FINALISTS + 1) * run_s + references_s + PRIOR_SUITE_OVERHEAD_S)
            raise UserError(f"--budget: {duration_label(settings.budget_s)} is too short for "
                            f"{human_bytes(model_bytes)} of weights: a run takes about {run_s:.0f} s and the "
                            f"reference rows about {references_s:.0f} s per rung; give at least --budget "
                            f"{duration_label(math.ceil(need / 30) * 30)}")
        workspace.prepare_output_dir(self.out)
        self._remove_earlier_tune()
        n_listed = min(len(universe.tests), OVERPLAN * plan.n_candidates)
        self.state = {
            "format": STATE_FORMAT,
            "settings": settings.fingerprint(),
            "seed": settings.seed,
            "budget_s": settings.budget_s,
            "spent_s": 0.0,
            "setup_s": setup_s,
            "keep_checkpoint": settings.keep_checkpoint,
            "space": {"path": self.space_source, "data": self.space},
            "weights": json.loads(json.dumps(self.source.describe())),
            "plan": plan.to_json(),
            "rung0_order": self._rung0_order(n_listed, plan.n_candidates),
            "corrected": None,
            "stages": [],
            "phase": "halving",
            "alive": [],
            "finalists": [],
            "eliminated": {},
            "not_measured": [],
            "stopped_by": None,
        }
        self._save_state()
        self.emit("estimate", {"plan": plan.to_json(), "setup_s": setup_s, "budget_s": settings.budget_s,
                               "n_candidates": len(universe.tests), "n_skipped": len(universe.skipped),
                               "n_duplicates": len(universe.duplicates), "n_listed": n_listed,
                               "model_bytes": model_bytes, "weights": self.source.describe(),
                               "objective": settings.objective, "seed": settings.seed,
                               "references": self._references()})

    def _rung0_order(self, n_listed: int, n_fit: int) -> list[str]:
        """The sample in running order, each `always` candidate at a seeded place among the first n_fit."""
        always = self.universe.always
        order = sample(self.universe, max(0, n_listed - len(always)), self.settings.seed)
        rng = random.Random(stage_seed(self.settings.seed, "rung-0-always"))
        for name in always:
            order.insert(rng.randrange(0, max(1, min(n_fit, len(order)) + 1)), name)
        return order

    def _references(self) -> list[str]:
        """The reference rows write local files: not run with an object store."""
        return list(REFERENCES) if "://" not in (self.settings.storage or "") else []

    def _remove_earlier_tune(self) -> None:
        """A fresh tune in an earlier one's folder: the earlier stages go (each folder carries our marker)."""
        for folder in sorted(self.out.glob("rung-*")) + sorted(self.out.glob("final-*")):
            if (folder / workspace.RUN_MARKER).is_file():
                workspace.remove_owned(folder)
        for name in (TUNING_FILE, STATE_FILE):
            (self.out / name).unlink(missing_ok=True)

    def _check_resumed_weights(self) -> None:
        now = json.loads(json.dumps(self.source.describe()))
        differences = journal.differences({"weights": self.state["weights"]}, {"weights": now})
        if differences:
            raise UserError(f"--resume: the weights differ from the interrupted tune's ({'; '.join(differences)}); "
                            "resume with the same weights, or start afresh without --resume")

    def _load_documents(self) -> None:
        for stage in self.state["stages"]:
            path = self.out / stage["name"] / results.RESULTS_FILE
            if path.is_file():
                self.documents[stage["name"]] = results.read(path).document

    # state
    def _save_state(self) -> None:
        self.state["spent_s"] = self.elapsed()
        self.state["durations"] = self.durations.to_json()
        documents.write_json(self.out / STATE_FILE, self.state)

    def _loop(self) -> None:
        """Run stages until the plan says stop. A stage stays "running" until its decision is made, and each
        decision replaces the state in one assignment, so a stop at any point resumes consistently."""
        while True:
            stage = self.state["stages"][-1] if self.state["stages"] else None
            if stage is not None and stage["status"] == RUNNING:
                status = self._run_stage(stage)
                self.state = self._conclude(copy.deepcopy(self.state), status)
            else:
                state = self._next_stage(copy.deepcopy(self.state))
                stop = state["stages"] == self.state["stages"]
                self.state = state
                if stop:
                    self._save_state()
                    return
            self._save_state()

    def _stage(self, name: str, kind: str, members: list[str], deadline_s: float) -> dict[str, Any]:
        return {"name": name, "kind": kind, "members": members, "seed": stage_seed(self.settings.seed, name),
                "deadline_s": deadline_s, "status": RUNNING, "started_s": None, "ended_s": None,
                "planned_s": self.durations.suite_s(members), "decision": None, "figures": None}

    def _next_stage(self, state: dict[str, Any]) -> dict[str, Any]:
        """The state with the next stage appended, or with why the search ends (then no stage is added)."""
        stages = state["stages"]
        if not stages:
            members = self._references() + state["rung0_order"]
            stage = self._stage("rung-0", "halving", members, self.budget_s - self.finish_reserve_s())
            stage["planned_s"] = state["plan"]["rung0_s"]  # it lists more than it is expected to measure
            stages.append(stage)
            return state
        ranked = self._ranked(state["alive"])
        if state["phase"] == "halving":
            finalists = ranked[:FINALISTS]
            rung = f"rung-{sum(1 for s in stages if s['kind'] == 'halving')}"
            if len(ranked) > FINALISTS:
                members = shuffled(ranked + self._references(), self.settings.seed, rung)
                deadline = self.budget_s - self.finish_reserve_s() - self._final_s(finalists)
                if fits(self.elapsed(), self.durations.suite_s(members), deadline):
                    stages.append(self._stage(rung, "halving", members, deadline))
                    return state
            state["phase"] = "final"
            state["finalists"] = finalists
        finalists = state["finalists"]
        if len(finalists) < 2:
            state["stopped_by"] = "one candidate measured" if finalists else "nothing measured"
            return state
        finals = [s for s in stages if s["kind"] == "final"]
        if finals and finals[-1]["decision"]["separated"]:
            state["stopped_by"] = "separated"
            return state
        name = f"final-{len(finals) + 1}"
        t5x = [T5X] if T5X in self.universe.tests and T5X not in finalists and not self._t5x_settled(finalists) else []
        references = [] if finals else self._references()
        deadline = self.budget_s - self.finish_reserve_s()
        # When the whole round does not fit, the finalists come first: the references (measured in every
        # rung already), then t5x_full, are left out of it.
        for members in (finalists + t5x + references, finalists + t5x, finalists):
            if fits(self.elapsed(), self.durations.suite_s(members), deadline):
                stages.append(self._stage(name, "final", shuffled(members, self.settings.seed, name), deadline))
                return state
        state["stopped_by"] = "budget"
        return state

    def _final_s(self, finalists: Sequence[str]) -> float:
        """The final these finalists would need (final-1 with t5x_full and the references, reserved rounds)."""
        extra = [T5X] if T5X in self.universe.tests and T5X not in finalists else []
        return (self.durations.suite_s(list(finalists) + extra + self._references())
                + FINAL_ROUNDS_RESERVED * self.durations.suite_s(finalists))

    def _rung0_may_start(self, test: str) -> bool:
        """Rung 0 measures candidates while what must follow (`continuation_s`, from the durations measured
        so far) still fits after the next run: a wrong prior changes how many it measures, not the total."""
        measured = sum(1 for n in self.state["rung0_order"] if self.durations.runs.get(n))
        measured += 0 if test in REFERENCES else 1
        rest = continuation_s(measured, self._survivor_run_s(),
                              sum(self.durations.of(r) for r in self._references()), self.durations.overhead_s(),
                              t5x_s=self.durations.of(T5X) if T5X in self.universe.tests else None)
        return fits(self.elapsed(), self.durations.of(test) + rest, self.budget_s - self.finish_reserve_s())

    def _survivor_run_s(self) -> float:
        """A run of a survivor of rung 0: for a time objective the survivors are the faster candidates, so the
        mean of the faster half of those measured; for size, the median (small is not fast)."""
        measured = sorted(mean(v) for k, v in self.durations.runs.items() if k not in REFERENCES and k != T5X and v)
        if len(measured) < 2:
            return self.durations.typical_candidate_s()
        if self.settings.metric == "size_bytes":
            return float(np.median(measured))
        return mean(measured[:len(measured) // 2])

    def _samples(self) -> dict[str, dict[str, list[float]]]:
        return gather(self.documents.values())

    def _ranked(self, names: Iterable[str]) -> list[str]:
        samples, metric = self._samples(), self.settings.metric
        values = {n: samples[n][metric] for n in names if n in samples and samples[n][metric]}
        return rank(values, {n: samples[n]["total_s"] for n in values})

    def _t5x_settled(self, finalists: Sequence[str]) -> bool:
        """Whether the leading finalist's difference from t5x_full is already significant."""
        samples, metric = self._samples(), self.settings.metric
        leader = self._ranked(finalists)[:1]
        if not leader or T5X not in samples or len(samples[T5X][metric]) < 2:
            return False
        comparison = analysis.compare(samples[T5X][metric], samples[leader[0]][metric],
                                      metric=compare_metric(metric), noise_pct=self.settings.noise_pct)
        return comparison["p_value"] is not None and comparison["p_value"] < ALPHA

    def _suite(self, stage: Mapping[str, Any]) -> config_mod.SuiteConfig:
        """The stage's suite, validated by config.from_dict like any other, then put in the stage's order."""
        members = stage["members"]
        entries = [test_entry(self.universe.tests[n]) for n in members if n not in REFERENCES]
        data = suite_data(self.settings, entries, self.out / stage["name"],
                          references=any(n in REFERENCES for n in members), seed=stage["seed"])
        suite = config_mod.from_dict(data, source=f"tune {stage['name']}")
        by_name = {t.name: t for t in suite.tests}
        return dataclasses.replace(suite, tests=tuple(by_name[n] for n in members if n in by_name))

    def _run_stage(self, stage: dict[str, Any]) -> str:
        """Run (or continue) a stage's suite; its status: complete, or budget when the guard stopped it."""
        from ckptbench.bench import suite as runner

        folder = self.out / stage["name"]
        suite = self._suite(stage)
        again = stage["started_s"] is not None and (folder / journal.JOURNAL_FILE).is_file()
        if stage["started_s"] is None:
            stage["started_s"] = self.elapsed()
        workspace.prepare_output_dir(folder)
        (folder / workspace.RUN_MARKER).touch()  # deletable by a later fresh tune in this folder
        left = (len([n for n in stage["members"] if n not in REFERENCES]) if stage["name"] == "rung-0"
                else len(self.state["finalists"]) if stage["kind"] == "final" else len(self.state["alive"]))
        self.emit("stage", {"name": stage["name"], "kind": stage["kind"], "n_tests": len(suite.tests),
                            "candidates_left": left, "time_left_s": self.budget_s - self.elapsed(),
                            "planned_s": stage["planned_s"], "resumed": again})
        started, runs_s, done = self.clock(), [0.0], [0]

        def on_phase(planned, phase: str) -> None:
            # No run starts that is not expected to end by the stage's deadline.
            if phase == "save" and not (fits(self.elapsed(), self.durations.of(planned.test), stage["deadline_s"])
                                        and (stage["name"] != "rung-0" or self._rung0_may_start(planned.test))):
                raise _Stop(BUDGET)
            self.emit("phase", {"stage": stage["name"], "test": planned.test, "phase": phase})

        def on_record(record) -> None:
            seconds = max(0.0, time.time() - record.started_at)
            runs_s[0] += seconds
            done[0] += 1
            if record.ok:
                self.durations.add(record.test, seconds)
            self._save_state()
            self.emit("run", {"stage": stage["name"], "record": record, "seconds": seconds, "done": done[0],
                              "total": len(suite.tests), "candidates_left": left,
                              "time_left_s": self.budget_s - self.elapsed()})

        status = COMPLETE
        try:
            outcome = runner.run(suite, resume=again, source=self.source, on_phase=on_phase, on_record=on_record)
        except _Stop as stop:
            outcome, status = stop.results, stop.why
        finally:
            self.durations.overheads.append(max(0.0, self.clock() - started - runs_s[0]))
        stage["ended_s"] = self.elapsed()
        self.documents[stage["name"]] = outcome.document
        return status

    def _conclude(self, state: dict[str, Any], status: str) -> dict[str, Any]:
        """The state after a stage: who stays (halving) or whether the final is decided, with reasons."""
        stage = state["stages"][-1]
        samples, metric = self._samples(), self.settings.metric
        ran = {t["name"]: t for t in self.documents[stage["name"]]["tests"]}
        stage["status"] = status
        stage["figures"] = {name: _figures(t) for name, t in ran.items() if t["runs"]}
        failed = {name: t["runs"][-1]["error"] for name, t in ran.items()
                  if name not in REFERENCES and t["runs"] and all(r["error"] is not None for r in t["runs"])}
        for name, error in failed.items():
            state["eliminated"][name] = {"stage": stage["name"], "reason": f"failed: {error}"}
        tiebreak = {n: samples[n]["total_s"] for n in samples}
        if stage["kind"] == "halving":
            if stage["name"] == "rung-0":
                measured = [n for n in stage["members"] if n not in REFERENCES and ran.get(n, {}).get("runs")]
                state["not_measured"] = [n for n in stage["members"] if n not in REFERENCES and n not in measured]
                alive = [n for n in measured if n not in failed]
            else:
                alive = [n for n in state["alive"] if n not in failed]
            values = {n: samples[n][metric] for n in alive if samples.get(n, {}).get(metric)}
            noisy = analysis.METRICS[compare_metric(metric)][3]  # sizes have no run-to-run noise
            noise = noise_model((v[metric] for v in samples.values()), noisy=noisy)
            halving = halve(values, noise, tiebreak=tiebreak, metric=metric)
            for name, why in halving.eliminated.items():
                state["eliminated"][name] = {"stage": stage["name"], **why}
            state["alive"] = halving.kept
            stage["decision"] = {"ranking": halving.ranking, "kept": halving.kept, "cut": halving.cut,
                                 "eliminated": sorted(halving.eliminated), "failed": sorted(failed),
                                 "noise": noise.to_json()}
            if stage["name"] == "rung-0":
                state["corrected"] = self._corrected(state, stage, measured)
                self.emit("corrected", dict(state["corrected"]))
        else:
            values = {n: samples[n][metric] for n in state["finalists"] if samples.get(n, {}).get(metric)}
            decided = separation(values, metric, self.settings.noise_pct, tiebreak)
            stage["decision"] = {"winner": decided["winner"], "runner_up": decided["runner_up"],
                                 "separated": decided["separated"],
                                 "p_value": (decided["comparison"] or {}).get("p_value")}
        self.emit("stage_end", {"name": stage["name"], "kind": stage["kind"], "status": status,
                                "decision": stage["decision"], "alive": len(state["alive"]),
                                "eliminated": len(stage["decision"].get("eliminated", [])),
                                "time_left_s": self.budget_s - self.elapsed()})
        return state

    def _corrected(self, state: Mapping[str, Any], stage: Mapping[str, Any], measured: list[str]) -> dict[str, Any]:
        """After rung 0: the estimate against what was measured, and what the rest of the budget now holds."""
        plan = state["plan"]
        run_s = [self.durations.of(n) for n in measured]
        # the rungs the rest of the budget holds at the measured durations, before the final
        survivor_s, references_s = self._survivor_run_s(), sum(self.durations.of(r) for r in self._references())
        left = self.budget_s - self.elapsed() - self.finish_reserve_s() - final_s(
            survivor_s, references_s, self.durations.overhead_s(), self.durations.of(T5X))
        next_rungs = []
        for size in halving_sizes(len(state["alive"])) if len(state["alive"]) > FINALISTS else []:
            left -= size * survivor_s + references_s + self.durations.overhead_s()
            if left < 0:
                break
            next_rungs.append(size)
        return {
            "planned": plan["n_candidates"], "listed": len(stage["members"]) - len(self._references()),
            "measured": len(measured),
            "run_s_estimated": plan["run_s"], "run_s_measured": mean(run_s) if run_s else None,
            "references_s_estimated": plan["references_s"],
            "references_s_measured": references_s,
            "rung0_s": (stage["ended_s"] or 0.0) - (stage["started_s"] or 0.0),
            "next_rungs": next_rungs,
            "time_left_s": self.budget_s - self.elapsed(),
        }

    # the end
    def _finish(self) -> Tuning:
        self.state["phase"] = "finishing"
        self._save_state()
        self.emit("finishing", {"time_left_s": self.budget_s - self.elapsed()})
        samples = self._samples()
        finalists = self.state["finalists"] or self._ranked(self.state["alive"])[:FINALISTS]
        recommendation = recommend(samples, finalists, self.settings.metric, self.settings.noise_pct)
        paste = None
        if recommendation is not None:
            recommendation["stopped_by"] = self.state["stopped_by"]
            recommendation["layout"] = describe_layout(self.universe.tests[recommendation["test"]])
            recommendation["settings"] = test_entry(self.universe.tests[recommendation["test"]])
            paste = self._tuned_checkpoint(self.universe.tests[recommendation["test"]])
        tuning = Tuning(build_document(self.state, self.documents, self.universe, self.settings, complete=True,
                                       recommendation=recommendation, paste=paste))
        tuning.plot_path = tuning.draw(self.out)
        tuning.document["budget"]["spent_s"] = self.elapsed()  # the figure's time counts too
        validate(tuning.document)
        tuning.path = documents.write_json(self.out / TUNING_FILE, tuning.document)
        self.state["phase"] = "done"
        self._save_state()
        return tuning

    def _tuned_checkpoint(self, test: TestSpec) -> dict[str, Any]:
        """Write the weights in the winning layout (untimed) where the runs were written, and read them back
        with nothing but the paste-ready spec and context, bit for bit: the printed JSON is known to work.
        Kept (in STORAGE/runs/tuned_checkpoint, OUTPUT_DIR by default) with keep_checkpoint."""
        from ckptbench.bench import storage, targets
        from ckptbench.bench.verify import mismatches

        target = targets.parse(self.settings.storage, self.out)
        target.discard(CHECKPOINT)  # one an earlier tune kept (only if it carries the run marker)
        location = target.new_run(CHECKPOINT)
        extra = target.context_spec()
        tensors = self.source.tensors
        example = max(tensors, key=lambda n: tensors[n].size)
        paste = paste_ready(test, self.settings.dtype, example, tensors[example].shape, location, extra)
        layout = storage.Layout.of(test, self.settings.dtype)
        try:
            storage.save(tensors, location, layout, self.base.max_inflight_bytes, layout.context(extra))
            bad = mismatches(tensors, read_back(paste, tensors))
            paste["verified"] = not bad
            paste["verify_error"] = f"{len(bad)} arrays differ, first {bad[0]}" if bad else None
        except Exception as exc:  # recorded, not raised: the measurements stand on their own
            paste["verified"], paste["verify_error"] = False, f"{type(exc).__name__}: {exc}".splitlines()[0]
        if self.settings.keep_checkpoint:
            paste["checkpoint"] = str(location.local_dir or location.base["path"])
        else:
            target.remove(location, settle=True)
            paste["checkpoint"] = None
            paste["spec"] = json.loads(json.dumps(paste["spec"]).replace(location.base["path"], PLACEHOLDER))
        target.finish()
        return paste

    def _write_partial(self) -> Tuning:
        """tuning.json of an interrupted tune: every stage and candidate so far, no recommendation."""
        document = build_document(self.state, self.documents, self.universe, self.settings, complete=False,
                                  recommendation=None, paste=None)
        validate(document)
        return Tuning(document, documents.write_json(self.out / TUNING_FILE, document))


def _figures(test: Mapping[str, Any]) -> dict[str, Any]:
    """One test's runs in one stage: the figures of each, or its error."""
    runs = [r for r in test["runs"] if not r["warmup"]]
    return {"runs": [{"save_s": r["save_s"], "load_s": r["load_s"], "size_bytes": r["size_bytes"],
                      "load_cache": r["load_cache"], "error": r["error"]} for r in runs]}


def build_document(state: Mapping[str, Any], documents: Mapping[str, Mapping[str, Any]], universe: Universe,
                   settings: Settings, *, complete: bool, recommendation: dict[str, Any] | None,
                   paste: dict[str, Any] | None) -> dict[str, Any]:
    """tuning.json: the answer first, then how it was found (every stage, every candidate, the budget)."""
    from ckptbench.bench.environment import tool_info

    samples = gather(documents.values())
    metric = settings.metric
    finalists = state.get("finalists") or []
    winner = (recommendation or {}).get("test")
    runner_up = ((recommendation or {}).get("runner_up") or {}).get("test")
    ran = {t["name"] for document in documents.values() for t in document["tests"] if t["runs"]}
    measured = [n for n in samples if n in ran and n not in REFERENCES and n in universe.tests]
    candidates_out = {}
    for name in measured:
        if name == winner:
            status = "winner"
        elif name == runner_up:
            status = "runner-up"
        elif name in finalists:
            status = "finalist"
        elif name in state["eliminated"]:
            status = "eliminated"
        elif name in state["alive"]:
            status = "survivor"
        else:
            status = "not a finalist"
        candidates_out[name] = {
            "settings": test_entry(universe.tests[name]), "layout": describe_layout(universe.tests[name]),
            "status": status, "eliminated": state["eliminated"].get(name),
            "stages": [s["name"] for s in state["stages"] if name in s["members"] and s["name"] in documents],
            "stats": {m: stats.summarize(samples[name][m]) for m in ("save_s", "load_s", "total_s", "size_bytes")},
        }
    points = {n: (c["stats"]["save_s"]["mean"], c["stats"]["load_s"]["mean"]) for n, c in candidates_out.items()
              if c["stats"]["save_s"]["n"]}
    references_out = {name: {"stats": summaries(samples[name])} for name in REFERENCES if name in samples}
    first = documents.get("rung-0") or next(iter(documents.values()), None)
    stages = [{key: stage.get(key) for key in ("name", "kind", "members", "seed", "status", "started_s", "ended_s",
                                                 "planned_s", "deadline_s", "decision", "figures")}
              | {"results": f"{stage['name']}/{results.RESULTS_FILE}"} for stage in state["stages"]]
    skipped_reasons: dict[str, int] = defaultdict(int)
    for _, reason in universe.skipped:
        skipped_reasons[reason] += 1
    document = {
        "schema_version": SCHEMA_VERSION,
        "tool": tool_info(),
        "complete": complete,
        "objective": settings.objective,
        "metric": metric,
        "seed": state["seed"],
        "recommendation": recommendation,
        "paste": paste,
        "stopped_by": state.get("stopped_by") if complete else "interrupted",
        "weights": state["weights"],
        "environment": (first or {}).get("environment"),
        "storage": ((first or {}).get("protocol") or {}).get("storage"),
        "budget": {"budget_s": state["budget_s"], "spent_s": state["spent_s"], "setup_s": state.get("setup_s"),
                   "estimate": state["plan"], "corrected": state.get("corrected"),
                   "durations": state["durations"]},
        "noise_model": {"kind": "pooled log-scale spread of repeated runs, with a prior",
                        "prior_log_sd": PRIOR_LOG_SD, "prior_df": PRIOR_DF,
                        "last": next((s["decision"]["noise"] for s in reversed(state["stages"])
                                      if s.get("decision") and s["decision"].get("noise")), None)},
        "space": {"path": state["space"]["path"], "data": state["space"]["data"],
                  "n_candidates": len(universe.tests), "n_skipped": len(universe.skipped),
                  "skipped_reasons": dict(skipped_reasons), "n_duplicates": len(universe.duplicates),
                  "sampled": state.get("rung0_order", []), "not_measured": state.get("not_measured", [])},
        "stages": stages,
        "finalists": finalists,
        "candidates": candidates_out,
        "references": references_out,
        "pareto": pareto(points),
    }
    return document
