"""The suite configuration: phase4_config.json, validated before anything runs.

Structure is checked by the JSON Schema (spec.schema); meaning (duplicate names, the baseline, settings that contradict
each other) is checked after it. Every problem becomes one `UserError` line naming the test and the field. Relative
paths in a config file are resolved against the file's own folder.

`load` and `from_dict` return a finished suite: command-line overrides applied, sweeps expanded, the storage target and
process counts applied to the tests. There is no later step for a caller to remember.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ckptbench.core.errors import UserError
from ckptbench.core.records import ORDERS
from ckptbench.spec import compression, tensor_parallel
from ckptbench.spec.fields import CACHE_EVICTION, LOAD_INTO, TestSpec, read_test
from ckptbench.spec.hub_id import looks_like_hub_id
from ckptbench.spec.presets import PRESETS, VALUES
from ckptbench.spec.references import REFERENCES, SAVE_MODE, rows_of, unavailable
from ckptbench.spec.schema import suggest, validate_structure
from ckptbench.spec.suite import DEFAULT_OUTPUT_DIR, DTYPES, MAX_PROCESSES, SuiteConfig
from ckptbench.spec.sweep import count_points, iter_sweep, swept_fields

MAX_TESTS = 10_000  # more tests than this is a search, not a suite: `tune` samples such spaces
# Command-line overrides `from_dict` and `load` accept (None or absent: not given).
OVERRIDES = ("output_dir", "num_runs", "model", "weights", "dtype", "values", "tests", "seed", "storage",
             "processes", "tp", "order", "cache_eviction", "confirm_rounds", "load_into")
# The file's settings that are SuiteConfig's fields of the same name: its top-level ones, and those of `testing`
# (each with the type its field holds where JSON gives another: 5 for 5.0, a list for a tuple)
_TOP_LEVEL = ("model", "dtype", "values", "storage", "storage_options")
_TESTING_TYPES: dict[str, Callable[[Any], Any]] = {"noise_pct": float, "confirm_pause_s": float,
                                                   "confirm_objectives": tuple}


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
              max_tests: int = MAX_TESTS, **overrides: Any) -> SuiteConfig:
    """Validate a parsed config, apply overrides (see OVERRIDES) and finish the suite. A suite of more than
    `max_tests` tests is refused before any is made (tune, which measures a sample, allows more)."""
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise TypeError(f"unknown override {unknown[0]!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    validate_structure(data, source)
    base_dir = base_dir or Path.cwd()
    for key in ("output_dir", "weights", "storage"):
        if isinstance(data.get(key), str) and "\0" in data[key]:
            raise UserError(f"{source}: field {key}: contains a NUL character; give a plain path")
    _check_plan_size(data, overrides, source, max_tests)
    tests: list[TestSpec] = []
    skipped: list[tuple[str, str]] = []
    for raw in data["test_configurations"]:
        n_points, invalid = count_points(raw), []
        for point in iter_sweep(raw):
            try:
                tests.append(_read_test(point, source))
            except UserError as exc:
                if n_points == 1:
                    raise
                invalid.append((point["name"], str(exc).split(": ", 2)[-1]))
        if invalid and len(invalid) == n_points:
            raise UserError(f"{source}: test {raw['name']!r}: no combination of the sweep is valid; "
                            f"first: {invalid[0][0]}: {invalid[0][1]}")
        skipped += invalid
    references = data.get("references", {})
    for kind, reference in REFERENCES.items():
        for name, settings in rows_of(kind, references.get(kind, False)):
            mode = settings.pop(SAVE_MODE, "sync")  # async saves: a TestSpec field, not a back-end setting
            tests.append(TestSpec(name=name, backend=kind, description=reference.description,
                                  reference_settings=settings or None, save_mode=mode))
    names = [t.name for t in tests]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            why = " (a reference row has that name; rename the test)" if name in REFERENCES else ""
            raise UserError(f"{source}: test_configurations: duplicate test name {name!r}{why}; give each test a "
                            "unique name")
        seen.add(name)
    baseline = data.get("baseline", names[0])
    if baseline not in names:
        raise UserError(f"{source}: baseline: no test named {baseline!r}{suggest(baseline, names)}")
    testing = {key: _TESTING_TYPES[key](value) if key in _TESTING_TYPES else value
               for key, value in data.get("testing", {}).items()}
    suite = SuiteConfig(tests=tuple(tests), baseline=baseline, skipped=tuple(skipped),
                        output_dir=(base_dir / data.get("output_dir", DEFAULT_OUTPUT_DIR)).resolve(),
                        weights=weights_source(data.get("weights"), base_dir),
                        processes=tuple(_as_list(data.get("processes", 1))),
                        tp=tuple(_as_list(data["tp"])) if "tp" in data else None, config_path=config_path,
                        **{key: data[key] for key in _TOP_LEVEL if key in data}, **testing)
    return _finish(_apply_overrides(suite, overrides))


def _check_plan_size(data: Mapping[str, Any], overrides: Mapping[str, Any], source: str, max_tests: int) -> None:
    """Refuse, in one line and before expanding anything, a suite of more tests than anyone can mean to run."""
    counts = [count_points(raw) for raw in data["test_configurations"]]
    processes = len(_as_list(overrides.get("processes", data.get("processes", 1))))
    processes *= len(_as_list(overrides.get("tp", data.get("tp", 1))))
    total = sum(counts) * processes
    if total <= max_tests:
        return
    largest = max(range(len(counts)), key=counts.__getitem__)
    raw = data["test_configurations"][largest]
    axes = " x ".join(f"{len(raw[f])} {f}" for f in swept_fields(raw))
    raise UserError(f"{source}: test {raw['name']!r}: the sweep expands to {counts[largest]:,} tests ({axes})"
                    + (f", x {processes} process counts" if processes > 1 else "")
                    + f", {total:,} in all; a suite holds at most {max_tests:,}: sweep fewer values, or let `tune` "
                    "search the space")


def weights_source(value: str | None, base_dir: Path) -> str | None:
    """A local folder as an absolute path, or a Hugging Face id as written (a folder that exists wins)."""
    if value is None:
        return None
    local = (base_dir / value).expanduser()
    if not local.exists() and looks_like_hub_id(value):
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
    for key in ("processes", "tp"):
        if key in changes:
            changes[key] = tuple(_as_list(changes[key]))
    selected = overrides.get("tests")
    if selected is not None:
        if not selected:
            raise UserError("--tests: no test names given; use --tests NAME[,NAME...]")
        names = [t.name for t in config.tests]
        for name in selected:
            if name not in names:
                raise UserError(f"--tests: no test named {name!r}{suggest(name, names)}")
        changes["tests"] = tests = tuple(t for t in config.tests if t.name in selected)
        if config.baseline not in selected:
            changes["baseline"] = tests[0].name
    return dataclasses.replace(config, **changes)


_CHOICES = {"model": tuple(PRESETS), "dtype": DTYPES, "values": VALUES, "order": ORDERS,
            "cache_eviction": CACHE_EVICTION, "load_into": LOAD_INTO}


def _check_override_choices(changes: Mapping[str, Any]) -> None:
    for key, choices in _CHOICES.items():
        if key in changes and changes[key] not in choices:
            flag = "--" + key.replace("_", "-")
            hint = "; run --list-models to see the presets" if key == "model" else f"; use one of {', '.join(choices)}"
            raise UserError(f"{flag}: unknown {key.replace('_', ' ')} {changes[key]!r}{hint}")
    if "num_runs" in changes and (not isinstance(changes["num_runs"], int) or changes["num_runs"] < 1):
        raise UserError(f"--runs: must be a whole number of at least 1, got {changes['num_runs']!r}")
    if "confirm_rounds" in changes:
        rounds = changes["confirm_rounds"]
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
            raise UserError(f"--confirm-rounds: must be a whole number (0: off), got {rounds!r}")
    if "processes" in changes:
        counts = _as_list(changes["processes"])
        if not counts or any(not isinstance(n, int) or not 1 <= n <= MAX_PROCESSES for n in counts):
            raise UserError(f"--processes: {changes['processes']!r} is not a list of process counts from 1 to "
                            f"{MAX_PROCESSES}; use e.g. 4 or 1,2,4")
    if "tp" in changes:
        for tp in _as_list(changes["tp"]):
            why = tensor_parallel.refusal(tp, None, {}, flag="--tp")  # the count; the model is checked in _finish
            if why is None and tp > MAX_PROCESSES:
                why = f"--tp {tp}: at most {MAX_PROCESSES} tensor-parallel readers"
            if why is not None:
                raise UserError(why)


def with_processes(config: SuiteConfig, count: int) -> SuiteConfig:
    """A finished suite whose TensorStore tests are each run by `count` processes (the ranks of a launch)."""
    return _finish(dataclasses.replace(config, processes=(count,)))


def _finish(config: SuiteConfig) -> SuiteConfig:
    """Apply the suite-wide settings to the tests: the storage target, tp and the process counts (`name_procs=N`);
    a point that cannot run here (a reference row whose library does not import, say) is skipped with its reason, so
    the suite goes on without it."""
    if config.confirm_rounds in (1, 2):  # after the overrides: the flag's value is checked here too
        raise UserError(f"testing.confirm_rounds: {config.confirm_rounds} rounds give a block no interval to judge it "
                        "by; use 0 (off) or 3 or more")
    storage = (config.storage or "").split("://", 1)[0] if "://" in (config.storage or "") else "local"
    tests: list[TestSpec] = []
    skipped = list(config.skipped)
    counts = sorted(set(config.processes))
    for test in _with_tp(config):
        _check_conditions(test, config)
        if test.tp > 1:
            why = _tp_refusal(test, config, counts)
            if why is not None:
                skipped.append((test.name, why))
                continue
        if test.is_reference:
            if storage != "local":
                skipped.append((test.name, "reference rows write local files; not run with --storage "
                                           f"{config.storage}"))
            elif (why := unavailable(test.backend)) is not None:
                skipped.append((test.name, why))
            else:  # tp > 1: its readers are processes
                tests.append(destined(dataclasses.replace(test, processes=test.tp), config))
            continue
        if storage == "memory":
            test = dataclasses.replace(test, kvstore="memory")
        if test.warm_load and (storage not in ("local", "file") or test.kvstore == "memory"):
            where = "the memory kvstore" if test.kvstore == "memory" or storage == "memory" else config.storage
            raise UserError(f"test {test.name!r}: warm_load times a read from the page cache, and {where} has none; "
                            "drop warm_load")
        for count in counts:
            name = test.name if len(counts) == 1 else f"{test.name}_procs={count}"
            if test.tp > 1 and count not in (1, test.tp):
                skipped.append((name, f"tp {test.tp} loads with {test.tp} reader processes, not {count}"))
                continue
            count = max(count, test.tp)  # tp N: the load's N readers are the test's processes
            if count > 1 and test.kvstore == "memory":
                skipped.append((name, "the memory kvstore lives in one process; it cannot be shared by several"))
                continue
            if count > 1 and (test.in_flight != "all" or test.timed_conversion):
                skipped.append((name, "in_flight \"one_tensor\" and timed_conversion reproduce the original's single "
                                      "process; worker processes do neither"))
                continue
            if count > 1 and test.load_into == "preallocated":
                skipped.append((name, "load_into \"preallocated\" reads into arrays this process allocated before "
                                      "the clock; worker processes read their rows into new arrays"))
                continue
            sweep = test.sweep if len(counts) == 1 else {**(test.sweep or {}), "processes": count}
            tests.append(destined(dataclasses.replace(test, name=name, processes=count, sweep=sweep), config))
    if config.weights is not None:
        config = dataclasses.replace(config, values="checkpoint")  # a checkpoint brings its own values
    if not tests:
        raise UserError("no test can run with these settings; see the skipped tests: "
                        + "; ".join(f"{n}: {r}" for n, r in skipped[:3]))
    names = [t.name for t in tests]
    baseline = config.baseline
    if baseline not in names:
        baseline = next((n for n in names if n.startswith((f"{baseline}_procs=", f"{baseline}_tp="))), names[0])
    # The suite's tp is in its tests now: finishing the suite again (a launch's process count) keeps them
    return dataclasses.replace(config, tests=tuple(tests), skipped=tuple(skipped), baseline=baseline, tp=None)


def destined(test: TestSpec, config: SuiteConfig) -> TestSpec:
    """The test with its destination resolved: its own load_into, else the suite's, where the row can load so;
    else the one it can, and why it differs (load_into_note: the console and results.json list such rows)."""
    if test.load_into_note is not None:  # resolved by an earlier finish (a launch's process count)
        return test
    wanted = test.load_into or config.load_into
    can, why = wanted, None
    fixed = REFERENCES[test.backend].destination if test.is_reference else None
    if fixed is not None:
        can, why = fixed
    elif wanted == "preallocated" and test.is_reference and test.tp > 1:
        can, why = "new", "its tp readers read their slices into arrays of their own, in other processes"
    elif wanted == "preallocated" and test.processes > 1:
        can, why = "new", "its worker processes read their rows into arrays of their own"
    elif wanted == "preallocated" and test.timed_conversion:
        can, why = "new", "timed_conversion copies and casts each array read, as the original did"
    elif test.load_into is not None and test.load_into != config.load_into:
        why = "the test's own load_into"
    return dataclasses.replace(test, load_into=can, load_into_note=why if can != config.load_into else None)


def _with_tp(config: SuiteConfig) -> list[TestSpec]:
    """The tests with the suite's tp (--tp, or the config's top-level tp) applied: each value loads every test and
    reference row tensor-parallel. With several values, the points of tp > 1 are named `name_tp=N` (tp 1 keeps
    the name: the baseline and the device ceiling stay where every report looks for them)."""
    if config.tp is None:
        return list(config.tests)
    values = sorted(set(config.tp))
    return [dataclasses.replace(test, tp=tp, name=test.name if len(values) == 1 or tp == 1 else f"{test.name}_tp={tp}",
                                sweep=test.sweep if len(values) == 1 else {**(test.sweep or {}), "tp": tp},
                                description=_tp_description(test, tp))
            for test in config.tests for tp in values]


def _tp_description(test: TestSpec, tp: int) -> str:
    """A reference row's description says how its tp readers read (spec.references' tp_load)."""
    how = REFERENCES[test.backend].tp_load if test.is_reference and tp > 1 else ""
    return f"{test.description}; tp {tp}: {how}" if how else test.description


def _tp_refusal(test: TestSpec, config: SuiteConfig, counts: list[int]) -> str | None:
    """Why a test cannot load tensor-parallel here (a reference kind that cannot read slices), or None; raises
    when the test's tp does not suit the model or the process counts (a sweep point of tp is skipped instead)."""
    flag = "--tp" if config.tp is not None else f"test {test.name!r}: field tp"
    why = tensor_parallel.refusal(test.tp, config.model if config.weights is None else None, None, flag=flag,
                                  aligned=test.chunk_strategy == "tp_aligned")
    if why is None and not any(count in (1, test.tp) for count in counts):
        why = (f"{flag}: tp {test.tp} loads with {test.tp} reader processes, and the suite runs "
               f"{', '.join(map(str, counts))} processes; drop --processes or set it to {test.tp}")
    if why is not None:
        if test.sweep and "tp" in test.sweep and config.tp is None:
            return why  # one point of a sweep over tp: skipped, the others run
        raise UserError(why)
    if test.is_reference:
        return REFERENCES[test.backend].tp_unsupported
    if test.tp_save and test.chunk_strategy != "tp_aligned":
        raise UserError(f"test {test.name!r}: tp_save writes each rank's slice from its own process, so no two may "
                        "share a chunk; set chunk_strategy \"tp_aligned\" or drop tp_save")
    return None


