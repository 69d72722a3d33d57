"""End to end: the two entry scripts as real subprocesses, and the CLI's options in process."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FRAMEWORK, REPO, SHIPPED_CONFIG, STREAMLINED

from ckptbench.bench import workspace
from ckptbench.documents import results

SIX = ["baseline", "concurrency_128", "chunks_1mb", "compression_gzip", "concurrency_chunks", "t5x_full"]
# the shipped config measures them beside the six (fastsafetensors is there, off)
REFERENCES = ["safetensors", "torch_save", "runai_streamer", "torch_dcp", "device_ceiling"]
STAT_KEYS = {"mean", "std", "median", "min", "max", "n", "cv", "ci95"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _launch(script: Path, out: Path, runs: int, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), "--model", "tiny", "--runs", str(runs), "--output-dir", str(out), "--no-progress"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def script_runs(tmp_path_factory):
    """Both entry scripts, started together (they are independent) and awaited: name -> (process, stdout, stderr, out)."""
    root = tmp_path_factory.mktemp("cli")
    elsewhere = root / "cwd"  # the framework script needs no config file in the working folder
    elsewhere.mkdir()
    jobs = {
        "streamlined": (_launch(STREAMLINED, root / "streamlined", 2, REPO), root / "streamlined"),
        "framework": (_launch(FRAMEWORK, root / "framework", 1, elsewhere), root / "framework"),
    }
    done = {}
    for name, (process, out) in jobs.items():
        stdout, stderr = process.communicate(timeout=300)
        done[name] = (process, stdout, stderr, out)
    return done


@pytest.fixture(scope="module")
def streamlined(script_runs):
    process, stdout, stderr, out = script_runs["streamlined"]
    assert process.returncode == 0, stderr
    return json.loads((out / "results.json").read_text()), stdout, out


@pytest.mark.slow  # the full shipped config (script_runs)
def test_streamlined_results_document(streamlined):
    document, _, _ = streamlined
    assert document["schema_version"] == results.SCHEMA_VERSION == 5
    assert document["complete"] is True
    assert document["baseline"] == "baseline"
    assert [t["name"] for t in document["tests"]] == SIX + REFERENCES
    assert document["weights"]["name"] == "tiny" and document["weights"]["n_params"] == 1_303_680
    assert document["config"]["config_path"] == str(SHIPPED_CONFIG)
    for test in document["tests"]:
        assert len(test["runs"]) == 2, test["name"]
        assert test["failed_runs"] == 0
        assert all(r["error"] is None and r["verified"] is True and not r["warmup"] for r in test["runs"])
        assert sorted(r["round"] for r in test["runs"]) == [0, 1]


@pytest.mark.slow  # the full shipped config (script_runs)
def test_streamlined_statistics_come_from_the_runs(streamlined):
    document, _, _ = streamlined
    for test in document["tests"]:
        for metric in ("save_s", "load_s", "size_bytes"):
            summary = test["stats"][metric]
            assert STAT_KEYS <= set(summary), (test["name"], metric)
            values = [r[metric] for r in test["runs"]]
            assert summary["n"] == 2
            assert summary["mean"] == pytest.approx(statistics.fmean(values))
            assert summary["min"] == min(values) and summary["max"] == max(values)
            assert summary["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
            # two runs: too few for an interval, unless they are equal (a size: exact)
            assert summary["ci95"] == ([values[0]] * 2 if len(set(values)) == 1 else None), (test["name"], metric)
        sizes = {r["size_bytes"] for r in test["runs"]}
        assert len(sizes) == 1, "the same weights and layout must give the same bytes every run"


@pytest.mark.slow  # the full shipped config (script_runs)
def test_streamlined_changes_against_baseline(streamlined):
    document, _, _ = streamlined
    tests = {t["name"]: t for t in document["tests"]}
    base = tests["baseline"]
    assert base["vs_baseline"] == {}
    for name in SIX[1:]:
        comparisons = tests[name]["vs_baseline"]
        assert set(comparisons) >= {"save_s", "load_s", "size_bytes"}, name
        for metric, comparison in comparisons.items():
            assert isinstance(comparison["verdict"], str) and comparison["verdict"], (name, metric)
            expected = 100 * (tests[name]["stats"][metric]["mean"] / base["stats"][metric]["mean"] - 1)
            assert comparison["change_pct"] == pytest.approx(expected), (name, metric)
    # gzip shrinks the checkpoint; chunk size and concurrency alone do not change the raw bytes much
    assert tests["compression_gzip"]["vs_baseline"]["size_bytes"]["change_pct"] < 0
    assert tests["t5x_full"]["vs_baseline"]["size_bytes"]["change_pct"] < 0
    assert tests["concurrency_128"]["vs_baseline"]["size_bytes"]["change_pct"] == pytest.approx(0)


@pytest.mark.slow  # the full shipped config (script_runs)
def test_streamlined_environment_and_protocol(streamlined):
    document, _, _ = streamlined
    env = document["environment"]
    assert {"python", "packages", "os", "cpu_count", "filesystem", "timestamp"} <= set(env)
    assert env["packages"]["tensorstore"] and env["python"] == ".".join(map(str, sys.version_info[:3]))
    protocol = document["protocol"]
    assert protocol["num_runs"] == 2 and protocol["warmup_rounds"] == 0
    assert isinstance(protocol["seed"], int)
    assert protocol["cache_eviction_requested"] == "auto"
    assert set(protocol["cache_eviction_used"]) <= {"drop_caches", "fadvise"}
    assert protocol["load_cache"] in ("cold", "partial", "warm", "mixed")


@pytest.mark.slow  # the full shipped config (script_runs)
def test_streamlined_draws_a_real_png(streamlined):
    _, _, out = streamlined
    png = (out / "optimization_analysis.png").read_bytes()
    assert png[:8] == PNG_MAGIC
    assert len(png) > 20_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # the IHDR chunk
    assert width > height > 500


@pytest.mark.slow  # the full shipped config (script_runs)
def test_streamlined_console_table_names_every_test(streamlined):
    _, stdout, out = streamlined
    table = stdout.split("\n\n")[2]  # headline, blank line, the answer, blank line, the table
    for name in SIX:
        assert re.search(rf"^{re.escape(name)}\b", table, re.MULTILINE), name
    assert f"Results: {out / 'results.json'}" in stdout


@pytest.mark.slow  # the full shipped config (script_runs)
def test_streamlined_console_is_short_with_the_answer_first(streamlined):
    """The default console a person reads in ten seconds: 40 lines at most (tables, Results and Plot lines
    included), the answer within the first 12, "too few runs" where 2 runs allow no interval, no interval of a
    change below -100 %, and every figure the run drew named."""
    document, stdout, out = streamlined
    lines = stdout.splitlines()
    assert len(lines) <= 40, stdout
    answer = next(i for i, line in enumerate(lines) if line.startswith("Answer:"))
    objectives = [i for i, line in enumerate(lines) if re.match(r"  (save|load|save \+ load|size):", line)]
    assert len(objectives) == 4 and answer < min(objectives) and max(objectives) < 12, stdout
    assert "too few runs" in stdout and "Cost (CPU" not in stdout and "Versus baseline" not in stdout
    assert sum(line.startswith("  ! ") for line in lines) <= 5
    assert lines[-1].startswith("Plot:") and f"Plot:    {out / 'optimization_analysis.png'}" in stdout
    for test in document["tests"]:
        for comparison in test["vs_baseline"].values():
            assert comparison["change_ci95_pct"] is None or comparison["change_ci95_pct"][0] > -100


@pytest.mark.slow  # the full shipped config (script_runs)
def test_streamlined_leaves_no_run_folders(streamlined):
    _, _, out = streamlined
    runs = out / workspace.RUNS_DIR
    assert not runs.exists() or not any(p.is_dir() for p in runs.iterdir())
    assert (out / workspace.OUTPUT_MARKER).exists()


@pytest.mark.slow  # the full shipped config (script_runs)
def test_framework_script_runs_the_builtin_tests(script_runs):
    process, stdout, stderr, out = script_runs["framework"]
    assert process.returncode == 0, stderr
    document = json.loads((out / "results.json").read_text())
    assert document["complete"] is True
    assert [t["name"] for t in document["tests"]] == SIX + REFERENCES
    assert all(len(t["runs"]) == 1 and t["failed_runs"] == 0 for t in document["tests"])
    assert document["config"]["config_path"] == str(SHIPPED_CONFIG)  # the one default config
    assert (out / "optimization_analysis.png").read_bytes()[:8] == PNG_MAGIC
    assert all(name in stdout for name in SIX)
    assert not (out / workspace.RUNS_DIR).exists() or not any(p.is_dir() for p in (out / workspace.RUNS_DIR).iterdir())
    assert "Traceback" not in stderr


# --- in process: subsets, reuse, --keep, --list-models --------------------------------------


def _run_tiny(run_cli, out, *extra):
    return run_cli("--config", SHIPPED_CONFIG, "--model", "tiny", "--runs", "1", "--output-dir", out,
                   "--no-progress", "--seed", "7", *extra)


def test_tests_option_runs_only_those(run_cli, tmp_path):
    out = tmp_path / "subset"
    status, stdout, stderr = _run_tiny(run_cli, out, "--tests", "baseline,t5x_full")
    assert status == 0, stderr
    document = json.loads((out / "results.json").read_text())
    assert [t["name"] for t in document["tests"]] == ["baseline", "t5x_full"]
    assert document["baseline"] == "baseline"
    assert document["protocol"]["seed"] == 7
    assert "t5x_full" in stdout and "chunks_1mb" not in stdout and "concurrency_128" not in stdout
    # the harness may write into a folder it made before
    status, _, stderr = _run_tiny(run_cli, out, "--tests", "chunks_1mb")
    assert status == 0, stderr
    document = json.loads((out / "results.json").read_text())
    assert [t["name"] for t in document["tests"]] == ["chunks_1mb"]
    assert document["baseline"] == "chunks_1mb"  # the baseline was not selected: the first test stands in


def test_keep_leaves_the_last_checkpoint_of_each_test(run_cli, tmp_path):
    out = tmp_path / "kept"
    status, _, stderr = _run_tiny(run_cli, out, "--tests", "baseline,compression_gzip", "--keep")
    assert status == 0, stderr
    kept = sorted(p.name for p in (out / workspace.RUNS_DIR).iterdir() if p.is_dir())
    assert kept == ["baseline-r0", "compression_gzip-r0"]
    zarray = json.loads((out / "runs" / "compression_gzip-r0" / "lm_head.weight" / ".zarray").read_text())
    assert zarray["compressor"] == {"id": "gzip", "level": 1}
    zarray = json.loads((out / "runs" / "baseline-r0" / "lm_head.weight" / ".zarray").read_text())
    assert zarray["compressor"] is None


def test_weights_option_benchmarks_a_real_checkpoint(run_cli, tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "checkpoint", max_shard_size="40KB")
    out = tmp_path / "out"
    status, stdout, stderr = run_cli("--config", SHIPPED_CONFIG, "--weights", tmp_path / "checkpoint",
                                     "--dtype", "bfloat16", "--tests", "baseline,compression_gzip", "--runs", "1",
                                     "--output-dir", out, "--no-progress")
    assert status == 0, stderr
    document = json.loads((out / "results.json").read_text())
    assert document["weights"]["kind"] == "directory" and document["weights"]["dtype"] == "bfloat16"
    assert document["weights"]["n_params"] == sum(p.numel() for p in hf_model.parameters())
    assert all(r["verified"] for t in document["tests"] for r in t["runs"])


def test_output_dir_inside_the_weights_folder_is_refused(run_cli, tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "checkpoint")
    out = tmp_path / "checkpoint" / "bench"
    status, stdout, stderr = run_cli("--config", SHIPPED_CONFIG, "--weights", tmp_path / "checkpoint",
                                     "--runs", "1", "--output-dir", out, "--no-progress")
    assert status == 2 and len(stderr.splitlines()) == 1 and "inside the weights folder" in stderr
    assert not out.exists()


# Published parameter counts: LLaMA-2-7B 6,738,415,616; OpenLLaMA-3B 3,426,473,600; SmolLM2-135M 134,515,008.
LISTED = {"tiny": "1.3M", "smollm2-135m": "134.5M", "open_llama_3b": "3,426.5M", "llama-2-7b": "6,738.4M"}


def test_list_models(run_cli, tmp_path):
    status, stdout, stderr = run_cli("--list-models")
    assert status == 0 and stderr == ""
    rows = {line.split()[0]: line for line in stdout.splitlines()[2:] if line.strip()}
    for name, params in LISTED.items():
        assert name in rows, name
        assert params in rows[name].split(), (name, rows[name])
    assert "(default)" in rows["smollm2-135m"]
