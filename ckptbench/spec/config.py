"""The suite configuration: phase4_config.json, validated before anything runs.

Structure is checked by a JSON Schema (so types, ranges and unknown keys are data,
not code); meaning (duplicate names, the baseline, compression options) is checked
after it. Every problem becomes one `UserError` line naming the test and the field.
Relative paths in a config file are resolved against the file's own folder.

`load` and `from_dict` return a finished suite: command-line overrides applied, sweeps
expanded, the storage target and process counts applied to the tests. There is no
later step for a caller to remember.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import jsonschema
from jsonschema.exceptions import best_match

from ckptbench.spec import chunking, compression
from ckptbench.sources import hub, weights
from ckptbench.core.errors import UserError
from ckptbench.core.records import ORDERS
from ckptbench.spec.settings import SWEEP_FIELDS
from ckptbench.core.units import MAX_SIZE_BYTES, SIZE_PATTERN, parse_size, size_label

DTYPES = ("float32", "bfloat16", "float16")
CACHE_EVICTION = ("auto", "drop_caches", "fadvise", "none")
DEFAULT_OUTPUT_DIR = "saved_models/phase4_tests"
MAX_CHUNK_ELEMENTS = 2**30  # 4 GiB of float32
MAX_CONCURRENCY = 4096
MAX_PROCESSES = 256

_POSITIVE_INT = {"type": "integer", "minimum": 1}
_RANGE_PCT = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
# A size is bytes as a whole number, or a string such as "64KB", "1MiB" or "t5x" (64 MiB).
_SIZE = {"anyOf": [{**_POSITIVE_INT, "maximum": MAX_SIZE_BYTES}, {"type": "string", "pattern": SIZE_PATTERN}]}
FORMATS = ("zarr2", "zarr3")
KVSTORES = ("file", "ocdbt", "memory")
# TensorStore's file_io_mode context resource (kvstore/file): how the file kvstore reads.
# "default" reads with pread through the page cache, "memmap" maps files (still the page
# cache), "direct" reads with O_DIRECT, around the page cache, where a chunk file's size
# is a multiple of 4096 bytes (elsewhere TensorStore quietly reads buffered).
FILE_IO_MODES = ("default", "memmap", "direct")
# How many tensors a save or load keeps in flight: "all" (every array's writes or reads issued
# together, bounded by max_inflight_bytes) or "one_tensor" (each tensor's open and write, or
# read, awaited before the next starts, as the original Phase 4 harness did).
IN_FLIGHT = ("all", "one_tensor")
REFERENCES = ("safetensors", "torch_save", "device_ceiling")


def _sweepable(schema: dict[str, Any]) -> dict[str, Any]:
    """A field that takes one value, or a list of values to sweep over."""
    return {"anyOf": [schema, {"type": "array", "minItems": 1, "items": schema}]}


TEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "concurrency_limit"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,99}$"},
        "description": {"type": "string"},
        "chunk_size_elements": _sweepable({**_POSITIVE_INT, "maximum": MAX_CHUNK_ELEMENTS}),
        "chunk_bytes": _sweepable(_SIZE),
        "chunk_strategy": _sweepable({"enum": list(chunking.STRATEGIES)}),
        "concurrency_limit": _sweepable({**_POSITIVE_INT, "maximum": MAX_CONCURRENCY}),
        "compression": {"anyOf": [{"type": ["string", "object", "null"]},
                                  {"type": "array", "minItems": 1, "items": {"type": ["string", "object", "null"]}}]},
        "format": _sweepable({"enum": list(FORMATS)}),
        "kvstore": _sweepable({"enum": list(KVSTORES)}),
        "shard_bytes": _sweepable(_SIZE),
        "data_copy_concurrency": _sweepable({"type": ["integer", "null"], "minimum": 1, "maximum": MAX_CONCURRENCY}),
        "file_io_sync": _sweepable({"type": "boolean"}),
        "file_io_mode": _sweepable({"enum": list(FILE_IO_MODES)}),
        "in_flight": _sweepable({"enum": list(IN_FLIGHT)}),
        "timed_conversion": _sweepable({"type": "boolean"}),
        "cache_eviction": _sweepable({"enum": list(CACHE_EVICTION)}),
        "warm_load": {"type": "boolean"},
        "values": _sweepable({"enum": list(weights.VALUES)}),
        "block": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,99}$"},
        "expected": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"save_pct": _RANGE_PCT, "load_pct": _RANGE_PCT, "size_pct": _RANGE_PCT},
        },
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["test_configurations"],
    "properties": {
        "description": {"type": "string"},
        "model": {"enum": sorted(weights.PRESETS)},
        "weights": {"type": ["string", "null"]},
        "dtype": {"enum": list(DTYPES)},
        "values": {"enum": list(weights.VALUES)},
        "output_dir": {"type": "string", "minLength": 1},
        "baseline": {"type": "string"},
        "storage": {"type": ["string", "null"]},
        "storage_options": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"endpoint": {"type": "string"}, "region": {"type": "string"},
                           "max_retries": {"type": "integer", "minimum": 0, "maximum": 100}},
        },
        "processes": _sweepable({"type": "integer", "minimum": 1, "maximum": MAX_PROCESSES}),
        "references": {
            "type": "object",
            "additionalProperties": False,
            "properties": {name: {"type": "boolean"} for name in REFERENCES},
        },
        "testing": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "num_runs": {**_POSITIVE_INT, "maximum": 1000},
                "warmup_rounds": {"type": "integer", "minimum": 0, "maximum": 100},
                "seed": {"type": ["integer", "null"], "minimum": 0},
                "cache_eviction": {"enum": list(CACHE_EVICTION)},
                "order": {"enum": list(ORDERS)},
                "max_inflight_bytes": {**_POSITIVE_INT, "minimum": 2**20},
                "noise_pct": {"type": "number", "minimum": 0, "maximum": 100},
            },
        },
        "test_configurations": {"type": "array", "minItems": 1, "items": TEST_SCHEMA},
    },
}


@dataclass(frozen=True)
class TestSpec:
    """One configuration to measure: a TensorStore layout, or a reference row (`backend`)."""

    name: str
    concurrency_limit: int | None = None
    chunk_size_elements: int | None = None
    chunk_bytes: int | None = None
    chunk_strategy: str = "halve"
    compression: dict[str, Any] | None = None
    format: str = "zarr2"
    kvstore: str = "file"
    shard_bytes: int | None = None
    data_copy_concurrency: int | None = None  # None: TensorStore's default (one per core)
    file_io_sync: bool = True
    file_io_mode: str = "default"
    in_flight: str = "all"  # see IN_FLIGHT
    # The original's conversions inside the timers: saves start from float16 copies of the
    # weights and cast each to float32 (torch .float()) before writing it; loads copy each array
    # read and cast it to float16 (np.copy, torch.from_numpy, .half()).
    timed_conversion: bool = False
    cache_eviction: str | None = None  # None: the suite's testing.cache_eviction
    # Also time a load right after the save, from the page cache, before the eviction and the
    # timed (cold) load: one save gives both figures (warm_load_s), as `explain` uses them.
    warm_load: bool = False
    values: str | None = None  # None: the suite's values (preset weights only)
    block: str | None = None  # tests sharing a block run back to back (AAABBB) at a seeded place in the rounds
    description: str = ""
    expected: dict[str, list[float]] | None = None
    processes: int = 1  # worker processes that save and load the checkpoint together
    backend: str = "tensorstore"  # or a reference: safetensors, torch_save, device_ceiling
    sweep: dict[str, Any] | None = None  # the swept settings of a sweep point, by field

    def chunk_budget_elements(self, itemsize: int) -> int:
        """Elements per chunk: given directly, or the byte budget divided by the item size."""
        if self.chunk_size_elements is not None:
            return self.chunk_size_elements
        if self.chunk_bytes is None:
            raise ValueError(f"{self.name} has no chunk size")
        return max(1, self.chunk_bytes // itemsize)

    @property
    def durable(self) -> bool:
        """Whether a save's time includes making the data durable (fsync'd to a disk or a server's store)."""
        return self.file_io_sync and self.kvstore != "memory"

    @property
    def is_reference(self) -> bool:
        return self.backend != "tensorstore"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    model: str = weights.DEFAULT_PRESET
    weights: str | None = None  # a local checkpoint folder (absolute) or a Hugging Face id "org/name[@rev]"
    dtype: str = "float32"
    values: str = "random"  # how preset weights are drawn; see weights.VALUES
    num_runs: int = 3
    warmup_rounds: int = 0
    seed: int | None = None
    cache_eviction: str = "auto"
    order: str = "interleaved"
    max_inflight_bytes: int = 512 * 2**20  # TensorStore's write copies what is in flight: this bounds the copy
    noise_pct: float = 5.0
    config_path: Path | None = field(default=None, compare=False)

    def test(self, name: str) -> TestSpec:
        return next(t for t in self.tests if t.name == name)

    def values_for(self, test: TestSpec) -> str:
        """How the test's weights are drawn: its own `values`, else the suite's."""
        return test.values or self.values

    def eviction_for(self, test: TestSpec) -> str:
        """How the test's loads are made cold: its own `cache_eviction`, else the suite's."""
        return test.cache_eviction or self.cache_eviction

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


