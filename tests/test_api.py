"""The library: one run API, light imports for the reading subcommands, results as a contract, packaging."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, SHIPPED_CONFIG

from ckptbench.analysis import change as analysis
from ckptbench.analysis import versus as compare
from ckptbench.cli import app as cli
from ckptbench.core.errors import UserError
from ckptbench.documents import results, store

V1_FIXTURE = REPO / "tests" / "fixtures" / "results_v1.json"
HEAVY = ("tensorstore", "torch", "transformers")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _heavy_modules_after(argv: list[str], cwd: Path) -> tuple[int, list[str], str]:
    """Run cli.main(argv) in a fresh interpreter; (status, heavy modules it imported, stderr)."""
    script = textwrap.dedent(f"""
        import json, sys
        from ckptbench.cli import app as cli
        try:
            status = cli.main({argv!r})
        except SystemExit as stop:  # --help
            status = stop.code
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        print("RESULT" + json.dumps([status, heavy]))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    status, heavy = json.loads(line[len("RESULT"):])
    return status, heavy, done.stderr


def test_help_compare_and_show_import_no_tensorstore_torch_or_transformers(tmp_path):
    assert _heavy_modules_after(["--help"], tmp_path)[:2] == (0, [])
    status, heavy, err = _heavy_modules_after(["compare", str(V1_FIXTURE), str(V1_FIXTURE)], tmp_path)
    assert (status, heavy) == (0, []), err
    status, heavy, err = _heavy_modules_after(["show", str(V1_FIXTURE), "--output-dir", str(tmp_path / "fig")],
                                              tmp_path)
    assert (status, heavy) == (0, []), err
    assert (tmp_path / "fig" / "optimization_analysis.png").read_bytes()[:8] == PNG_MAGIC
    assert _heavy_modules_after(["list-models"], tmp_path)[:2] == (0, [])


def test_importing_the_package_changes_nothing_global():
    script = ("import os, sys; before = dict(os.environ); import ckptbench, ckptbench.cli, ckptbench.figures.drawing, "
              "ckptbench.documents.results; assert dict(os.environ) == before; assert 'matplotlib' not in sys.modules; "
              "print('ok')")
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.slow  # the full shipped config
def test_the_api_example_in_the_framework_docstring_runs(tmp_path, monkeypatch):
    import phase4_optimization_testing as framework

    example = framework.__doc__.split("\n\n")[1]
    assert "ckptbench.run(" in example
    shutil.copy(SHIPPED_CONFIG, tmp_path / "phase4_config.json")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(textwrap.dedent(example), namespace)  # noqa: S102 - the documented example, run as written
    out = tmp_path / "saved_models" / "demo"
    document = json.loads((out / "results.json").read_text())
    assert document["complete"] and all(len(t["runs"]) == 2 for t in document["tests"])
    assert (out / "optimization_analysis.png").read_bytes()[:8] == PNG_MAGIC
    assert namespace["results"].document == document


def test_show_redraws_every_figure_of_a_version_1_file(run_cli, tmp_path):
    status, out, err = run_cli("show", V1_FIXTURE, "--output-dir", tmp_path)
    assert status == 0, err
    for name in ("optimization_analysis.png", "claims_check.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert "baseline (baseline)" in out and "Claims check" in out
    upgraded = results.read(V1_FIXTURE).document
    assert upgraded["schema_version"] == results.SCHEMA_VERSION
    assert upgraded["tool"]["version"] == "0.1.0"  # who wrote it is kept
    outcomes = {c["outcome"] for t in upgraded["tests"] for c in t["claims"]}
    assert outcomes <= set(analysis.OUTCOMES) and upgraded["weights"]["values"] == "random"


def _v2_document(tmp_path: Path) -> dict:
    return results.read(V1_FIXTURE).document


@pytest.mark.parametrize("damage, needle", [
    (lambda d: "not json {", "not a readable results file"),
    (lambda d: [1, 2], "schema_version"),
    (lambda d: {**d, "schema_version": 99}, "schema_version 99"),
    (lambda d: {k: v for k, v in d.items() if k != "tests"}, "tests"),
    (lambda d: {**d, "tests": [{**d["tests"][0], "runs": [{**d["tests"][0]["runs"][0], "save_s": "fast"}]}]},
     "save_s"),
    (lambda d: {**d, "best": {"load": {"test": 3}}}, "best"),
    # typed by RunRecord's annotations (process_load_s: list[float] | None), and by the file's refinements
    (lambda d: {**d, "tests": [{**d["tests"][0], "runs": [{**d["tests"][0]["runs"][0], "process_load_s": ["x"]}]}]},
     "process_load_s"),
    (lambda d: {**d, "tests": [{**d["tests"][0], "runs": [{**d["tests"][0]["runs"][0], "load_cache": "lukewarm"}]}]},
     "load_cache"),
    (lambda d: {**d, "tests": [{**d["tests"][0], "runs": [{**d["tests"][0]["runs"][0],
                                                           "other_processes": {"save": {"seconds": 1.0}}}]}]},
     "other_processes"),
])
def test_read_refuses_a_broken_document_in_one_line(tmp_path, damage, needle):
    document = damage(_v2_document(tmp_path))
    path = tmp_path / "results.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(UserError) as caught:
        results.read(path)
    message = str(caught.value)
    assert "\n" not in message and needle in message and str(path) in message


@dataclass
class _Record:
    n: int
    ok: bool
    name: str | None
    seconds: list[float] | None
    by_op: dict[str, dict[str, float]] | None = None


def test_a_schema_part_is_its_dataclass_fields_typed_by_their_annotations():
    assert store.field_schemas(_Record) == {
        "n": {"type": "integer"}, "ok": {"type": "boolean"}, "name": {"type": ["string", "null"]},
        "seconds": {"type": ["array", "null"], "items": {"type": "number"}},
        "by_op": {"type": ["object", "null"], "additionalProperties": {"type": "object",
                                                                        "additionalProperties": {"type": "number"}}}}


def test_a_damaged_version_1_file_is_refused_in_one_line(tmp_path):
    document = json.loads(V1_FIXTURE.read_text())
    del document["tests"][0]["settings"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(document))
    with pytest.raises(UserError, match="damaged version-1 results file"):
        results.read(path)


def test_show_and_compare_answer_a_bad_file_with_one_line_and_status_2(run_cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 2}))
    for argv in (["show", bad], ["compare", V1_FIXTURE, bad]):
        status, out, err = run_cli(*argv)
        assert status == 2 and out == "" and len(err.strip().splitlines()) == 1 and "not a valid" in err


