"""Interrupting a real suite with SIGINT and SIGTERM, then resuming it.

A slow test (tiny chunks, one I/O at a time) gives saves and loads that last long
enough to be interrupted in the middle; the harness prints a line as each phase
starts when stderr is not a terminal, and the test signals on that line.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import act_on_stderr_line

from ckptbench.core import records

ROOT = Path(__file__).resolve().parents[1]
SUITE = {
    "model": "tiny",
    "testing": {"num_runs": 2},
    "test_configurations": [
        {"name": "slow", "chunk_size_elements": 256, "concurrency_limit": 1, "compression": "none"},
        {"name": "fast", "chunk_size_elements": 262144, "concurrency_limit": 16, "compression": "none"},
    ],
}


def _start(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run_phase4_streamlined.py"), "--config", str(config),
         "--output-dir", str(out), "--seed", "7", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _interrupt_at(proc: subprocess.Popen, marker: str, sig: int) -> tuple[int, str]:
    """Send sig when a stderr line contains marker; return (exit status, stderr)."""
    return act_on_stderr_line(proc, marker, lambda: proc.send_signal(sig), timeout=60)


def _resume(config: Path, out: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_phase4_streamlined.py"), "--config", str(config),
         "--output-dir", str(out), "--resume"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def _journal_runs(out: Path) -> list[dict]:
    lines = (out / "journal.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["type"] == "suite"
    return [json.loads(line) for line in lines[1:]]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(SUITE))
    return path


@pytest.mark.slow  # a suite interrupted and resumed in subprocesses
@pytest.mark.parametrize(
    ("marker", "sig", "status"),
    [
        ("slow round 1/2: save", signal.SIGINT, 130),  # during a save
        ("slow round 1/2: load", signal.SIGTERM, 143),  # during a load
        ("[1/4]", signal.SIGINT, 130),  # between runs
    ],
    ids=["sigint-during-save", "sigterm-during-load", "sigint-between-runs"],
)
def test_interrupt_keeps_finished_runs_and_resume_completes(config: Path, tmp_path: Path, marker: str, sig: int,
                                                            status: int) -> None:
    out = tmp_path / "out"
    code, stderr = _interrupt_at(_start(config, out), marker, sig)
    assert code == status, stderr
    assert "--resume" in stderr

    # Nothing half-written is left: no run folders at all.
    assert not (out / "runs").exists(), list((out / "runs").rglob("*"))
    journal_runs = _journal_runs(out)
    assert len(journal_runs) < 4
    document = json.loads((out / "results.json").read_text())
    assert document["complete"] is False
    recorded = sum(len(t["runs"]) for t in document["tests"])
    assert recorded == len(journal_runs)

    resumed = _resume(config, out)
    assert resumed.returncode == 0, resumed.stderr
    document = json.loads((out / "results.json").read_text())
    assert document["complete"] is True
    assert {t["name"]: len(t["runs"]) for t in document["tests"]} == {"slow": 2, "fast": 2}
    assert sorted((r["test"], r["round"]) for r in _journal_runs(out)) == [
        ("fast", 0), ("fast", 1), ("slow", 0), ("slow", 1)]
    assert all(r["verified"] for t in document["tests"] for r in t["runs"])
    assert not (out / "runs").exists()


@pytest.mark.slow  # a suite interrupted and resumed in subprocesses
def test_resume_refuses_a_different_suite(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _ = _interrupt_at(_start(config, out), "[1/4]", signal.SIGINT)
    assert code == 130
    before = (out / "journal.jsonl").read_bytes()
    changed = json.loads(config.read_text())
    changed["test_configurations"][1]["concurrency_limit"] = 8
    other = tmp_path / "other.json"
    other.write_text(json.dumps(changed))
    resumed = _resume(other, out, timeout=120)
    assert resumed.returncode == 2
    assert resumed.stderr.count("\n") == 1
    assert "concurrency_limit" in resumed.stderr or "config.tests" in resumed.stderr
    assert (out / "journal.jsonl").read_bytes() == before


def test_resume_without_a_journal_is_a_user_error(config: Path, tmp_path: Path) -> None:
    resumed = subprocess.run(
        [sys.executable, str(ROOT / "run_phase4_streamlined.py"), "--config", str(config),
         "--output-dir", str(tmp_path / "empty"), "--resume"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert resumed.returncode == 2
    assert "nothing to resume" in resumed.stderr
    assert not (tmp_path / "empty").exists()


def test_a_stop_while_a_run_folder_is_being_made_leaves_nothing(tmp_path: Path, tiny_weights, monkeypatch) -> None:
    """The signal can land between making a run's folder and marking it; the half-made folder goes too."""
    from ckptbench.bench import measure, workspace
    from ckptbench.core.errors import Stopped
    from ckptbench.spec import config as config_mod

    suite = config_mod.from_dict({**SUITE, "output_dir": str(tmp_path / "out")})
    workspace.prepare_output_dir(suite.output_dir)

    def made_then_stopped(output_dir: Path, name: str) -> Path:
        (output_dir / workspace.RUNS_DIR / name).mkdir(parents=True)  # made, not yet marked
        raise Stopped.by_signal(signal.SIGINT)

    monkeypatch.setattr(workspace, "new_run_dir", made_then_stopped)
    planned = list(records.plan(["slow"], 1, 0, seed=1))[0]
    with pytest.raises(Stopped):
        measure.run_once(planned, measure.backend_for(suite.test("slow"), suite), measure.Bench(suite, tiny_weights.tensors))
    assert list((suite.output_dir / workspace.RUNS_DIR).iterdir()) == []


@pytest.mark.slow  # a suite interrupted and resumed in subprocesses
def test_a_journal_written_before_new_settings_existed_still_resumes(config: Path, tmp_path: Path) -> None:
    """A suite interrupted by the previous version: its journal's config lacks the settings added since (tp,
    tp_save, load_into, the suite's load_into and each row's load_into_note). They take their defaults, so the
    suite resumes; a setting that differs still refuses."""
    out = tmp_path / "out"
    code, _ = _interrupt_at(_start(config, out), "[1/4]", signal.SIGINT)
    assert code == 130
    lines = (out / "journal.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header["config"].pop("tp")
    header["config"].pop("load_into")
    for test in header["config"]["tests"]:
        for key in ("tp", "tp_save", "load_into", "load_into_note"):
            test.pop(key)
    (out / "journal.jsonl").write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    resumed = _resume(config, out)
    assert resumed.returncode == 0, resumed.stderr
    document = json.loads((out / "results.json").read_text())
    assert document["complete"] is True and {t["name"]: len(t["runs"]) for t in document["tests"]} == {"slow": 2,
                                                                                                      "fast": 2}