# Command-line overrides `from_dict` and `load` accept (None or absent: not given).
OVERRIDES = ("output_dir", "num_runs", "model", "weights", "dtype", "values", "tests", "seed", "storage",
             "processes", "order", "cache_eviction")


def load(path: Path | str, **overrides: Any) -> SuiteConfig:
    """Read and validate a config file, apply overrides (see OVERRIDES) and finish the suite."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such config file; pass --config PATH or create it (see PHASE4_GUIDE.md)")
    if not path.is_file():
        raise UserError(f"{path}: is not a file; --config takes a JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc}); check its permissions and encoding") from None
    try:
        data = json.loads(text)  # NaN and Infinity parse, and the schema then rejects them by field
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    return from_dict(data, base_dir=path.resolve().parent, source=str(path), config_path=path.resolve(), **overrides)


def from_dict(data: Any, base_dir: Path | None = None, source: str = "config", config_path: Path | None = None,
              **overrides: Any) -> SuiteConfig:
    """Validate a parsed config, apply overrides (see OVERRIDES) and finish the suite."""
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise TypeError(f"unknown override {unknown[0]!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    _validate_structure(data, source)
    base_dir = base_dir or Path.cwd()
    for key in ("output_dir", "weights", "storage"):
        if isinstance(data.get(key), str) and "\0" in data[key]:
            raise UserError(f"{source}: field {key}: contains a NUL character; give a plain path")
    tests: list[TestSpec] = []
    skipped: list[tuple[str, str]] = []
    for raw in data["test_configurations"]:
        points = expand_sweep(raw)
        invalid: list[tuple[str, str]] = []
        for point in points:
            try:
                tests.append(_test_from_dict(point, source))
            except UserError as exc:
                if len(points) == 1:
                    raise
                invalid.append((point["name"], str(exc).split(": ", 2)[-1]))
        if invalid and len(invalid) == len(points):
            raise UserError(f"{source}: test {raw['name']!r}: no combination of the sweep is valid; "
                            f"first: {invalid[0][0]}: {invalid[0][1]}")
        skipped += invalid
    references = data.get("references", {})
    for ref in REFERENCES:
        if references.get(ref, False):
            tests.append(TestSpec(name=ref, backend=ref, description=_REFERENCE_DESCRIPTIONS[ref]))
    names = [t.name for t in tests]
    for i, name in enumerate(names):
        if name in names[:i]:
            why = " (a reference row has that name; rename the test)" if name in REFERENCES else ""
            raise UserError(f"{source}: test_configurations: duplicate test name {name!r}{why}; give each test a unique name")
    baseline = data.get("baseline", names[0])
    if baseline not in names:
        raise UserError(f"{source}: baseline: no test named {baseline!r}{_suggest(baseline, names)}")
    testing = data.get("testing", {})
    defaults = SuiteConfig(tests=(), baseline="", output_dir=Path())
    suite = SuiteConfig(
        tests=tuple(tests),
        baseline=baseline,
        skipped=tuple(skipped),
        output_dir=(base_dir / data.get("output_dir", DEFAULT_OUTPUT_DIR)).resolve(),
        model=data.get("model", defaults.model),
        weights=weights_source(data.get("weights"), base_dir),
        dtype=data.get("dtype", defaults.dtype),
        values=data.get("values", defaults.values),
        num_runs=testing.get("num_runs", defaults.num_runs),
        warmup_rounds=testing.get("warmup_rounds", defaults.warmup_rounds),
        seed=testing.get("seed", defaults.seed),
        cache_eviction=testing.get("cache_eviction", defaults.cache_eviction),
        order=testing.get("order", defaults.order),
        max_inflight_bytes=testing.get("max_inflight_bytes", defaults.max_inflight_bytes),
        noise_pct=float(testing.get("noise_pct", defaults.noise_pct)),
        storage=data.get("storage"),
        storage_options=data.get("storage_options", {}),
        processes=tuple(_as_list(data.get("processes", 1))),
        config_path=config_path,
    )
    return _finish(_apply_overrides(suite, overrides))


def weights_source(value: str | None, base_dir: Path) -> str | None:
    """A local folder as an absolute path, or a Hugging Face id as written (a folder that exists wins)."""
    if value is None:
        return None
    local = (base_dir / value).expanduser()
    if not local.exists() and hub.looks_like_hub_id(value):
        return value
    return str(local.resolve())


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _apply_overrides(config: SuiteConfig, overrides: Mapping[str, Any]) -> SuiteConfig:
    """Command-line settings over the file's; `tests` selects a subset by name."""
    changes = {k: v for k, v in overrides.items() if k != "tests"}
    _check_override_choices(changes)
    if "weights" in changes:
        changes["weights"] = weights_source(str(changes["weights"]), Path.cwd())
    if "output_dir" in changes:
        changes["output_dir"] = Path(changes["output_dir"]).resolve()
    if "processes" in changes:
        changes["processes"] = tuple(_as_list(changes["processes"]))
    selected = overrides.get("tests")
    if selected is not None:
        if not selected:
            raise UserError("--tests: no test names given; use --tests NAME[,NAME...]")
        names = [t.name for t in config.tests]
        for name in selected:
            if name not in names:
                raise UserError(f"--tests: no test named {name!r}{_suggest(name, names)}")
        tests = tuple(t for t in config.tests if t.name in selected)
        changes["tests"] = tests
        if config.baseline not in selected:
            changes["baseline"] = tests[0].name
    return dataclasses.replace(config, **changes)


