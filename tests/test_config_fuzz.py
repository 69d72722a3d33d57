"""Property tests of config validation and of the command-line parser.

`config.from_dict` must turn any JSON-like value into a SuiteConfig or one UserError
line, never another exception; and whatever it accepts must be usable by the rest
of the harness (whole numbers where the schema says integer, JSON without NaN for
the journal). The command line must refuse any bad flags with exit status 2 and one
line on stderr. The CLI fuzz always ends with `--config` naming a missing or invalid
file, so no example ever runs a suite or writes a file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import pytest
from conftest import minimal_config
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ckptbench.cli import app as cli
from ckptbench.core.errors import UserError
from ckptbench.spec import config
from ckptbench.spec.fields import TEST_SCHEMA
from ckptbench.spec.schema import SCHEMA

BASE_DIR = Path("/nonexistent/ckptbench-fuzz")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A valid config that uses most features: sizes as strings, sweeps, zarr3 with shards, references, expectations.
RICH = {
    "description": "fuzz base",
    "model": "tiny",
    "dtype": "bfloat16",
    "output_dir": "out",
    "baseline": "raw",
    "references": {"safetensors": True, "device_ceiling": False},
    "testing": {"num_runs": 2, "warmup_rounds": 1, "seed": 4, "cache_eviction": "fadvise",
                "max_inflight_bytes": 2**21, "noise_pct": 2.5},
    "test_configurations": [
        {"name": "raw", "chunk_bytes": "64KB", "concurrency_limit": 1, "compression": "none"},
        {"name": "sweep", "chunk_bytes": ["256KB", 1048576], "concurrency_limit": [1, 8],
         "compression": [None, {"id": "gzip", "level": 1}], "chunk_strategy": "halve",
         "expected": {"save_pct": [-50, 0], "size_pct": [-10, 0]}},
        {"name": "sharded", "chunk_size_elements": 4096, "concurrency_limit": 4, "format": "zarr3",
         "shard_bytes": "1MiB", "kvstore": "file", "data_copy_concurrency": 2, "file_io_sync": False},
    ],
}

# The same in the other common spelling: sizes as byte counts, one test per layout.
SIZES = {
    "model": "tiny",
    "testing": {"num_runs": 3, "warmup_rounds": 0},
    "test_configurations": [
        {"name": "small", "chunk_bytes": 65536, "concurrency_limit": 2},
        {"name": "shards", "chunk_bytes": 262144, "shard_bytes": 4194304, "format": "zarr3", "concurrency_limit": 16,
         "compression": "zstd"},
    ],
}

TEST_KEYS = list(TEST_SCHEMA["properties"])
TESTING_KEYS = list(SCHEMA["properties"]["testing"]["properties"])
TOP_KEYS = list(SCHEMA["properties"])

# Values chosen to sit on the edges the schema cannot see: integral floats, NaN, huge sizes, NUL bytes.
EDGE_STRINGS = ["", " ", "none", "gzip", "blosc-default", "64KB", "1 MiB", "t5x", "0B", "0.5B", "1.5MB", "4GB",
                "9" * 400 + "KB", "zarr3", "ocdbt", "memory", "halve", "divisor", "raw", "baseline", "float32",
                "auto", "drop_caches", "a\x00b", "..", "/", "s3://bucket/x", "memory://", "name with space"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.integers(),
    st.integers(min_value=-2, max_value=5000).map(float),  # 2.0: an "integer" to JSON Schema
    st.integers(min_value=-(2**33), max_value=2**33).map(float),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(EDGE_STRINGS),
)
keys = st.one_of(st.sampled_from(TEST_KEYS + TESTING_KEYS + TOP_KEYS), st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


def _locations(value, path=()):
    """Every (container path, key) in a nested dict/list structure."""
    found = []
    if isinstance(value, dict):
        for key, child in value.items():
            found.append((path, key))
            found.extend(_locations(child, path + (key,)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.append((path, index))
            found.extend(_locations(child, path + (index,)))
    return found


def _containers(value, path=()):
    """Paths of every dict in the structure (where a key can be inserted)."""
    found = [path] if isinstance(value, dict) else []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in children:
        found.extend(_containers(child, path + (key,)))
    return found


def _at(value, path):
    for key in path:
        value = value[key]
    return value


def _variants(value) -> list:
    """The same value in other clothes: another JSON type, an edge of its range, a list of it."""
    if isinstance(value, bool):
        return [int(value), str(value).lower(), None, [value], not value]
    if isinstance(value, int):
        return [float(value), str(value), value + 0.5, -value, 0, value * 2**32, [value], [], True, None,
                math.nan, math.inf, [value, float(value)]]
    if isinstance(value, float):
        whole = [int(value)] if math.isfinite(value) else []  # a mutation may already have made it NaN or inf
        return [*whole, math.nan, -math.inf, -value, str(value), [value], 1e308]
    if isinstance(value, str):
        return ["", value.upper(), f" {value} ", value + "\x00", [value], [value, value], 0, None, {"id": value}]
    if value is None:
        return [0, "", [], {}, [None]]
    if isinstance(value, list):
        return [[], value * 2, value[:1], {}, (value or [0])[0], [value]]
    return [{}, [value], None, list(value)]


@st.composite
def mutated_configs(draw):
    """A valid config with 1-4 edits: a key dropped, a value replaced or re-typed, a key inserted, a list made."""
    data = copy.deepcopy(draw(st.sampled_from([minimal_config(), RICH, SIZES])))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        operation = draw(st.sampled_from(["drop", "replace", "retype", "retype", "insert", "listify"]))
        if operation == "insert":
            places = _containers(data)
            target = _at(data, places[draw(st.integers(0, len(places) - 1))])
            target[draw(keys)] = draw(json_values)
            continue
        places = _locations(data)
        kind = draw(st.sampled_from(["any", "number", "string"]))  # leaves first, or the edit rarely hits a value
        if kind != "any":
            wanted = (int, float) if kind == "number" else (str,)
            places = [p for p in places if isinstance(_at(data, p[0])[p[1]], wanted)
                      and not isinstance(_at(data, p[0])[p[1]], bool)] or places
        if not places:
            continue
        path, key = places[draw(st.integers(0, len(places) - 1))]
        parent = _at(data, path)
        if operation == "drop":
            del parent[key]
        elif operation == "replace":
            parent[key] = draw(json_values)
        elif operation == "retype":
            parent[key] = draw(st.sampled_from(_variants(parent[key])))
        else:
            parent[key] = [parent[key]] + draw(st.lists(json_values, max_size=2))
    return data


def _with(base, edit):
    data = copy.deepcopy(base)
    edit(data)
    return data


def _fast_chunk_bytes(value):
    def edit(data):
        test = data["test_configurations"][1]
        del test["chunk_size_elements"]
        test["chunk_bytes"] = value
    return edit


# Inputs found to escape validation (see the report); kept as explicit examples so they are always tried.
CRASHES_FROM_DICT = [
    _with(minimal_config(), _fast_chunk_bytes(65536.0)),  # AttributeError in parse_size
    _with(minimal_config(), _fast_chunk_bytes("9" * 400 + "KB")),  # OverflowError in parse_size
    _with(minimal_config(), lambda d: d.__setitem__("output_dir", "a\x00b")),  # ValueError: embedded null byte
]
UNUSABLE_BUT_ACCEPTED = [
    _with(minimal_config(), lambda d: d["testing"].__setitem__("num_runs", 2.0)),  # TypeError later in plan()
    _with(minimal_config(), lambda d: d["testing"].__setitem__("noise_pct", math.nan)),  # ValueError in the journal
]


def _check(data) -> config.SuiteConfig | None:
    """from_dict's contract: a SuiteConfig, or one UserError line; anything else fails the test."""
    try:
        suite = config.from_dict(data, base_dir=BASE_DIR, source="fuzz.json")
    except UserError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        assert message.startswith("fuzz.json: ") or message.startswith("output_dir") or ": " in message, message
        return None
    assert isinstance(suite, config.SuiteConfig)
    assert suite.tests and all(isinstance(t, config.TestSpec) for t in suite.tests)
    assert suite.baseline in [t.name for t in suite.tests]
    return suite


