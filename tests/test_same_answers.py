"""tune and explain give the same answers on the same measurements: a change that moves a decision fails here.

`tests/fixtures/same_answers.json` holds what the code answered for a few runs on the tiny
model and a made-up disk (`tests/synthetic.py`: each run's figures are a function of the
test's settings and a noise seeded by the stage, the test and the round, so the same suite
gives the same figures in any order). Each test here runs the same thing through today's
code with the same made-up disk and compares the same fields, rounded to 9 significant
digits as the fixture keeps them. A decision that changed (a rung, an elimination, a
winner) fails here by name.

The fixture was written by the code before the package was reshaped into subpackages, and
the reshaped code gave the same answers (commit 4ea566c). Entries are written again only
when a decision rule changes on purpose, by `python tests/test_same_answers.py --write KEY`,
and the commit says why: the tune entries when tune's cost model changed (the reference rows
in rung 0 and the final only, the device ceiling's grid once), and again when rung 0 put the
device ceiling after its first three candidates and the final kept the fastest peer until
it has the three runs an interval needs; and again when rung 0 ran the cheap candidates first
(t5x_full after the device ceiling, at least 12 listed), skipped those its measured codecs predict
more than 4x slower than the best, did not run again those measured that slow, and the final
judged the runner-up by Welch's test from two runs a side, and when the shipped space tried the
Run:ai streamer with a second setting (its `references` block: one more peer row in rung 0), and when
the space's `load_into` became one destination for every row, the peers' too (no longer an axis); the
explain entry when every change's interval became the one on the log of the ratio (results schema 4).

One test per command: the suite executor each one injects is `fake_suite` (what a real
`bench.suite.run_suite` does, with the made-up disk's records and a virtual clock).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import pytest
import synthetic
from conftest import REPO, SHIPPED_CONFIG

from ckptbench.bench.context import RunContext, Start
from ckptbench.core import records
from ckptbench.core.errors import Skip, Stopped
from ckptbench.documents import results
from ckptbench.sources import weights
from ckptbench.tune import session
from ckptbench.tune.session import Hooks
from ckptbench.tune.settings import Settings

if "explain_script" not in sys.modules:  # docs/explain/explain.py, the script beside its study
    _spec = importlib.util.spec_from_file_location("explain_script", REPO / "docs" / "explain" / "explain.py")
    sys.modules["explain_script"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["explain_script"])
explain = sys.modules["explain_script"]

FIXTURE = Path(__file__).with_name("fixtures") / "same_answers.json"
SIGNIFICANT_DIGITS = 9
# What results.json's schema requires of a machine (bench.environment.capture's keys); no answer reads it.
ENVIRONMENT = {"timestamp": "2025-01-01T00:00:00", "cpu_count": 2, "ram_bytes": 8 * 2**30}


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def rounded(value: Any) -> Any:
    """Floats to SIGNIFICANT_DIGITS, everywhere in a JSON value (how the fixture keeps them)."""
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(value, Mapping):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item) for item in value]
    return value


class Clock:
    """A virtual clock: a run's seconds pass when the fake suite says so, nothing else takes time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_suite(clock: Clock) -> Callable[..., results.Results]:
    """An executor in run_suite's place whose runs are the made-up disk's: each run's record comes from
    synthetic.record_for, its seconds pass on `clock`, and `may_start` stops the suite as run_suite does."""

    def execute(context: RunContext) -> results.Results:
        suite, observer = context.config, context.observer
        source = context.source or weights.load(suite.model, None, suite.dtype, suite.values)
        seed = suite.seed
        todo = records.plan([t.name for t in suite.tests], suite.num_runs, suite.warmup_rounds, seed, suite.order,
                            blocks=suite.blocks)
        observer.start(Start(source.describe(), len(suite.tests), suite.num_runs, suite.warmup_rounds, len(todo), seed, 0))
        done, stopped = [], None
        stage = suite.output_dir.name
        for planned in todo:
            reason = context.may_start(planned)
            if isinstance(reason, Skip):  # this run alone is not run, as run_suite does
                continue
            if reason is not None:
                stopped = Stopped.by_budget(reason)
                break
            observer.phase(planned, "save")
            record, seconds = synthetic.record_for(records.RunRecord, suite, stage, suite.test(planned.test), planned)
            clock.now += seconds
            record.started_at = time.time() - seconds
            done.append(record)
            observer.record(record)
        suite.output_dir.mkdir(parents=True, exist_ok=True)
        document = results.build(suite, source.describe(), done, ENVIRONMENT, seed, complete=stopped is None)
        outcome = results.Results(document, results.write(document, suite.output_dir))
        if stopped is not None:
            stopped.partial = outcome
            raise stopped
        return outcome

    return execute