_CHOICES = {"model": tuple(weights.PRESETS), "dtype": DTYPES, "values": weights.VALUES, "order": ORDERS,
            "cache_eviction": CACHE_EVICTION}


def _check_override_choices(changes: Mapping[str, Any]) -> None:
    for key, choices in _CHOICES.items():
        if key in changes and changes[key] not in choices:
            flag = "--" + key.replace("_", "-")
            hint = "; run --list-models to see the presets" if key == "model" else f"; use one of {', '.join(choices)}"
            raise UserError(f"{flag}: unknown {key.replace('_', ' ')} {changes[key]!r}{hint}")
    if "num_runs" in changes and (not isinstance(changes["num_runs"], int) or changes["num_runs"] < 1):
        raise UserError(f"--runs: must be a whole number of at least 1, got {changes['num_runs']!r}")
    if "processes" in changes:
        counts = _as_list(changes["processes"])
        if not counts or any(not isinstance(n, int) or not 1 <= n <= MAX_PROCESSES for n in counts):
            raise UserError(f"--processes: {changes['processes']!r} is not a list of process counts from 1 to "
                            f"{MAX_PROCESSES}; use e.g. 4 or 1,2,4")


def with_processes(config: SuiteConfig, count: int) -> SuiteConfig:
    """A finished suite of one process count with every TensorStore test run by `count` processes instead
    (the ranks of a launch)."""
    return _finish(dataclasses.replace(config, processes=(count,)))