def _check_conditions(test: TestSpec, config: SuiteConfig) -> None:
    """Per-test settings that depend on the suite's weights (known only after the overrides)."""
    where = f"test {test.name!r}"
    if (why := _async_suite_refusal(test, config.processes) or _async_test_refusal(test)) is not None:
        raise UserError(f"{where}: {why}")  # a reference row's own settings are checked here too
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


def _async_test_refusal(test: TestSpec) -> str | None:
    """Why a test's own settings rule out its async save (save_mode "async", bench.async_save), or None."""
    if test.save_mode != "async":
        return None  # train_step_bytes sizes nothing here: a sweep over save_mode gives it to both points
    if test.in_flight != "all":
        return "save_mode \"async\" issues every write at once, and in_flight \"one_tensor\" awaits each tensor's; " \
               "use one of them"
    if test.timed_conversion:
        return "save_mode \"async\" returns once the weights may change, and timed_conversion casts them inside " \
               "the save's clock, as the original did; use one of them"
    return None


def _async_suite_refusal(test: TestSpec, processes: Sequence[int]) -> str | None:
    """Why the suite's settings (--tp, --processes) rule out a test's async save, or None."""
    if test.save_mode != "async":
        return None
    if test.tp > 1:
        return (f"save_mode \"async\" measures one trainer's save beside its training steps, and tp {test.tp} loads "
                "with reader processes; drop --tp (or the test's tp) or use save_mode \"sync\"")
    if max(processes, default=1) > 1:
        return ("save_mode \"async\" measures one process's save beside its training steps, and --processes "
                "writes with several; drop --processes or use save_mode \"sync\"")
    return None