# --- tune ------------------------------------------------------------------------------------------------

def tune_answers(document: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of tuning.json the fixture keeps: the answer, every stage's decision, every candidate's
    status, the Pareto front."""
    found = document["recommendation"]
    second = (found or {}).get("runner_up") or {}
    return rounded({
        "recommendation": None if found is None else {
            "test": found["test"], "runner_up": second.get("test"), "distinguishable": second.get("distinguishable"),
            "objective_mean": found["objective"]["mean"],
            "versus": {name: {"ratio": versus["ratio"], "verdict": versus["verdict"]}
                       for name, versus in found["versus"].items()}},
        "stopped_by": document["stopped_by"],
        "finalists": document["finalists"],
        "stages": [{key: stage[key] for key in ("name", "kind", "members", "status", "decision")}
                   for stage in document["stages"]],
        "candidates": {name: candidate["status"] for name, candidate in document["candidates"].items()},
        "pareto": document["pareto"],
    })


@pytest.mark.slow  # a whole tune
@pytest.mark.parametrize(("objective", "budget_s"), [("balanced", 600.0), ("load", 300.0), ("size", 200.0)])
def test_tune_gives_the_same_answers(tmp_path, golden, objective, budget_s):
    clock = Clock()
    tuning = session.run(Settings(output_dir=tmp_path / f"tune-{objective}", model="tiny", budget_s=budget_s,
                                  seed=4, objective=objective), Hooks(clock=clock, execute=fake_suite(clock)))
    answers, expected = tune_answers(tuning.document), golden[f"tune-{objective}"]
    for key in ("recommendation", "stopped_by", "finalists", "pareto"):
        assert answers[key] == expected[key], key
    assert [s["name"] for s in answers["stages"]] == [s["name"] for s in expected["stages"]]
    for stage, wanted in zip(answers["stages"], expected["stages"]):
        assert stage == wanted, stage["name"]
    assert answers["candidates"] == expected["candidates"]


# --- explain ---------------------------------------------------------------------------------------------

def explain_answers(document: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of explain.json the fixture keeps: the arms, the conditions, and per claim its label, its
    summary, its outcome under each arm and the effect of switching each condition."""
    return rounded({
        "arms": document["arms"],
        "conditions": document["conditions"],
        "claims": [{key: claim[key] for key in ("label", "summary", "arms", "effects")}
                   for claim in document["claims"]],
    })


def test_explain_gives_the_same_answers(tmp_path, golden):
    """`docs/explain/explain.py --model tiny --seed 4 --runs 3 --conditions all` with the shipped config."""
    settings = explain.Settings(config=SHIPPED_CONFIG, overrides={"model": "tiny", "seed": 4},
                                output_dir=tmp_path / "explain",  # the folder's name seeds the made-up noise
                                num_runs=3, conditions=tuple(c.name for c in explain.CONDITIONS))
    explained = explain.run(settings, execute=fake_suite(Clock()))
    assert explained.document["complete"] and json.loads(explained.path.read_text()) == explained.document
    answers, expected = explain_answers(explained.document), golden["explain"]
    assert answers["arms"] == expected["arms"]
    assert answers["conditions"] == expected["conditions"]
    assert [c["label"] for c in answers["claims"]] == [c["label"] for c in expected["claims"]]
    for claim, wanted in zip(answers["claims"], expected["claims"]):
        assert claim == wanted, claim["label"]


def _write(keys: list[str]) -> None:
    """Write the fixture's entries again from today's code (see the module docstring for when)."""
    import tempfile

    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        for objective, budget_s in (("balanced", 600.0), ("load", 300.0), ("size", 200.0)):
            key = f"tune-{objective}"
            if key in keys:
                clock = Clock()
                tuning = session.run(Settings(output_dir=Path(tmp) / key, model="tiny", budget_s=budget_s, seed=4,
                                              objective=objective), Hooks(clock=clock, execute=fake_suite(clock)))
                fixture[key] = tune_answers(tuning.document)
        if "explain" in keys:
            settings = explain.Settings(config=SHIPPED_CONFIG, overrides={"model": "tiny", "seed": 4},
                                        output_dir=Path(tmp) / "explain", num_runs=3,
                                        conditions=tuple(c.name for c in explain.CONDITIONS))
            fixture["explain"] = explain_answers(explain.run(settings, execute=fake_suite(Clock())).document)
    FIXTURE.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["--write"] or len(sys.argv) < 3:
        raise SystemExit("usage: python tests/test_same_answers.py --write tune-balanced|tune-load|tune-size|explain ...")
    _write(sys.argv[2:])