def _finish(config: SuiteConfig) -> SuiteConfig:
    """Apply the suite-wide settings to the tests: the storage target and the process counts.

    - memory:// puts every TensorStore test on the memory kvstore.
    - Reference rows write local files: with memory:// or a remote store they are skipped.
    - Several process counts multiply the TensorStore tests (`name_procs=N`); the memory
      kvstore cannot be shared between processes, so such points are skipped.
    """
    storage = (config.storage or "").split("://", 1)[0] if "://" in (config.storage or "") else "local"
    tests: list[TestSpec] = []
    skipped = list(config.skipped)
    counts = sorted(set(config.processes))
    for test in config.tests:
        _check_conditions(test, config)
        if test.is_reference:
            if storage == "local":
                tests.append(test)
            else:
                skipped.append((test.name, f"reference rows write local files; not run with --storage {config.storage}"))
            continue
        if storage == "memory":
            test = dataclasses.replace(test, kvstore="memory")
        if test.warm_load and (storage not in ("local", "file") or test.kvstore == "memory"):
            where = "the memory kvstore" if test.kvstore == "memory" or storage == "memory" else config.storage
            raise UserError(f"test {test.name!r}: warm_load times a read from the page cache, and {where} has none; "
                            "drop warm_load")
        for count in counts:
            name = test.name if len(counts) == 1 else f"{test.name}_procs={count}"
            if count > 1 and test.kvstore == "memory":
                skipped.append((name, "the memory kvstore lives in one process; it cannot be shared by several"))
                continue
            if count > 1 and (test.in_flight != "all" or test.timed_conversion):
                skipped.append((name, "in_flight \"one_tensor\" and timed_conversion reproduce the original's single "
                                      "process; worker processes do neither"))
                continue
            sweep = test.sweep if len(counts) == 1 else {**(test.sweep or {}), "processes": count}
            tests.append(dataclasses.replace(test, name=name, processes=count, sweep=sweep))
    if config.weights is not None:
        config = dataclasses.replace(config, values="checkpoint")  # a checkpoint brings its own values
    if not tests:
        raise UserError("no test can run with these settings; see the skipped tests: "
                        + "; ".join(f"{n}: {r}" for n, r in skipped[:3]))
    names = [t.name for t in tests]
    baseline = config.baseline
    if baseline not in names:
        baseline = next((n for n in names if n.startswith(f"{baseline}_procs=")), names[0])
    return dataclasses.replace(config, tests=tuple(tests), skipped=tuple(skipped), baseline=baseline)


