"""The answer for async saves (bench.async_save): which row costs training least per checkpoint, which is durable
soonest, and each async row against its own sync save. Derived from the tests' statistics alone."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

# Settings that do not make two rows different checkpoints: an async row's sync twin differs only in these
_MODE_KEYS = ("name", "description", "save_mode", "async_checkpointer", "train_step_bytes", "sweep",
              "compression_label")
WELL_BELOW = 0.5  # blocked under half the sync save: the loop gets most of a save's time back
NOTE = ("the stand-in training step runs on the CPU, as the writers do: on a CPU-only machine they compete for the "
        "same cores (on an accelerator the step's compute would not)")


def is_async(test: Mapping[str, Any]) -> bool:
    return (test.get("settings") or {}).get("save_mode", "sync") == "async"


def _mean(test: Mapping[str, Any], metric: str) -> float | None:
    summary = test["stats"].get(metric) or {}
    return summary.get("mean") if summary.get("n") else None


def _twin(test: Mapping[str, Any], tests: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The sync row with the same settings apart from the save mode, if the suite has one."""
    def key(t: Mapping[str, Any]) -> dict[str, Any]:
        settings = {k: v for k, v in (t.get("settings") or {}).items() if k not in _MODE_KEYS}
        own = {k: v for k, v in (settings.get("reference_settings") or {}).items() if k not in _MODE_KEYS}
        return {**settings, "reference_settings": own}  # DCP's async_checkpointer is a row's own setting
    return next((t for t in tests if not is_async(t) and key(t) == key(test)), None)


def derive(tests: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """None without async rows that succeeded; else the two objectives' winners and every async row's figures."""
    rows = [t for t in tests if is_async(t) and _mean(t, "training_lost_s") is not None]
    if not rows:
        return None
    out_rows = []
    for test in rows:
        twin = _twin(test, tests)
        sync_save_s = None if twin is None else _mean(twin, "save_s")
        blocked_s = _mean(test, "blocked_s")
        out_rows.append({"test": test["name"], "kind": test["kind"],
                         "sync_test": None if twin is None else twin["name"],
                         **{m: _mean(test, m) for m in ("blocked_s", "commit_s", "staging_bytes", "step_alone_s",
                                                        "step_slowdown", "training_lost_s")},
                         "training_lost_ci95": (test["stats"].get("training_lost_s") or {}).get("ci95"),
                         "sync_save_s": sync_save_s,
                         "blocked_vs_sync_save": None if not sync_save_s or blocked_s is None
                         else blocked_s / sync_save_s})
    least = min(out_rows, key=lambda r: r["training_lost_s"])
    soonest = min(out_rows, key=lambda r: r["commit_s"])
    return {"least_training_lost": least["test"], "shortest_to_durable": soonest["test"], "rows": out_rows,
            "note": NOTE}
