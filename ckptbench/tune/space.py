"""The search space of `tune` (`sweeps/tune_space.json`): axes (any per-test field, one value or a list),
formats (fields fixed together) and `always` entries (t5x_full). Every combination is a candidate, expanded and
validated by `config.from_dict` as a sweep is (invalid ones skipped with its reasons); candidates that lay this
model out the same way are measured once. Rung 0 samples it, seeded, each axis' values spread evenly; every
shuffle is seeded by the tune's seed and the stage's name, so a resumed tune makes the same choices.
"""

from __future__ import annotations

import json
import random
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ckptbench.core.errors import UserError
from ckptbench.spec import config as config_mod
from ckptbench.spec.fields import LOAD_INTO, SWEEP_FIELDS, TEST_SCHEMA, TestSpec, layout_settings
from ckptbench.spec.schema import SCHEMA, Validator, describe_error
from ckptbench.spec.suite import SuiteConfig
from ckptbench.tune.settings import Settings

MAX_CANDIDATES = 100_000  # a space rung 0 samples from (a suite holds at most config.MAX_TESTS)
T5X = "t5x_full"  # the T5X default: an `always` candidate, measured in every rung and the first final

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,39}$"
_FIELDS = {f: TEST_SCHEMA["properties"][f] for f in SWEEP_FIELDS}
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
        "always": {"type": "array", "items": TEST_SCHEMA},
        # the peers' axes: per reference kind, the settings its rows are tried with (a config's `references`)
        "references": SCHEMA["properties"]["references"],
        # where every row's load puts what it reads, the candidates' and the peers' alike (testing.load_into)
        "load_into": {"enum": list(LOAD_INTO)},
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
    """The space against SPACE_SCHEMA (its values with the config's own schema pieces and words)."""
    from jsonschema.exceptions import best_match

    if not isinstance(data, dict):
        raise UserError(f"{source}: the top level must be a JSON object {{...}}, got {type(data).__name__}")
    error = best_match(Validator(SPACE_SCHEMA).iter_errors(data))
    if error is None:
        if any("load_into" in fields for fields in [data["axes"], *data["formats"].values(), *data.get("always", [])]):
            raise UserError(f"{source}: load_into is not an axis: every row of a tune, the peers too, loads into one "
                            "destination; give it once, as the space's top-level \"load_into\" (new or preallocated)")
        return
    where = ".".join(str(p) for p in error.absolute_path)
    if "propertyNames" in error.schema_path:
        text = (f"format name {error.instance!r} is not valid; use letters, digits, '_', '-', '.' or '=' "
                "(at most 40)")
    elif error.validator == "minProperties":
        text = "is empty; give at least one format, e.g. {\"zarr2\": {\"format\": \"zarr2\"}}"
    else:
        text = describe_error(error)
    raise UserError(f"{source}: {'field ' + where if where else 'top level'}: {text}")


@dataclass(frozen=True)
class Universe:
    """Every candidate of a space for one model, by name, in space order (always first)."""

    tests: dict[str, TestSpec]
    always: tuple[str, ...]
    axes: dict[str, dict[str, str]]  # candidate -> {axis: value}: what balanced sampling spreads
    skipped: tuple[tuple[str, str], ...]  # invalid combinations, with config's reasons
    duplicates: tuple[tuple[str, str], ...]  # (candidate, the candidate laying this model out the same way)


def for_tp(space: Mapping[str, Any], tp: int) -> dict[str, Any]:
    """The space of a tune of tensor-parallel loads: with tp > 1 the chunk strategies gain tp_aligned."""
    strategies = space.get("axes", {}).get("chunk_strategy")
    listed = strategies if isinstance(strategies, list) else [strategies]
    if tp <= 1 or strategies is None or "tp_aligned" in listed:
        return dict(space)
    return {**space, "axes": {**space["axes"], "chunk_strategy": [*listed, "tp_aligned"]}}


