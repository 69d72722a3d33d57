"""The text of a dry run: what a suite would measure and need, and the pre-check's verdict (nothing measured)."""

from __future__ import annotations

from typing import Any, Mapping

from ckptbench.core.units import duration_label, human_bytes
from ckptbench.documents.store import weights_name


def text(plan: Mapping[str, Any], what: str = "the suite") -> str:
    """A preflight's plan (bench.preflight.Preflight.to_json) in a few lines."""
    w = plan["weights"]
    values = f", values {w['values']}" if w.get("values") else ""
    confirming = plan.get("confirmation_runs")
    confirming = f" + at most {confirming} confirmation runs" if confirming else ""
    lines = [f"dry run of {what}: {plan['tests']} tests x {plan['runs_per_test']} runs{confirming} = {plan['runs']:,} "
             "runs, "
             f"{plan['order']} order; nothing is measured or written",
             f"weights: {weights_name(w)} ({human_bytes(w['size_bytes'])} {w['dtype']}{values})",
             f"estimated wall time: about {duration_label(plan['estimate_s'])} (priors measured on a 2-core VM; a "
             "run shows its own pace as it goes)"]
    if plan["disk_need_bytes"] is not None:
        lines.append(f"disk: about {human_bytes(plan['disk_need_bytes'])} at once in {plan['output_dir']} "
                     f"({human_bytes(plan['disk_free_bytes'])} free)")
    available = plan["memory_available_bytes"]
    lines.append(f"memory: about {human_bytes(plan['memory_need_bytes'])} of anonymous memory at the peak (test "
                 f"{plan['hungriest']!r})" + (f", {human_bytes(available)} available" if available else ""))
    lines.append("pre-check: passes" if plan["refusal"] is None else f"pre-check: refused: {plan['refusal']}")
    return "\n".join(lines)