@FUZZ
@given(json_values)
@example([])
@example("x")
@example(None)
@example({"test_configurations": [{}]})
@example({"test_configurations": [{"name": "a", "concurrency_limit": 1, "chunk_size_elements": 1}], "baseline": 3})
def test_from_dict_on_arbitrary_values(data):
    _check(data)


@FUZZ
@given(mutated_configs())
@example(CRASHES_FROM_DICT[0])
@example(CRASHES_FROM_DICT[1])
@example(CRASHES_FROM_DICT[2])
def test_from_dict_on_mutated_configs(data):
    _check(data)


@FUZZ
@given(mutated_configs())
@example(UNUSABLE_BUT_ACCEPTED[0])
@example(UNUSABLE_BUT_ACCEPTED[1])
def test_accepted_configs_are_usable(data):
    """What validation accepts must not crash later: whole numbers are ints, and the config is strict JSON."""
    try:
        suite = config.from_dict(data, base_dir=BASE_DIR, source="fuzz.json")
    except UserError:
        return
    except Exception:  # test_from_dict_on_mutated_configs reports these
        return
    json.dumps(suite.to_json(), allow_nan=False)  # the journal and results.json refuse NaN and infinity
    for name in ("num_runs", "warmup_rounds", "max_inflight_bytes"):
        assert type(getattr(suite, name)) is int, (name, getattr(suite, name))
    assert suite.seed is None or type(suite.seed) is int, suite.seed
    assert suite.num_runs >= 1 and suite.warmup_rounds >= 0
    for test in suite.tests:
        if test.backend != "tensorstore":
            continue
        assert type(test.concurrency_limit) is int, (test.name, test.concurrency_limit)
        for itemsize in (2, 4):
            budget = test.chunk_budget_elements(itemsize)
            assert type(budget) is int and budget >= 1, (test.name, budget)
        assert test.shard_bytes is None or type(test.shard_bytes) is int, (test.name, test.shard_bytes)
        assert test.data_copy_concurrency is None or type(test.data_copy_concurrency) is int


