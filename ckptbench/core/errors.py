"""The two ways a command ends early: a mistake the user can fix, and a stop.

The CLI prints a UserError as a single line (no traceback) and exits with status 2, like asv does; anything else is a
bug and keeps its traceback. A `Stopped` is not an error: a signal, a budget or a lost rank ended the work early, and
what was measured before it (`partial`) is kept and can be resumed.
"""

from __future__ import annotations

import signal
from typing import Any


class UserError(Exception):
    """Bad input: the message names the field or file and says how to fix it."""

    exit_status = 2


class Stopped(BaseException):
    """The work stopped before its end; `partial` holds what it measured (attached on the way out). A
    BaseException, so that `except Exception` (a failing run is recorded, not raised) cannot swallow it."""

    SIGNAL, BUDGET, LOST_RANK = "signal", "budget", "lost rank"

    def __init__(self, reason: str, exit_status: int, partial: Any = None, cause: str = SIGNAL) -> None:
        super().__init__(reason)
        self.reason, self.exit_status, self.partial, self.cause = reason, exit_status, partial, cause

    @classmethod
    def by_signal(cls, signum: int) -> Stopped:
        """Ctrl-C or SIGTERM: the shell's status, 130 or 143."""
        return cls(signal.Signals(signum).name, 128 + signum)

    @classmethod
    def by_budget(cls, reason: str) -> Stopped:
        return cls(reason, 1, cause=cls.BUDGET)

    @classmethod
    def by_lost_rank(cls, reason: str) -> Stopped:
        """A rank of a launch died or stopped answering: the launch cannot go on; `--resume` continues."""
        return cls(reason, 1, cause=cls.LOST_RANK)


class Skip(str):
    """A reason a suite's `may_start` gives to skip one run, not to stop the suite: the run is neither measured
    nor recorded, and the suite goes on with the next (tune skips a candidate predicted hopeless)."""


class RunSkipped(Exception):
    """Raised before a run's save when `may_start` gave a `Skip`; the runner drops the run and goes on."""


def first_line(exc: object) -> str:
    """An error's first non-empty line (its type's name when it has no text)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
