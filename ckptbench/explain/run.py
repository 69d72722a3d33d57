"""Running an explain: the user's config, the design, the one suite, the judgement, explain.json.

`run(settings)` loads the user's config, designs the arms, builds the one suite and runs it through
a `bench.context.Executor` (`bench.suite.run_suite` itself by default; a test injects one
that makes up its measurements), then judges every claim and writes OUTPUT_DIR/explain.json beside
the suite's results.json. Figures and console output are the caller's (the CLI draws explain.png
with explain.plot and prints `Explanation.answer()`).

The budget is a deadline enforced through run_suite's `may_start` hook: a run starts while the
budget is not spent, so the run in progress may end after it. When it is spent the suite stops as a
stop signal stops it: the runs so far are kept and explained, and `Stopped` (cause BUDGET, exit
status 1) is raised with the partial `Explanation` attached as `.partial`; `resume=True` with the
same settings continues. A warning comes early when the pace will overrun the budget, so the user
can stop and size the suite instead of waiting for a partial answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ckptbench.analysis.samples import samples
from ckptbench.bench import environment
from ckptbench.bench.context import Callbacks, Executor, RunContext
from ckptbench.core.errors import Stopped
from ckptbench.documents.store import Document
from ckptbench.explain import document as explain_json
from ckptbench.explain.design import Design, build_suite, design, setup_of
from ckptbench.explain.words import answer
from ckptbench.sources import weights
from ckptbench.spec import config as config_mod

DEFAULT_BUDGET_S = 20 * 60.0  # a guard: the default model's explain took 12 min on a quiet 2-core machine
DEFAULT_RUNS = 3
OUTPUT_NAME = "explain"  # beside the config's output folder: saved_models/explain by default
# The pace is judged once this share of the runs is done (and at least WARN_AFTER_RUNS): earlier
# runs are too few to say whether the budget will be overrun.
WARN_AFTER_SHARE = 0.1
WARN_AFTER_RUNS = 3


@dataclass(frozen=True)
class Settings:
    """What an explain measures, as its flags give it."""

    config: Path  # the user's config, whose claims are explained
    overrides: Mapping[str, Any] = field(default_factory=dict)  # spec.config.load's: model, weights, seed, ...
    output_dir: Path | None = None  # None: OUTPUT_NAME beside the config's output folder
    num_runs: int = DEFAULT_RUNS  # per test and arm
    tests: tuple[str, ...] | None = None  # None: every test with an expected range (the baseline always)
    conditions: tuple[str, ...] | None = None  # None: every condition on by default
    budget_s: float = DEFAULT_BUDGET_S
    resume: bool = False  # continue an interrupted explain in output_dir


class Explanation(Document):
    """An explain.json as written (`document`, `path`), the design it judged and the suite's results."""

    def __init__(self, document: dict[str, Any], path: Path, design_: Design, results: Any) -> None:
        super().__init__(document, path)
        self.design = design_
        self.results = results  # documents.results.Results: the suite's raw runs

    @property
    def claims(self) -> list[dict[str, Any]]:
        return self.document["claims"]

    @property
    def failed_runs(self) -> int:
        return int(self.results.failed_runs)

    def answer(self) -> list[str]:
        """The console's short answer: what was compared, then one line per claim."""
        return answer(self.document)


def _ignore(*_args: Any) -> None:
    pass


