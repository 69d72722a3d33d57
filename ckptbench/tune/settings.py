"""What a tune measures and how long it may take: the settings, their defaults and their checks. The settings
also build every suite a tune runs (`Settings.suite_data`: one testing block for every stage and the space)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ckptbench.core.errors import UserError
from ckptbench.core.units import duration_label
from ckptbench.spec import tensor_parallel
from ckptbench.spec.config import suite_data
from ckptbench.spec.references import CEILING, REFERENCES, rows_of
from ckptbench.spec.suite import OBJECTIVES

SPACE_FILE = Path(__file__).with_name("tune_space.json")  # in the package (pip installs it); sweeps/ links to it
DEFAULT_OBJECTIVE = "balanced"
DEFAULT_BUDGET_S = 600.0
MIN_BUDGET_S = 10.0
# The reference rows a tune measures unless told otherwise: the format most checkpoints ship in, the fastest
# streaming loader measured here (docs/measurements), and the disk's own ceiling. Each costs a run of the
# model's size in rung 0 (the ceiling its whole grid), so the default keeps a tune of a 7 GB model within
# 12 minutes; `--references all` measures every kind.
DEFAULT_REFERENCES = ("safetensors", "runai_streamer", CEILING)


@dataclass(frozen=True)
class Settings:
    """What a tune measures and how long it may take."""

    output_dir: Path
    model: str | None = None
    weights: str | None = None
    dtype: str = "float32"
    values: str = "random"
    storage: str | None = None
    objective: str = DEFAULT_OBJECTIVE
    budget_s: float = DEFAULT_BUDGET_S
    seed: int | None = None
    space_path: Path = SPACE_FILE
    cache_eviction: str = "auto"
    noise_pct: float = 5.0
    keep_checkpoint: bool = False
    reference_kinds: tuple[str, ...] = DEFAULT_REFERENCES
    # The space's `references` block: per kind, the settings its rows are tried with (spec.references.rows_of);
    # a kind it does not list runs at its defaults. Set from the space (the state's, on resume), not a flag.
    reference_rows: Mapping[str, Any] = field(default_factory=dict)
    tp: int = 1  # > 1: every candidate (and reference row) loaded by tp readers, each its tensor-parallel slice
    load_into: str = "new"  # every row's destination, the candidates' and the peers' alike: the space's `load_into`

    @property
    def metric(self) -> str:
        """The figure the objective minimises: balanced -> total_s, size -> size_bytes..."""
        return OBJECTIVES[self.objective]

    @property
    def references(self) -> list[str]:
        """The reference rows by name: each kind of reference_kinds, once per setting the space tries it with; none
        with an object store (they write local files: the suite would skip them, and the budget must not count them)."""
        if "://" in (self.storage or ""):
            return []
        return [name for kind, value in self._reference_values().items() for name, _ in rows_of(kind, value)]

    def _reference_values(self) -> dict[str, Any]:
        return {kind: self.reference_rows.get(kind, True) for kind in REFERENCES if kind in self.reference_kinds}

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed tune must share with the interrupted one: what changes the measurements."""
        return {"model": self.model, "weights": self.weights, "dtype": self.dtype, "values": self.values,
                "storage": self.storage, "objective": self.objective, "cache_eviction": self.cache_eviction,
                "noise_pct": self.noise_pct, "reference_kinds": list(self.reference_kinds),
                **({"tp": self.tp} if self.tp > 1 else {})}  # a tune of tp 1 keeps the fingerprint it had

    def suite_data(self, tests: list[dict[str, Any]], output_dir: Path, *, references: bool,
                   seed: int) -> dict[str, Any]:
        """A suite config of `tests` run once each (a stage of successive halving), in the order given."""
        testing = {"num_runs": 1, "warmup_rounds": 0, "seed": seed, "order": "blocked",
                   "cache_eviction": self.cache_eviction, "noise_pct": self.noise_pct, "load_into": self.load_into}
        data = suite_data(tests, output_dir=output_dir, testing=testing, model=self.model, weights=self.weights,
                          dtype=self.dtype, values=self.values, storage=self.storage,
                          references=self._reference_values() if references and self.references else ())
        if self.tp > 1:
            data["tp"] = self.tp
        return data


def check_settings(settings: Settings) -> None:
    """Refuse, in one line naming the flag, what cannot give an answer."""
    unknown = sorted(set(settings.reference_kinds) - set(REFERENCES))
    if unknown:
        raise UserError(f"--references: no reference row {unknown[0]!r}; use some of {', '.join(REFERENCES)}, or all")
    if settings.objective not in OBJECTIVES:
        raise UserError(f"--objective: {settings.objective!r} is not one of {', '.join(OBJECTIVES)}")
    if not settings.budget_s >= MIN_BUDGET_S:
        raise UserError(f"--budget: {duration_label(settings.budget_s)} is too short; give at least "
                        f"{duration_label(MIN_BUDGET_S)} (e.g. 5m)")
    why = tensor_parallel.refusal(settings.tp, settings.model if settings.weights is None else None, None)
    if why is not None:
        raise UserError(why)
    if (settings.storage or "").startswith("memory://"):
        raise UserError("--storage: memory:// measures no disk, and tune looks for the best layout on a disk; "
                        "give a folder or an object store")
