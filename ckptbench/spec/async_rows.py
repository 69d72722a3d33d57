"""Which tests can save asynchronously (`save_mode: "async"`, bench.async_save), and why the others cannot."""

from __future__ import annotations

from typing import Sequence

from ckptbench.spec.fields import TestSpec


def test_refusal(test: TestSpec) -> str | None:
    """Why a test's own settings rule out its save mode's, or None."""
    if test.save_mode != "async":
        return None  # train_step_bytes sizes nothing here: a sweep over save_mode gives it to both points
    if test.in_flight != "all":
        return "save_mode \"async\" issues every write at once, and in_flight \"one_tensor\" awaits each tensor's; " \
               "use one of them"
    if test.timed_conversion:
        return "save_mode \"async\" returns once the weights may change, and timed_conversion casts them inside " \
               "the save's clock, as the original did; use one of them"
    return None


def suite_refusal(test: TestSpec, processes: Sequence[int]) -> str | None:
    """Why the suite's settings (--tp, --processes) rule out a test's async save, or None."""
    if test.save_mode != "async":
        return None
    if test.tp > 1:
        return (f"save_mode \"async\" measures one trainer's save beside its training steps, and tp {test.tp} loads "
                "with reader processes; drop --tp (or the test's tp) or use save_mode \"sync\"")
    if max(processes, default=1) > 1:
        return ("save_mode \"async\" measures one process's save beside its training steps, and --processes "
                "writes with several; drop --processes or use save_mode \"sync\"")
    return None