def _check_conditions(test: TestSpec, config: SuiteConfig) -> None:
    """Per-test settings that depend on the suite's weights (known only after the overrides)."""
    where = f"test {test.name!r}"
    if test.values is not None and config.weights is not None:
        raise UserError(f"{where}: field values applies to preset weights; a checkpoint (weights) brings its own "
                        "values; drop the test's values")
    if test.warm_load and config.eviction_for(test) == "none":
        raise UserError(f"{where}: warm_load adds a load from the page cache before the eviction, and the test's "
                        "cache_eviction is \"none\", so its loads are warm already; drop warm_load")
    if test.timed_conversion:
        if config.dtype != "float32":
            raise UserError(f"{where}: timed_conversion casts float16 weights to float32 inside the save timer, as the "
                            f"original did; it needs dtype \"float32\", got {config.dtype!r}")
        values = config.values_for(test)
        if config.weights is None and values != "float16":
            raise UserError(f"{where}: timed_conversion starts from float16 copies of the weights, which must hold "
                            f"them exactly; set values \"float16\" (got {values!r})")


_REFERENCE_DESCRIPTIONS = {
    "safetensors": "reference: safetensors save_file + fsync, load_file with every tensor copied out of the map",
    "torch_save": "reference: torch.save + fsync, torch.load",
    "device_ceiling": "reference: the same bytes written and read cold in raw files, over a grid of access "
                      "patterns; the fastest pattern of each run is the ceiling",
}