def _read_test(raw: Mapping[str, Any], source: str) -> TestSpec:
    """A sweep point's TestSpec (fields.read_test), with the checks that span several fields."""
    where = f"{source}: test {raw['name']!r}"
    has_elements, has_bytes = "chunk_size_elements" in raw, "chunk_bytes" in raw
    if has_elements == has_bytes:
        which = "both" if has_elements else "neither"
        raise UserError(f"{where}: has {which} of chunk_size_elements and chunk_bytes; give exactly one")
    test = read_test(raw, where)
    if (why := _async_test_refusal(test)) is not None:
        raise UserError(f"{where}: {why}")
    if test.format == "zarr3":
        compression.zarr3_codecs(test.compression, itemsize=4, where=f"{where} field compression")
    if test.shard_bytes is not None:
        if test.format != "zarr3":
            raise UserError(f"{where}: shard_bytes needs format \"zarr3\" (sharding_indexed); set format or drop "
                            "shard_bytes")
        if test.chunk_bytes is not None and test.shard_bytes < test.chunk_bytes:
            raise UserError(f"{where}: shard_bytes ({test.shard_bytes}) is smaller than chunk_bytes "
                            f"({test.chunk_bytes}); a shard holds whole inner chunks")
    if test.file_io_mode != "default" and test.kvstore == "memory":
        raise UserError(f"{where}: file_io_mode {test.file_io_mode!r} applies to files; the memory kvstore has none")
    if test.load_into == "preallocated" and test.timed_conversion:
        raise UserError(f"{where}: load_into \"preallocated\" reads into arrays of the stored dtype, and "
                        "timed_conversion copies and casts each array read, as the original did; use one of them")
    if test.file_io_mode == "direct" and test.compression is not None:
        raise UserError(f"{where}: file_io_mode \"direct\" reads with O_DIRECT only chunk files whose size is a "
                        "multiple of 4096 bytes, and compressed chunks are not; use compression \"none\"")
    return test


def suite_data(tests: list[dict[str, Any]], *, references: tuple[str, ...] | Mapping[str, Any] = (),
               baseline: str | None = None, **settings: Any) -> dict[str, Any]:
    """A suite config as a config file holds it (for `from_dict`): what tune and explain build their suites
    with. `settings` are the file's other top-level keys (output_dir, testing, model, weights, dtype, values,
    storage, description); those left None are left out (the file's defaults); a checkpoint (`weights`) brings
    its own values. `references`: a tuple of kinds (each at its defaults), or each kind's `references` value."""
    data = {key: str(value) if key == "output_dir" else value for key, value in settings.items() if value is not None}
    if "weights" in data:
        data.pop("values", None)
    data["references"] = ({kind: references.get(kind, False) for kind in REFERENCES} if isinstance(references, Mapping)
                          else {kind: kind in references for kind in REFERENCES})
    if baseline is not None or tests:
        data["baseline"] = baseline if baseline is not None else tests[0]["name"]
    data["test_configurations"] = tests
    return data