# --- the command line ---------------------------------------------------------------------------

FLAGS_WITH_VALUES = ["--config", "--output-dir", "--runs", "--model", "--weights", "--dtype", "--tests", "--seed",
                     "--storage", "--processes"]
SWITCHES = ["--keep", "--resume", "--no-progress"]
# Flags that end the program successfully (help, listing) are not what this fuzz is about.
SUCCESS_FLAGS = ("--list-models", "--help")

printable = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=15)
values = st.one_of(
    printable,
    st.integers().map(str),
    st.sampled_from(["tiny", "llama-2-7b", "0", "-1", "1.5", "float64", "bfloat16", "baseline,fast", ",", "",
                     "/", ".", "..", "memory://", "s3://b/p", "1,2,4", "0,1", "abc"]),
)


def _ends_successfully(token: str) -> bool:
    head = token.split("=", 1)[0]
    return (token.startswith("-h") or
            (len(head) > 2 and any(flag.startswith(head) for flag in SUCCESS_FLAGS)))


random_flags = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-"), min_size=1, max_size=10).map(lambda s: "--" + s)
tokens = st.one_of(
    st.tuples(st.sampled_from(FLAGS_WITH_VALUES), values).map(list),
    st.sampled_from(SWITCHES).map(lambda s: [s]),
    st.tuples(st.sampled_from(FLAGS_WITH_VALUES), values).map(lambda fv: [f"{fv[0]}={fv[1]}"]),
    random_flags.map(lambda s: [s]),
    values.map(lambda v: [v]),
)


@pytest.fixture(scope="module")
def bad_configs(tmp_path_factory):
    root = tmp_path_factory.mktemp("badcfg")
    files = {
        "missing": root / "absent.json",
        "malformed": root / "malformed.json",
        "array": root / "array.json",
        "duplicate": root / "duplicate.json",
        "unknown-key": root / "unknown.json",
    }
    files["malformed"].write_text('{"model": "tiny",')
    files["array"].write_text("[]")
    files["duplicate"].write_text(json.dumps(minimal_config(
        test_configurations=[{"name": "a", "chunk_size_elements": 64, "concurrency_limit": 1}] * 2)))
    files["unknown-key"].write_text(json.dumps(minimal_config(chunk_sise=3)))
    cwd = tmp_path_factory.mktemp("cwd")
    return files, cwd


@FUZZ
@given(st.lists(tokens, max_size=6).map(lambda groups: [t for g in groups for t in g]),
       st.sampled_from(["missing", "malformed", "array", "duplicate", "unknown-key"]))
@example(["--runs", "0"], "missing")
@example(["--tests", ","], "array")
@example(["--processes", "0"], "duplicate")
def test_cli_refuses_bad_argv_with_one_line(bad_configs, argv, which):
    files, cwd = bad_configs
    argv = [t for t in argv if not _ends_successfully(t)]
    if argv[:1] == ["compare"]:
        argv = argv[1:]
    before = {name: (path.stat().st_mtime_ns if path.exists() else None) for name, path in files.items()}
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([*argv, "--config", str(files[which])])
    lines = err.getvalue().splitlines()
    assert status == 2, (argv, status, err.getvalue())
    assert out.getvalue() == ""
    assert len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
    assert list(cwd.iterdir()) == []  # nothing written, relative output folders included
    assert {name: (path.stat().st_mtime_ns if path.exists() else None) for name, path in files.items()} == before
