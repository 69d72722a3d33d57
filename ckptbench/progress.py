"""Live progress on stderr while a suite runs: test, round, phase and ETA.

On a terminal a tqdm bar; in a log file or CI, where a redrawn bar is noise, one
line per finished run. Nothing goes to stdout, so reports stay clean.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from .measure import PlannedRun, RunRecord


class Progress:
    """Receives the runner's phase callbacks and shows them."""

    def __init__(self, total_runs: int, num_runs: int, enabled: bool = True) -> None:
        self._num_runs, self._total, self._done = num_runs, total_runs, 0
        self._started = time.monotonic()
        self._lines = enabled and not sys.stderr.isatty()
        self._bar = tqdm(total=total_runs, unit="run", file=sys.stderr, disable=not enabled or self._lines,
                         bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")

    def phase(self, run: PlannedRun, phase: str) -> None:
        which = f"warm-up {abs(run.round)}" if run.warmup else f"round {run.round + 1}/{self._num_runs}"
        self._bar.set_description_str(f"{which} {run.test}", refresh=False)
        self._bar.set_postfix_str(phase)
        if self._lines and phase in ("save", "load"):
            self.message(f"  {run.test} {which}: {phase}")

    def finished(self, record: RunRecord) -> None:
        self._done += 1
        self._bar.update(1)
        if record.error:
            self.message(f"  ! {record.test} round {record.round}: {record.error}")
        elif self._lines:
            left_s = (time.monotonic() - self._started) / self._done * (self._total - self._done)
            self.message(f"[{self._done}/{self._total}] {record.test} round {record.round}: "
                         f"save {record.save_s:.2f} s, load {record.load_s:.2f} s ({record.load_cache}); "
                         f"about {left_s:.0f} s left")

    def message(self, text: str) -> None:
        self._bar.write(text, file=sys.stderr)
        sys.stderr.flush()

    def close(self) -> None:
        self._bar.close()
