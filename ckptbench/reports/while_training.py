"""The console's "checkpoint while training" lines: async saves' answer (documents.while_training)."""

from __future__ import annotations

from typing import Any, Mapping

from ckptbench.core.units import human_bytes
from ckptbench.documents.while_training import WELL_BELOW


def lines(document: Mapping[str, Any]) -> list[str]:
    """Nothing without async rows; else the two objectives' rows, each async row's blocked time against its sync
    save, and what the stand-in step shares with the writers."""
    answer = document.get("while_training")
    if not answer:
        return []
    rows = {row["test"]: row for row in answer["rows"]}
    least, soonest = rows[answer["least_training_lost"]], rows[answer["shortest_to_durable"]]
    slowdown = ("no step ran beside the write" if least["step_slowdown"] is None
                else f"steps {100 * least['step_slowdown']:+.0f} % during the write")
    out = [f"  checkpoint while training (async saves): least training time lost per checkpoint: {least['test']} "
           f"{least['training_lost_s']:.3g} s{_interval(least)} (blocked {least['blocked_s']:.3g} s, "
           f"{slowdown}, staged {human_bytes(least['staging_bytes'] or 0)}); shortest time to durable: "
           f"{soonest['test']} {soonest['commit_s']:.3g} s"]
    paired = [row for row in answer["rows"] if row["blocked_vs_sync_save"] is not None]
    if paired:
        out.append("    blocked as a share of the same row's sync save: " + ", ".join(
            f"{row['test']} {100 * row['blocked_vs_sync_save']:.0f} %" for row in paired))
    slow = [row["test"] for row in paired if row["kind"] == "tensorstore" and row["blocked_vs_sync_save"] >= WELL_BELOW]
    if slow:
        out.append(f"    {', '.join(slow)}: blocked is not well below the sync save: most of that save comes before "
                   "TensorStore's copy futures resolve (opening the arrays and writing their metadata, copying the "
                   "data into chunks), which the loop must wait for")
    out.append(f"    {answer['note']}")
    return out


def _interval(row: Mapping[str, Any]) -> str:
    """' [-0.01 to 0.02]': the mean's 95 % interval; where it reaches below zero, the steps' noise is larger than
    what the write took from them."""
    interval = row.get("training_lost_ci95")
    if interval is None:
        return ", too few runs for a CI"
    below = ", below zero: within the steps' noise" if interval[0] < 0 else ""
    return f" [{interval[0]:.3g} to {interval[1]:.3g}{below}]"