def test_every_comparison_goes_through_analysis_compare(monkeypatch):
    calls = []
    real = analysis.compare

    def spy(*args, **kwargs):
        calls.append(kwargs.get("metric"))
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "compare", spy)
    document = json.loads(V1_FIXTURE.read_text())
    results.RESULTS.upgrade(document)  # derive: versus the baseline, claims and the best layout
    derived = len(calls)
    assert derived >= 3 * (len(document["tests"]) - 1)
    rows = compare.compare_documents(results.read(V1_FIXTURE).document, results.read(V1_FIXTURE).document, 5.0)
    assert len(calls) - derived >= len(rows)


def test_the_results_document_names_the_harness_version_and_commit(tmp_path):
    import ckptbench

    suite = ckptbench.load_config(SHIPPED_CONFIG, model="tiny", num_runs=1, output_dir=tmp_path / "out",
                                  tests=["baseline", "chunks_1mb"])
    document = ckptbench.run(suite).document
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert document["tool"]["version"] == version == ckptbench.__version__
    commit = document["tool"]["commit"]
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit)
    assert results.read(tmp_path / "out" / "results.json").document == document  # it meets its own schema


def test_pip_install_gives_a_ckptbench_command(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO / "ckptbench", source / "ckptbench", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "phase4_config.json", source / "phase4_config.json")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(source)], check=True, timeout=300)
    command = target / "bin" / "ckptbench"
    env = {**os.environ, "PYTHONPATH": str(target)}
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    listed = subprocess.run([sys.executable, str(command), "list-models"], cwd=empty, env=env, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0 and "smollm2-135m (default)" in listed.stdout, listed.stderr
    packaged = target / "ckptbench" / "phase4_config.json"
    assert not packaged.is_symlink() and packaged.read_bytes() == SHIPPED_CONFIG.read_bytes()
    shown = subprocess.run([sys.executable, str(command), "show", str(V1_FIXTURE), "--no-figures"], cwd=empty,
                           env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "concurrency_chunks" in shown.stdout, shown.stderr


def test_cli_subcommands_are_one_module_each():
    for name in cli.COMMANDS:
        command = cli.load_command(name)
        assert callable(command.run) and callable(command.add_arguments) and command.summary


def test_run_hands_its_options_to_run_suite_in_one_run_context(monkeypatch, tmp_path):
    """ckptbench.run's keywords become the RunContext's fields; on_start, on_phase and on_record its observer."""
    import ckptbench
    from ckptbench.bench import suite as runner
    from ckptbench.parallel.spawned import LocalWriters

    seen = []
    monkeypatch.setattr(runner, "run_suite", lambda context: seen.append(context) or results.Results({}, None))
    suite = ckptbench.load_config(SHIPPED_CONFIG, model="tiny", output_dir=tmp_path / "out")
    phases = []
    ckptbench.run(suite, resume=True, keep=True, on_phase=lambda planned, phase: phases.append(phase))
    [context] = seen
    assert context.config is suite and context.resume and context.keep and isinstance(context.writers, LocalWriters)
    context.observer.phase(None, "save")
    context.observer.record(None)  # the functions not given do nothing
    assert phases == ["save"] and context.may_start(None) is None
