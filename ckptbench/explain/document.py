"""explain.json: the design, each claim under each arm, and the summaries, as a versioned document.

It is a file of kind "explanation" (documents.store.Kind): it names its kind and `schema_version`
first, `documents/schemas/explain.schema.json` is its contract, and every version this tool wrote
reads back through the upgrade chain, so a reader never needs to know which version wrote a file.
It lies beside the suite's results.json, which holds the raw runs it was judged from.

Version history:
- 1: named its version in `explain_version`, with no kind.
- 2: `"kind": "explanation", "schema_version": 2`, as every file the harness writes; nothing else changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ckptbench.documents import store
from ckptbench.explain.conditions import NOT_MODELLED
from ckptbench.explain.design import Design
from ckptbench.explain.judge import Samples, judge

EXPLAIN_VERSION = 2
EXPLAIN_FILE = "explain.json"


def _upgrade_1_to_2(document: dict[str, Any]) -> dict[str, Any]:
    """Version 1 named its version in `explain_version`; Kind.upgrade stamps the kind and the new version."""
    return {k: v for k, v in document.items() if k != "explain_version"}


EXPLANATION = store.Kind("explanation", EXPLAIN_VERSION, "explain.schema.json", upgrades={1: _upgrade_1_to_2},
                         legacy_version=lambda document: 1 if document.get("explain_version") == 1 else None)


def build(design_: Design, results: Mapping[str, Any], samples: Samples,
          tool: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """explain.json from the design, the suite's results document (its weights, protocol and completeness)
    and its samples per suite test: each claim judged under each arm, with its summary."""
    weights = results["weights"]
    protocol = results["protocol"]
    return EXPLANATION.stamp({
        "tool": dict(tool or results.get("tool") or {}),
        "complete": bool(results["complete"]),
        "results_file": "results.json",
        "weights": dict(weights),
        "weights_label": f"{store.weights_name(weights)} ({weights['dtype']}, values {weights.get('values')})",
        "num_runs": protocol["num_runs"],
        "seed": protocol["seed"],
        "noise_pct": protocol["noise_pct"],
        "blocks": protocol.get("blocks", []),
        "n_user_tests": len({t for arm in design_.arms for t in arm.tests}),
        "baseline": design_.baseline,
        "conditions": [dict(c) for c in design_.conditions],
        "not_modelled": [dict(n) for n in NOT_MODELLED],
        "arms": [{"name": a.name, "conditions": list(a.conditions), "tests": dict(a.tests),
                  "warm_loads": list(a.warm_loads)} for a in design_.arms],
        "claims": judge(design_, samples, float(protocol["noise_pct"]),
                        preset_values=weights.get("kind") == "preset"),
    })


def validate(document: Any, source: str = EXPLAIN_FILE) -> None:
    """Raise a one-line UserError naming the first field that breaks explain.schema.json."""
    EXPLANATION.validate(document, source)


def write(document: Mapping[str, Any], folder: Path) -> Path:
    """Validate and write folder/explain.json atomically (a reader never sees half a file)."""
    return EXPLANATION.write(Path(folder) / EXPLAIN_FILE, document)


def read(path: Path | str) -> dict[str, Any]:
    """An explain.json of any version this tool wrote, upgraded to the current one and validated."""
    return EXPLANATION.read(path)