def candidates(space: Mapping[str, Any], settings: Settings, source: str = "space") -> SuiteConfig:
    """Every valid combination of the space, validated and expanded by `config.from_dict` (no I/O)."""
    space = for_tp(space, settings.tp)
    # the space as suite-config test entries: the `always` entries, then one sweep per format
    tests = [dict(entry) for entry in space.get("always", [])] + [
        {"name": key, **space["axes"], **{k: v for k, v in fixed.items() if k != "description"}}
        for key, fixed in space["formats"].items()]
    data = settings.suite_data(tests, settings.output_dir, references=False, seed=0)
    data.pop("baseline", None)  # a sweep's name, not a test's (a space without `always`): config takes its first test
    try:
        suite = config_mod.from_dict(data, source=source, max_tests=MAX_CANDIDATES)
    except UserError as exc:
        raise UserError(f"--space: {exc}") from None
    if settings.metric in ("load_s", "size_bytes") and any(t.save_mode == "async" for t in suite.tests):
        raise UserError(f"--objective {settings.objective}: the space has save_mode \"async\" candidates, and how a "
                        "save runs changes neither its load nor its size; use --objective save or balanced, or list "
                        "save_mode \"sync\" only in the space")
    return suite


def make_universe(space: Mapping[str, Any], suite: SuiteConfig, shapes: Iterable[Sequence[int]]) -> Universe:
    """The space's candidates (`suite`) for a model whose tensors have `shapes`, without those that would write
    the same files as another (measuring both would spend the budget twice on one answer)."""
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


def layout_key(test: TestSpec, dtype: str, shapes: Sequence[tuple[int, ...]]) -> tuple:
    """What a candidate writes for tensors of these shapes: the layout settings, the chunk settings only through
    the chunk and shard shapes they give."""
    from ckptbench.bench.storage import Layout

    layout = Layout.of(test, dtype)
    settings = tuple((key, json.dumps(value, sort_keys=True)) for key, value in layout_settings(test))
    if layout.chunk_strategy == "tp_aligned":  # its chunks depend on each tensor's name, not only its shape
        settings += (("tp_aligned", str(layout.tp)),)
    return (settings, tuple(tuple(layout.chunk_shape(s)) for s in shapes),
            tuple(tuple(layout.shard_shape(s) or ()) for s in shapes))


def sample(universe: Universe, n: int, seed: int) -> list[str]:
    """n candidates (not the `always` ones), seeded, chosen so that every prefix spreads each axis' values evenly
    (the least-seen values first): whatever prefix rung 0 measures is a balanced sample."""
    rng = random.Random(f"ckptbench-tune-sample-{seed}")
    pool = [n for n in universe.tests if n not in universe.always]
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


CANDIDATES_BEFORE_CEILING = 3  # rung 0 runs the device ceiling after this many candidates (policy.rung0_members)
DEFERRED_FACTOR = 2.0  # a candidate whose prior is more than this times the cheapest listed one's runs late


def rung0_order(universe: Universe, n_listed: int, seed: int, priors_s: Mapping[str, float] | None = None) -> list[str]:
    """Rung 0's sample in running order: the candidates expected to cost more than DEFERRED_FACTOR times the
    cheapest (`priors_s`: a slow codec, tiny chunks) after the others, so the budget measures many before one
    that may be hopeless (the first of a slow codec measured skips the rest: `policy.skip_reason`); the `always`
    ones after the first CANDIDATES_BEFORE_CEILING (and the device ceiling: `policy.rung0_members`)."""
    always = universe.always
    order = sample(universe, max(0, n_listed - len(always)), seed)
    priors_s = priors_s or {}
    cheapest_s = min((priors_s[n] for n in order if n in priors_s), default=0.0)
    cheap = [n for n in order if priors_s.get(n, 0.0) <= DEFERRED_FACTOR * cheapest_s]
    order = cheap + [n for n in order if n not in cheap]
    place = min(len(cheap), CANDIDATES_BEFORE_CEILING)
    for name in always:
        order.insert(place, name)
        place += 1
    return order


def stage_seed(seed: int, stage: str) -> int:
    """A stage's own seed, from the tune's seed and the stage's name."""
    return zlib.crc32(f"{seed}:{stage}".encode())


def shuffled(names: Sequence[str], seed: int, stage: str) -> list[str]:
    """The stage's tests in a seeded order, so no candidate always runs first (or last)."""
    out = list(names)
    random.Random(stage_seed(seed, stage)).shuffle(out)
    return out
