"""Config validation: the shipped suite, compression normalisation, and a battery of bad inputs.

Every bad input must become one UserError line that names the field (and the test),
both from the library (`config.from_dict` / `config.load`) and from the command line,
where it exits with status 2 and writes nothing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import PACKAGED_CONFIG, SHIPPED_CONFIG, minimal_config

from ckptbench.bench import storage
from ckptbench.core.errors import UserError
from ckptbench.spec import compression, config

PHASE4 = {  # name: (chunk_size_elements, concurrency_limit, compression)
    "baseline": (16384, 1, None),
    "concurrency_128": (16384, 128, None),
    "chunks_1mb": (262144, 1, None),
    "compression_gzip": (16384, 1, {"id": "gzip", "level": 1}),
    "concurrency_chunks": (262144, 128, None),
    "t5x_full": (262144, 128, {"id": "gzip", "level": 1}),
}


# --- the shipped suite -------------------------------------------------------------


def test_shipped_config_holds_the_six_phase4_tests():
    suite = config.load(SHIPPED_CONFIG)
    references = ["safetensors", "torch_save", "runai_streamer", "torch_dcp", "device_ceiling"]
    assert [t.name for t in suite.tests] == list(PHASE4) + references
    assert [t.backend for t in suite.tests[6:]] == references
    for test in suite.tests[:6]:
        elements, concurrency, compressor = PHASE4[test.name]
        assert test.chunk_size_elements == elements, test.name
        assert test.chunk_bytes is None, test.name
        assert test.concurrency_limit == concurrency, test.name
        assert test.compression == compressor, test.name
    assert suite.baseline == "baseline"
    assert suite.config_path == SHIPPED_CONFIG.resolve()


def test_there_is_one_default_config():
    """The package's default (for `pip install .`) is the very file users edit, not a copy."""
    assert PACKAGED_CONFIG.resolve() == SHIPPED_CONFIG.resolve()
    assert PACKAGED_CONFIG.read_bytes() == SHIPPED_CONFIG.read_bytes()


