"""tuning.json: the answer first, then how it was found (every stage, every candidate, the budget). A file of
kind "tuning" (documents.store.Kind, `tuning.schema.json`); the console text (tune.report) and the figure
(tune.plot) read it and compute nothing, so everything they show is in here.

Versions: 1 (ckptbench 0.2.0) had no kind; 2 has `"kind": "tuning"`, nothing else changed; 3 has one interval
per summary, as results.json's version 5: `ci95` is the log-scale interval that version 2 called `ci95_log`. Later in
3, without a bump: `load_into` (every row's destination) and each reference row's; rows' `blocked_s` and
`commit_s` summaries, measured for async saves only, whose `save_s` is then the training time lost per checkpoint
(policy.gather); files without them ranked every save by save_s.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from ckptbench.analysis import stats
from ckptbench.documents import results
from ckptbench.documents.store import Document, Kind
from ckptbench.spec.fields import entry
from ckptbench.spec.references import kind_of
from ckptbench.tune.answer import describe_layout, summaries
from ckptbench.tune.loop import Session
from ckptbench.tune.policy import FIGURES, PRIOR_DF, PRIOR_LOG_SD, gather, pareto
from ckptbench.tune.state import TuneState

TUNING_FILE = "tuning.json"
SCHEMA_VERSION = 3


def _upgrade_2_to_3(document: Any) -> Any:
    """Every summary's symmetric `ci95` is replaced by its `ci95_log`, the log-scale interval of the same runs."""
    if isinstance(document, list):
        return [_upgrade_2_to_3(item) for item in document]
    if not isinstance(document, dict):
        return document
    if "ci95_log" in document and "ci95" in document:
        document["ci95"] = document.pop("ci95_log")
    return {key: _upgrade_2_to_3(value) for key, value in document.items()}


TUNING = Kind("tuning", SCHEMA_VERSION, "tuning.schema.json", upgrades={1: lambda document: document,
                                                                     2: _upgrade_2_to_3},
              legacy_version=lambda document: 1 if document.get("schema_version") == 1 else None)


class Tuning(Document):
    """A tuning document, as `tune.run` returns it and `read` loads it."""

    plot_path: Path | None = None  # tuning.png, once drawn (None: not drawn, or nothing measured to draw)

    @property
    def recommendation(self) -> dict[str, Any] | None:
        return self.document["recommendation"]


def write(document: Mapping[str, Any], folder: Path) -> Path:
    """Validate and write folder/tuning.json atomically (a reader never sees half a file)."""
    return TUNING.write(Path(folder) / TUNING_FILE, document)


def read(path: Path | str) -> Tuning:
    """A tuning.json of any version this tool wrote, upgraded to the current one and validated."""
    return Tuning(TUNING.read(path), Path(path))


def _status(name: str, state: TuneState, winner: str | None, runner_up: str | None) -> str:
    for status, members in (("winner", [winner]), ("runner-up", [runner_up]), ("finalist", state.finalists),
                            ("eliminated", state.eliminated), ("survivor", state.alive)):
        if name in members:
            return status
    return "not a finalist"


def build(session: Session, recommendation: dict[str, Any] | None = None, paste: dict[str, Any] | None = None, *,
          complete: bool = True) -> dict[str, Any]:
    """tuning.json from the session's state and every stage's results document; an interrupted tune's
    (`complete` False) has no recommendation."""
    from ckptbench.bench.environment import tool_info

    state, documents, universe, settings = session.state, session.documents, session.universe, session.settings
    samples = gather(documents.values())
    winner = (recommendation or {}).get("test")
    runner_up = ((recommendation or {}).get("runner_up") or {}).get("test")
    ran = {t["name"] for document in documents.values() for t in document["tests"] if t["runs"]}
    measured = [n for n in samples if n in ran and kind_of(n) is None and n in universe.tests]
    candidates: dict[str, dict[str, Any]] = {name: {
        "settings": entry(universe.tests[name]), "layout": describe_layout(universe.tests[name]),
        "status": _status(name, state, winner, runner_up), "eliminated": state.eliminated.get(name),
        "stages": [s.name for s in state.stages if name in s.members and s.name in documents],
        "stats": {m: stats.summarize(samples[name][m]) for m in FIGURES if not m.endswith("_gbps")},
    } for name in measured}
    points = {n: (c["stats"]["save_s"]["mean"], c["stats"]["load_s"]["mean"]) for n, c in candidates.items()
              if c["stats"]["save_s"]["n"]}
    first = documents.get("rung-0") or next(iter(documents.values()), None)
    destinations = {t["name"]: t["settings"].get("load_into") for d in documents.values() for t in d["tests"]}
    return TUNING.stamp({
        "tool": tool_info(), "complete": complete, "objective": settings.objective, "metric": settings.metric,
        "seed": state.seed, "recommendation": recommendation, "paste": paste,
        "stopped_by": state.stopped_by if complete else "interrupted", "weights": state.weights,
        "environment": (first or {}).get("environment"),
        "storage": ((first or {}).get("protocol") or {}).get("storage"),
        "budget": {"budget_s": state.budget_s, "spent_s": state.spent_s, "setup_s": state.setup_s,
                   "estimate": state.plan.to_json(), "corrected": state.corrected,
                   "durations": state.durations.to_json()},
        "noise_model": {"kind": "pooled log-scale spread of repeated runs, with a prior",
                        "prior_log_sd": PRIOR_LOG_SD, "prior_df": PRIOR_DF,
                        "last": next((s.decision["noise"] for s in reversed(state.stages)
                                      if s.decision and s.decision.get("noise")), None)},
        "space": {"path": state.space_path, "data": state.space,
                  "n_candidates": len(universe.tests), "n_skipped": len(universe.skipped),
                  "skipped_reasons": dict(Counter(reason for _, reason in universe.skipped)),
                  "n_duplicates": len(universe.duplicates),
                  "sampled": state.rung0_order, "not_measured": state.not_measured,
                  "predicted_hopeless": {n: e for n, e in state.eliminated.items() if e.get("skipped")}},
        "stages": [asdict(stage) | {"results": f"{stage.name}/{results.RESULTS_FILE}"} for stage in state.stages],
        "finalists": state.finalists,
        "candidates": candidates,
        "load_into": settings.load_into,  # every row's, peers too (a row that cannot says why in its results)
        "references": {name: {"stats": summaries(samples[name]), "load_into": destinations.get(name)}
                       for name in samples if kind_of(name) is not None},
        "pareto": pareto(points),
    })
