"""Ctrl-C and SIGTERM as a `Stopped` exception, so a suite stops within seconds and cleans up.

The first signal raises `Stopped` in the main thread (TensorStore's waits are interruptible); later ones are ignored
until the cleanup that follows has finished, so a second Ctrl-C cannot leave half a checkpoint behind. Python drops an
exception raised while a `__del__` runs, so the signal is also remembered, and `check()` at each phase boundary raises
it if the first raise was lost.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from ckptbench.core.errors import Stopped

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[Stopped] = []


def check() -> None:
    """Raise the stop signal received earlier, if any."""
    if _received:
        raise _received[0]


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Stopped` (in the main thread; elsewhere Python
    lets no handler be installed, and the block changes nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        _received.append(Stopped.by_signal(signum))
        raise _received[0]

    _received.clear()
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