def _guide_suite_table() -> tuple[str, list[list[str]]]:
    """The guide's "The shipped suite" subsection: its prose and its table's rows."""
    guide = (SHIPPED_CONFIG.parent / "PHASE4_GUIDE.md").read_text()
    section = guide.split("### The shipped suite", 1)[1].split("\n### ", 1)[0]
    rows = [[cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]
    return section, rows


def _range_text(expected: dict | None, key: str) -> str:
    if not expected or key not in expected:
        return ""
    low, high = expected[key]
    return f"{low:g}..{high:g}"


def test_the_guide_describes_the_suite_the_runner_runs_by_default():
    """The guide's table of the shipped suite is the default config the command line loads, field by field."""
    from ckptbench.cli.options import PACKAGED_CONFIG as runner_default

    suite = config.load(runner_default)
    prose, rows = _guide_suite_table()
    tensorstore_tests = [t for t in suite.tests if t.backend == "tensorstore"]
    assert [row[0] for row in rows] == [t.name for t in tensorstore_tests]
    for row, test in zip(rows, tensorstore_tests):
        compressor = test.compression
        compression_text = "none" if compressor is None else f"{compressor['id']}-{compressor['level']}"
        assert row[1:] == [str(test.chunk_size_elements), str(test.concurrency_limit), compression_text,
                           _range_text(test.expected, "save_pct"), _range_text(test.expected, "load_pct"),
                           _range_text(test.expected, "size_pct")], test.name
    for fact in (f"{suite.num_runs} runs each", f"`{suite.model}`", f"`{suite.dtype}`", f"`{suite.values}` values"):
        assert fact in " ".join(prose.split()), fact
    assert len(suite.tests) - len(tensorstore_tests) == 5 and "five reference rows" in prose


def test_relative_output_dir_resolves_against_the_config_folder(write_config, tmp_path):
    path = write_config(minimal_config(output_dir="results/here"), name="suite.json")
    assert config.load(path).output_dir == (tmp_path / "results" / "here").resolve()


def test_defaults_fill_what_the_file_leaves_out():
    data = {"test_configurations": [{"name": "only", "chunk_bytes": 65536, "concurrency_limit": 2}]}
    suite = config.from_dict(data, base_dir=Path("/somewhere"))
    assert suite.baseline == "only"  # the first test when none is named
    assert suite.num_runs == 3 and suite.warmup_rounds == 0 and suite.cache_eviction == "auto"
    assert suite.output_dir == Path("/somewhere/saved_models/phase4_tests")
    only = suite.tests[0]
    assert only.compression is None and only.chunk_strategy == "halve"
    assert only.chunk_budget_elements(4) == 16384 and only.chunk_budget_elements(2) == 32768


# --- compression: "none" is really uncompressed, "blosc-default" is TensorStore's default ----------


@pytest.mark.parametrize("value", ["none", None, {"id": "none"}])
def test_none_normalizes_to_none(value):
    assert compression.normalize(value) is None


@pytest.mark.parametrize("value, expected", [
    ("gzip", {"id": "gzip", "level": 1}),
    ({"id": "gzip"}, {"id": "gzip", "level": 1}),
    ({"id": "gzip", "level": 9}, {"id": "gzip", "level": 9}),
    ("blosc-default", {"id": "blosc-default"}),
])
def test_compression_normalizes_to_a_full_dict(value, expected):
    assert compression.normalize(value) == expected


def _spec_metadata(test_compression) -> dict:
    suite = config.from_dict(minimal_config(baseline="t", test_configurations=[
        {"name": "t", "chunk_size_elements": 64, "concurrency_limit": 1, "compression": test_compression}]))
    layout = storage.Layout.of(suite.tests[0], "float32")
    return layout.array_spec(Path("/nowhere"), "arr", (16, 8), "float32")["metadata"]


def test_none_writes_an_explicit_null_compressor():
    metadata = _spec_metadata("none")
    assert "compressor" in metadata and metadata["compressor"] is None
    assert '"compressor": null' in json.dumps(metadata)
    assert metadata["chunks"] == [8, 8] and metadata["dtype"] == "<f4"


def test_blosc_default_omits_the_compressor_key():
    assert "compressor" not in _spec_metadata("blosc-default")


def test_gzip_spec_carries_its_level():
    assert _spec_metadata({"id": "gzip", "level": 1})["compressor"] == {"id": "gzip", "level": 1}


# --- bad inputs ----------------------------------------------------------------------

def _edit(path, value=None, delete=False):
    """A mutation of minimal_config(): set (or delete) the key at path."""

    def mutate(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        if delete:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return mutate


def _chunk_bytes(value):
    def mutate(data):
        test = data["test_configurations"][1]
        del test["chunk_size_elements"]
        test["chunk_bytes"] = value
    return mutate


FAST = ("test_configurations", 1)
# id: (mutation of minimal_config(), substrings the one-line message must contain)
BAD_CONFIGS = {
    "unknown-top-level-key": (_edit(("testting",), {"num_runs": 2}), ["testting", "did you mean 'testing'"]),
    "unknown-test-key": (_edit(FAST + ("concurency_limit",), 4),
                         ["'fast'", "concurency_limit", "did you mean 'concurrency_limit'"]),
    "unknown-testing-key": (_edit(("testing", "num_run"), 2), ["testing", "num_run", "did you mean 'num_runs'"]),
    "string-concurrency": (_edit(FAST + ("concurrency_limit",), "8"), ["'fast'", "concurrency_limit", "whole number"]),
    "float-concurrency": (_edit(FAST + ("concurrency_limit",), 8.5), ["'fast'", "concurrency_limit", "8.5"]),
    "bool-concurrency": (_edit(FAST + ("concurrency_limit",), True), ["'fast'", "concurrency_limit", "true"]),
    "bool-chunk-size": (_edit(FAST + ("chunk_size_elements",), False), ["'fast'", "chunk_size_elements", "false"]),
    "bool-num-runs": (_edit(("testing", "num_runs"), True), ["num_runs", "true"]),
    "bool-noise-pct": (_edit(("testing", "noise_pct"), True), ["noise_pct", "true"]),
    "string-testing": (_edit(("testing",), "fast"), ["testing", "object"]),
    "tests-not-a-list": (_edit(("test_configurations",), {"baseline": {}}), ["test_configurations", "list"]),
    "test-not-an-object": (_edit(FAST, "fast"), ["test_configurations[1]", "object"]),
    "zero-chunk": (_edit(FAST + ("chunk_size_elements",), 0), ["'fast'", "chunk_size_elements", "at least 1"]),
    "negative-chunk": (_edit(FAST + ("chunk_size_elements",), -16384), ["'fast'", "chunk_size_elements", "-16384"]),
    "absurd-chunk": (_edit(FAST + ("chunk_size_elements",), 2**32 + 1), ["'fast'", "chunk_size_elements", "at most"]),
    "zero-chunk-bytes": (_chunk_bytes(0), ["'fast'", "chunk_bytes", "at least 1"]),
    "absurd-chunk-bytes": (_chunk_bytes(5 * 2**30), ["'fast'", "chunk_bytes", "at most"]),
    "zero-concurrency": (_edit(FAST + ("concurrency_limit",), 0), ["'fast'", "concurrency_limit", "at least 1"]),
    "negative-concurrency": (_edit(FAST + ("concurrency_limit",), -3), ["'fast'", "concurrency_limit", "-3"]),
    "absurd-concurrency": (_edit(FAST + ("concurrency_limit",), 10**6), ["'fast'", "concurrency_limit", "at most"]),
    "unknown-compression": (_edit(FAST + ("compression",), "gzp"), ["'fast'", "compression", "did you mean 'gzip'"]),
    "unknown-compression-object": (_edit(FAST + ("compression",), {"id": "zstdd", "level": 3}),
                                   ["'fast'", "compression", "did you mean 'zstd'"]),
    "compression-wrong-type": (_edit(FAST + ("compression",), 5), ["'fast'", "compression"]),
    "gzip-level-too-high": (_edit(FAST + ("compression",), {"id": "gzip", "level": 10}),
                            ["'fast'", "compression.level", "10", "0 to 9"]),
    "gzip-level-negative": (_edit(FAST + ("compression",), {"id": "gzip", "level": -1}),
                            ["'fast'", "compression.level", "-1", "0 to 9"]),
    "gzip-unknown-option": (_edit(FAST + ("compression",), {"id": "gzip", "lvl": 3}), ["'fast'", "lvl"]),
    "duplicate-name": (_edit(FAST + ("name",), "baseline"), ["duplicate", "'baseline'"]),
    "missing-baseline": (_edit(("baseline",), "basline"), ["baseline", "'basline'", "did you mean 'baseline'"]),
    "empty-test-list": (_edit(("test_configurations",), []), ["test_configurations", "empty"]),
    "no-test-list": (_edit(("test_configurations",), delete=True), ["test_configurations", "missing"]),
    "zero-runs": (_edit(("testing", "num_runs"), 0), ["num_runs", "at least 1"]),
    "negative-runs": (_edit(("testing", "num_runs"), -2), ["num_runs", "-2"]),
    "both-chunk-fields": (_edit(FAST + ("chunk_bytes",), 1 << 20),
                          ["'fast'", "both", "chunk_size_elements", "chunk_bytes"]),
    "neither-chunk-field": (_edit(FAST + ("chunk_size_elements",), delete=True),
                            ["'fast'", "neither", "chunk_size_elements", "chunk_bytes"]),
    "missing-concurrency": (_edit(FAST + ("concurrency_limit",), delete=True), ["'fast'", "concurrency_limit"]),
    "invalid-test-name": (_edit(FAST + ("name",), "no spaces"), ["name", "'no spaces'"]),
    "unknown-model": (_edit(("model",), "llama-9"), ["model", "llama-9"]),
    "unknown-dtype": (_edit(("dtype",), "float64"), ["dtype", "float64"]),
    "unknown-eviction": (_edit(("testing", "cache_eviction"), "drop"), ["cache_eviction", "drop"]),
    "bad-expected-range": (_edit(FAST + ("expected",), {"save_pct": [-5]}), ["'fast'", "expected.save_pct"]),
}


def _bad(case: str) -> dict:
    mutate, _ = BAD_CONFIGS[case]
    data = copy.deepcopy(minimal_config())
    mutate(data)
    return data


def _assert_one_line_naming(message: str, needles) -> None:
    assert "\n" not in message.strip(), message
    assert "Traceback" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_from_dict_rejects(case):
    with pytest.raises(UserError) as caught:
        config.from_dict(_bad(case), source="suite.json")
    message = str(caught.value)
    assert message.startswith("suite.json: ")
    _assert_one_line_naming(message, BAD_CONFIGS[case][1])


@pytest.mark.parametrize("top", [[], ["test_configurations"], "config", 3, None])
def test_top_level_must_be_an_object(top):
    with pytest.raises(UserError, match="top level must be a JSON object"):
        config.from_dict(top)


def test_the_base_config_of_the_battery_is_valid():
    """Guards the battery: each case fails for its own mutation, not for the base."""
    suite = config.from_dict(minimal_config())
    assert [t.name for t in suite.tests] == ["baseline", "fast"]


def test_load_reports_line_and_column_of_malformed_json(write_config):
    path = write_config('{\n  "model": "tiny",\n  "test_configurations": [,]\n}')  # the comma is column 27
    with pytest.raises(UserError) as caught:
        config.load(path)
    message = str(caught.value)
    _assert_one_line_naming(message, [str(path), "invalid JSON", "line 3", "column 27"])


def test_load_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such config file"):
        config.load(tmp_path / "absent.json")


def test_load_folder_is_not_a_config(tmp_path):
    with pytest.raises(UserError, match="is not a file"):
        config.load(tmp_path)


# --- the same mistakes through the command line: exit 2, one line, nothing written ------------------


@pytest.fixture
def cli_case(tmp_path, run_cli):
    """cli_case(*argv, config_content=dict|str|None) -> (status, stdout, stderr, output folder).

    Unless argv says otherwise: the shipped config, output in tmp_path/out, --model tiny, --runs 1.
    """
    out = tmp_path / "out"

    def run(*argv, config_content=None):
        args = list(argv)
        if config_content is not None:
            path = tmp_path / "cfg.json"
            path.write_text(config_content if isinstance(config_content, str) else json.dumps(config_content))
            args = ["--config", path, *args]
        elif "--config" not in args:
            args = ["--config", SHIPPED_CONFIG, *args]
        if "--output-dir" not in args:
            args += ["--output-dir", out]
        if "--model" not in args and "--weights" not in args:
            args += ["--model", "tiny"]
        if "--runs" not in args:
            args += ["--runs", "1"]
        status, stdout, stderr = run_cli(*args, "--no-progress")
        return status, stdout, stderr, out

    return run


def _assert_cli_refused(status, stdout, stderr, out, needles):
    assert status == 2
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    _assert_one_line_naming(lines[0], needles)
    assert not out.exists(), "the output folder was created although the run was refused"


@pytest.mark.parametrize("case", [
    "unknown-top-level-key", "unknown-test-key", "bool-concurrency", "absurd-chunk", "negative-concurrency",
    "unknown-compression", "gzip-level-too-high", "duplicate-name", "missing-baseline", "empty-test-list",
    "zero-runs", "both-chunk-fields", "neither-chunk-field", "string-concurrency",
])
def test_cli_rejects_bad_config(cli_case, case):
    _assert_cli_refused(*cli_case(config_content=_bad(case)), BAD_CONFIGS[case][1])


def test_cli_rejects_malformed_json(cli_case):
    _assert_cli_refused(*cli_case(config_content='{"model": "tiny",\n "testing": {"num_runs": 1,}}'),
                        ["cfg.json", "invalid JSON", "line 2", "column"])


def test_cli_rejects_top_level_array(cli_case):
    _assert_cli_refused(*cli_case(config_content="[1, 2]"), ["cfg.json", "top level", "object"])


def test_cli_rejects_missing_config_file(cli_case, tmp_path):
    _assert_cli_refused(*cli_case("--config", tmp_path / "nope.json"), ["nope.json", "no such config file"])


def test_cli_rejects_unknown_model(cli_case):
    _assert_cli_refused(*cli_case("--model", "llama-99b"), ["--model", "llama-99b", "--list-models"])


def test_cli_rejects_missing_weights_folder(cli_case, tmp_path):
    _assert_cli_refused(*cli_case("--weights", tmp_path / "nowhere"), ["--weights", "nowhere", "does not exist"])


def test_cli_rejects_weights_that_are_a_file(cli_case, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    _assert_cli_refused(*cli_case("--weights", tmp_path / "model.safetensors"), ["--weights", "is a file"])


def test_cli_rejects_weights_folder_without_weights(cli_case, tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    _assert_cli_refused(*cli_case("--weights", folder), ["--weights", str(folder), "model.safetensors"])


def test_cli_rejects_unknown_flag(cli_case):
    _assert_cli_refused(*cli_case("--chunk-size", "7"), ["unrecognized arguments", "--chunk-size"])


@pytest.mark.parametrize("flag, value, needles", [
    ("--runs", "0", ["--runs", "at least 1"]),
    ("--runs", "three", ["--runs", "three"]),
    ("--dtype", "float64", ["--dtype", "float64"]),
    ("--seed", "x", ["--seed", "'x'"]),
])
def test_cli_rejects_bad_flag_values(cli_case, flag, value, needles):
    _assert_cli_refused(*cli_case(flag, value), needles)


def test_cli_rejects_unknown_test_name(cli_case):
    _assert_cli_refused(*cli_case("--tests", "baseline,t5x"), ["--tests", "'t5x'", "did you mean 't5x_full'"])


def test_cli_refuses_an_output_dir_that_is_a_file(run_cli, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("precious")
    status, stdout, stderr = run_cli("--config", SHIPPED_CONFIG, "--model", "tiny", "--runs", "1",
                                     "--output-dir", target, "--no-progress")
    assert status == 2 and stdout == ""
    assert len(stderr.splitlines()) == 1 and "output_dir" in stderr and "is a file" in stderr
    assert target.read_text() == "precious"


def test_cli_refuses_a_foreign_non_empty_output_dir(run_cli, tmp_path):
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"jpeg")
    status, stdout, stderr = run_cli("--config", SHIPPED_CONFIG, "--model", "tiny", "--runs", "1",
                                     "--output-dir", target, "--no-progress")
    assert status == 2 and stdout == ""
    assert len(stderr.splitlines()) == 1 and "output_dir" in stderr and "not empty" in stderr
    assert sorted(p.name for p in target.iterdir()) == ["holiday.jpg"]