def expand_sweep(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A test whose settings hold lists becomes one test per combination (the cross product)."""
    swept = [f for f in SWEEP_FIELDS if isinstance(raw.get(f), list)]
    if not swept:
        return [dict(raw)]
    points = []
    for values in itertools.product(*(raw[f] for f in swept)):
        point = {**raw, **dict(zip(swept, values))}
        point["name"] = raw["name"] + "".join(f"_{SWEEP_FIELDS[f]}={_value_label(f, v)}" for f, v in zip(swept, values))
        point["_sweep"] = dict(zip(swept, values))
        points.append(point)
    return points


def _value_label(field_name: str, value: Any) -> str:
    if field_name in ("chunk_bytes", "shard_bytes"):
        return size_label(parse_size(value, field_name))
    if field_name == "compression":
        try:
            return compression.label(compression.normalize(value))
        except UserError:
            return str(value.get("id") if isinstance(value, dict) else value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return "default" if value is None else str(value)


def _test_from_dict(raw: Mapping[str, Any], source: str) -> TestSpec:
    where = f"{source}: test {raw['name']!r}"
    has_elements, has_bytes = "chunk_size_elements" in raw, "chunk_bytes" in raw
    if has_elements == has_bytes:
        which = "both" if has_elements else "neither"
        raise UserError(f"{where}: has {which} of chunk_size_elements and chunk_bytes; give exactly one")
    chunk_bytes = parse_size(raw["chunk_bytes"], f"{where} field chunk_bytes") if has_bytes else None
    shard_bytes = parse_size(raw["shard_bytes"], f"{where} field shard_bytes") if "shard_bytes" in raw else None
    fmt = raw.get("format", "zarr2")
    codec = compression.normalize(raw.get("compression"), f"{where} field compression")
    if fmt == "zarr3":
        compression.zarr3_codecs(codec, itemsize=4, where=f"{where} field compression")
    if shard_bytes is not None:
        if fmt != "zarr3":
            raise UserError(f"{where}: shard_bytes needs format \"zarr3\" (sharding_indexed); set format or drop shard_bytes")
        if chunk_bytes is not None and shard_bytes < chunk_bytes:
            raise UserError(f"{where}: shard_bytes ({shard_bytes}) is smaller than chunk_bytes ({chunk_bytes}); "
                            "a shard holds whole inner chunks")
    io_mode = raw.get("file_io_mode", "default")
    if io_mode != "default" and raw.get("kvstore", "file") == "memory":
        raise UserError(f"{where}: file_io_mode {io_mode!r} applies to files; the memory kvstore has none")
    if io_mode == "direct" and codec is not None:
        raise UserError(f"{where}: file_io_mode \"direct\" reads with O_DIRECT only chunk files whose size is a "
                        "multiple of 4096 bytes, and compressed chunks are not; use compression \"none\"")
    return TestSpec(
        name=raw["name"],
        description=raw.get("description", ""),
        chunk_size_elements=raw.get("chunk_size_elements"),
        chunk_bytes=chunk_bytes,
        chunk_strategy=raw.get("chunk_strategy", "halve"),
        concurrency_limit=raw["concurrency_limit"],
        compression=codec,
        format=fmt,
        kvstore=raw.get("kvstore", "file"),
        shard_bytes=shard_bytes,
        data_copy_concurrency=raw.get("data_copy_concurrency"),
        file_io_sync=raw.get("file_io_sync", True),
        file_io_mode=io_mode,
        in_flight=raw.get("in_flight", "all"),
        timed_conversion=raw.get("timed_conversion", False),
        cache_eviction=raw.get("cache_eviction"),
        warm_load=raw.get("warm_load", False),
        values=raw.get("values"),
        block=raw.get("block"),
        expected=raw.get("expected"),
        sweep=raw.get("_sweep"),
    )


def _is_integer(_checker: Any, value: Any) -> bool:
    # JSON Schema counts 2.0 as an integer; a count or a size must be written as a whole number.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(_checker: Any, value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_integer, "number": _is_number}),
)


def _validate_structure(data: Any, source: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{source}: the top level must be a JSON object {{...}}, got {type(data).__name__}")
    error = best_match(Validator(SCHEMA).iter_errors(data))
    if error is not None:
        raise UserError(f"{source}: {_where(data, list(error.absolute_path))}: {describe_error(error)}")


def _where(data: Mapping[str, Any], path: Sequence[Any]) -> str:
    """'test "chunks_1mb" field concurrency_limit' style location of a schema error."""
    if len(path) >= 2 and path[0] == "test_configurations":
        test = data["test_configurations"][path[1]]
        name = test.get("name") if isinstance(test, dict) else None
        who = f"test {name!r}" if isinstance(name, str) else f"test_configurations[{path[1]}]"
        rest = ".".join(str(p) for p in path[2:])
        return f"{who} field {rest}" if rest else who
    return "field " + ".".join(str(p) for p in path) if path else "top level"


_JSON_TYPES = {"integer": "a whole number", "number": "a number", "string": "a string", "object": "an object",
               "array": "a list", "null": "null", "boolean": "true or false"}


# Messages for schema errors whose wording depends only on the limit and the value shown.
_SIMPLE_MESSAGES = {
    "minimum": "must be at least {limit}, got {shown}",
    "maximum": "must be at most {limit}, got {shown}; that is beyond any sensible setting",
    "minLength": "must not be empty",
}


def describe_error(error: jsonschema.ValidationError) -> str:
    value, kind = error.instance, error.validator
    shown = json.dumps(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if kind in _SIMPLE_MESSAGES:
        return _SIMPLE_MESSAGES[kind].format(limit=error.validator_value, shown=shown)
    if kind == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        unknown = sorted(set(value) - set(allowed))[0]
        return f"unknown key {unknown!r}{_suggest(unknown, allowed)}"
    if kind == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"expected {' or '.join(_JSON_TYPES[t] for t in types)}, got {shown}"
    if kind == "enum":
        return f"{shown} is not allowed; use one of {', '.join(json.dumps(v) for v in error.validator_value)}"
    if kind == "required":
        return f"missing required field {error.message.split(chr(39))[1]!r}"
    if kind in ("minItems", "maxItems"):
        if not value:
            return "is empty; list at least one test" if list(error.absolute_path) == ["test_configurations"] \
                else "is empty; list at least one value"
        return f"expected a [low, high] pair of numbers, got {json.dumps(value)}"
    if kind == "pattern":
        if error.absolute_path and error.absolute_path[-1] == "name":
            return f"{shown} is not a valid test name; use letters, digits, '_', '-', '.' or '=' (at most 100)"
        return f"{shown} is not a size; use a number of bytes or a string like \"64KB\", \"1MB\" or \"t5x\""
    if kind == "anyOf":
        return f"expected {_expected(error.validator_value[0])} (or a list of them, to sweep), got {shown}"
    return error.message


def _expected(schema: Mapping[str, Any]) -> str:
    """What a (sub)schema accepts, in words."""
    if "anyOf" in schema:
        return " or ".join(_expected(branch) for branch in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    types = schema.get("type", [])
    words = " or ".join(_JSON_TYPES[t] for t in (types if isinstance(types, list) else [types]))
    if schema.get("pattern"):
        words += " like \"64KB\""
    if "minimum" in schema and "maximum" in schema:
        words += f" from {schema['minimum']} to {schema['maximum']}"
    return words


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(choices)}"
