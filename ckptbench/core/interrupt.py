"""Ctrl-C and SIGTERM as an exception, so a suite stops within seconds and cleans up.

The first signal raises `Interrupted` in the main thread (TensorStore's waits are
interruptible); later ones are ignored until the cleanup that follows has finished,
so a second Ctrl-C cannot leave half a checkpoint behind. Python drops an exception
raised while a `__del__` runs, so the signal is also remembered, and `check()` at
each phase boundary raises it if the first raise was lost.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Raised by a stop signal; BaseException so that `except Exception` does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.results: Any = None  # what the suite measured before it stopped (ckptbench.run attaches it)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


_received: list[Interrupted] = []


def check() -> None:
    """Raise the stop signal received earlier, if any."""
    if _received:
        raise _received[0]


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted` (in the main thread; elsewhere Python
    lets no handler be installed, and the block changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        _received.append(Interrupted(signum))
        raise _received[0]

    _received.clear()
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
