"""The state of a tune, saved as tune_state.json (atomically, fsync'd) after every run: the settings, the
space, the seed, every stage's members and status, the survivors, the eliminated with their reasons and the
measured durations. Ctrl-C keeps everything; `resume` continues the interrupted stage through its journal.

The file is of kind "tune state" (documents.store.Kind, `tune_state.schema.json`). Versions: 1 (ckptbench
0.2.0) named its format in `"format": "ckptbench-tune-state-1"`; 2 has the kind and `schema_version`, nothing
else changed, so a tune interrupted by version 1 resumes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ckptbench.core.errors import UserError
from ckptbench.documents.store import Kind
from ckptbench.tune.budget import Durations, Plan

STATE_FILE = "tune_state.json"
STATE_VERSION = 2
RUNNING, COMPLETE, BUDGET = "running", "complete", "budget"  # a stage's status (BUDGET: stopped by the budget)
HALVING, FINAL = "halving", "final"  # a stage's kind


@dataclass
class Stage:
    """One suite of the search: a halving rung (rung-N) or a final round (final-N)."""

    name: str
    kind: str  # HALVING or FINAL
    members: list[str]  # the suite's tests in running order, the reference rows among them
    seed: int
    deadline_s: float  # budget time by which its last run must end
    status: str = RUNNING  # RUNNING until its decision is made, then COMPLETE or BUDGET
    started_s: float | None = None
    ended_s: float | None = None
    planned_s: float = 0.0
    decision: dict[str, Any] | None = None  # halving: ranking, kept, cut, eliminated...; final: winner, separated...
    figures: dict[str, Any] | None = None  # each test's runs in this stage


@dataclass
class TuneState:
    """Everything a tune has decided and measured so far; the loop replaces it whole."""

    settings: dict[str, Any]  # Settings.fingerprint(): what a resumed tune must share with the interrupted one
    seed: int
    budget_s: float
    spent_s: float
    setup_s: float | None  # making the weights and the universe, before the plan
    keep_checkpoint: bool
    space_path: str
    space: dict[str, Any]  # the space file's data, so a resume needs no file
    weights: dict[str, Any]  # the weights' description, checked again on resume
    plan: Plan
    rung0_order: list[str]
    durations: Durations
    stages: list[Stage] = field(default_factory=list)
    phase: str = "halving"  # halving rungs, then final rounds, then "finishing" (writing the answer), then "done"
    alive: list[str] = field(default_factory=list)  # the candidates the halving keeps
    finalists: list[str] = field(default_factory=list)
    eliminated: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {stage, reason, ...}
    not_measured: list[str] = field(default_factory=list)  # listed in rung 0, but the budget ended first
    corrected: dict[str, Any] | None = None  # rung 0's estimate against its measurements
    stopped_by: str | None = None  # why the search ended

    @property
    def stage(self) -> Stage | None:
        """The latest stage, if any."""
        return self.stages[-1] if self.stages else None

    def to_json(self) -> dict[str, Any]:
        """The file's body (version 1's layout, which version 2 keeps)."""
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("space_path", "space")}
        return body | {"space": {"path": self.space_path, "data": self.space}, "plan": self.plan.to_json(),
                       "durations": self.durations.to_json(), "stages": [asdict(stage) for stage in self.stages]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TuneState:
        """A state from a validated file body (`TUNE_STATE.read`)."""
        body = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**body | {
            "space_path": data["space"]["path"], "space": data["space"]["data"], "plan": Plan(**data["plan"]),
            "durations": Durations.from_json(data["durations"], int(data["weights"]["size_bytes"])),
            "stages": [Stage(**stage) for stage in data["stages"]]})


def _upgrade_1_to_2(document: dict[str, Any]) -> dict[str, Any]:
    """Version 1 named its format in `format`, and measured the three reference rows it knew; Kind.upgrade stamps
    the kind and the new version."""
    out = {k: v for k, v in document.items() if k != "format"}
    if isinstance(out.get("settings"), dict):  # else the schema names what is missing
        out["settings"] = {"reference_kinds": ["safetensors", "torch_save", "device_ceiling"], **out["settings"]}
    return out


TUNE_STATE = Kind("tune state", STATE_VERSION, "tune_state.schema.json", upgrades={1: _upgrade_1_to_2},
                  legacy_version=lambda document: 1 if document.get("format") == "ckptbench-tune-state-1" else None)


def save(state: TuneState, folder: Path) -> Path:
    """Write folder/tune_state.json atomically and durably: a stop at any moment leaves the last whole state."""
    return TUNE_STATE.write(Path(folder) / STATE_FILE, state.to_json())


def load(folder: Path) -> TuneState:
    """The state of the tune interrupted in folder, of any version this tool wrote; one line saying what to
    do when there is none or it cannot be read."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise UserError(f"--resume: no {STATE_FILE} in {folder}; there is no tune to resume there")
    try:
        return TuneState.from_json(TUNE_STATE.read(path))
    except UserError as exc:
        raise UserError(f"--resume: {exc}; start afresh without --resume") from None