def run(settings: Settings, *, execute: Executor | None = None, writers: Any = None,
        on_start: Callable[[Any], None] = _ignore, on_phase: Callable[[Any, str], None] = _ignore,
        on_record: Callable[[Any], None] = _ignore, on_message: Callable[[str], None] = _ignore,
        clock: Callable[[], float] = time.monotonic) -> Explanation:
    """Explain the config's claims (module docstring); explain.json is written beside the suite's results.

    `execute`: runs the suite (None: bench.suite.run_suite), with `writers` (None: this host's,
    parallel.local.LocalWriters). on_start, on_phase and on_record are run_suite's progress callbacks;
    on_message(text) receives explain's own lines (the suite's size and budget, the pace warning).
    A stop (the budget, a signal) raises `Stopped` with the partial Explanation as `.partial`, or None
    when the suite stopped before it wrote any results."""
    if execute is None:  # imported here: TensorStore loads only when a suite runs, not for --help
        from ckptbench.bench.suite import run_suite as execute
    if writers is None:
        from ckptbench.parallel.local import LocalWriters

        writers = LocalWriters()
    design_, suite = designed(settings)
    pace = _Pace(settings.budget_s, clock, on_start, on_record, on_message)
    try:
        outcome = execute(RunContext(suite, writers, Callbacks(pace.start, on_phase, pace.finished), pace.may_start,
                                     resume=settings.resume))
    except Stopped as stop:
        if stop.partial is not None:  # the runs so far are explained too
            stop.partial = _explain(design_, stop.partial)
        raise
    return _explain(design_, outcome)


def designed(settings: Settings) -> tuple[Design, Any]:
    """The design of an explain and the one suite that measures it (spec.suite.SuiteConfig), from its settings."""
    user = config_mod.load(settings.config, **settings.overrides)
    output_dir = Path(settings.output_dir).resolve() if settings.output_dir else user.output_dir.parent / OUTPUT_NAME
    shapes = None if user.weights is not None else [s for _, s in weights.preset_shapes(user.model)]
    design_ = design(setup_of(user, settings.tests, shapes), settings.conditions)
    return design_, build_suite(design_, user, output_dir, settings.num_runs)


def _explain(design_: Design, outcome: Any) -> Explanation:
    """Judge a suite's results (documents.results.Results) and write explain.json beside them."""
    results = outcome.document
    data_bytes = int(results["weights"]["size_bytes"])
    measured = {t["name"]: samples(t["runs"], data_bytes) for t in results["tests"]}
    document = explain_json.build(design_, results, measured, tool=environment.tool_info())
    path = explain_json.write(document, Path(outcome.path).parent)
    return Explanation(document, path, design_, outcome)


class _Pace:
    """The budget on the suite's callbacks: stops new runs once it is spent, warns once when the pace will
    overrun it, and passes every callback on."""

    def __init__(self, budget_s: float, clock: Callable[[], float], on_start: Callable[[Any], None],
                 on_record: Callable[[Any], None], on_message: Callable[[str], None]) -> None:
        self.budget_s, self.clock = budget_s, clock
        self.on_start, self.on_record, self.on_message = on_start, on_record, on_message
        self.started_s = clock()
        self.total_runs = self.done_runs = 0
        self.warned = False

    def start(self, start: Any) -> None:
        """The budget counts from the suite's first run (its checks and weights come before)."""
        self.started_s = self.clock()
        self.total_runs = start.total_runs
        self.on_start(start)
        self.on_message(f"explain: {start.n_tests} tests (arms x tests, shared ones measured once) x "
                        f"{start.num_runs} runs; budget {self.budget_s / 60:.3g} min")

    def may_start(self, _planned: Any) -> str | None:
        """A run starts while the budget is not spent (the run in progress may end after it)."""
        if self.clock() - self.started_s > self.budget_s:
            return f"the --budget of {self.budget_s / 60:.3g} min"
        return None

    def finished(self, record: Any) -> None:
        self.on_record(record)
        self.done_runs += 1
        if self.done_runs >= self.total_runs or self.warned:
            return
        projected_s = (self.clock() - self.started_s) / self.done_runs * self.total_runs
        if self.done_runs >= max(WARN_AFTER_RUNS, int(self.total_runs * WARN_AFTER_SHARE)) \
                and projected_s > self.budget_s:
            self.warned = True
            self.on_message(f"warning: at this pace the suite needs about {projected_s / 60:.0f} min, over the "
                            f"budget of {self.budget_s / 60:.3g} min; it will stop at the budget (--resume "
                            "continues), or use fewer --runs, --tests or --conditions")
