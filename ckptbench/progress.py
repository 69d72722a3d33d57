"""Live progress on stderr while a suite runs: test, round, phase and ETA.

On a terminal a tqdm bar; in a log file or CI, where a redrawn bar is noise, one
line per finished run. Nothing goes to stdout, so reports stay clean. It receives the
runner's callbacks (`start`, `phase`, `finished`) and measures nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from .records import PlannedRun, RunRecord
from .units import human_bytes


class Progress:
    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled
        self._lines = enabled and not sys.stderr.isatty()
        self._bar: Any = None
        self._num_runs, self._total, self._done = 0, 0, 0
        self._started = time.monotonic()

    def start(self, start: Any) -> None:
        from tqdm import tqdm

        self._num_runs, self._total = start.num_runs, start.total_runs
        self._started = time.monotonic()
        self._bar = tqdm(total=start.total_runs, unit="run", file=sys.stderr, disable=not self._enabled or self._lines,
                         bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")
        info = start.weights
        warmup = f" + {start.warmup_rounds} warm-up rounds" if start.warmup_rounds else ""
        resumed = f"; resuming, {start.resumed_runs} runs already done" if start.resumed_runs else ""
        self.message(f"weights: {info.get('repo_id') or info.get('name') or info.get('path')} "
                     f"({info['n_params'] / 1e6:.1f}M params, {human_bytes(info['size_bytes'])} {info['dtype']}, "
                     f"values {info.get('values')}); {start.n_tests} tests x {start.num_runs} runs{warmup}; "
                     f"seed {start.seed}{resumed}")

    def phase(self, run: PlannedRun, phase: str) -> None:
        if self._bar is None:
            return
        which = f"warm-up {abs(run.round)}" if run.warmup else f"round {run.round + 1}/{self._num_runs}"
        self._bar.set_description_str(f"{which} {run.test}", refresh=False)
        self._bar.set_postfix_str(phase)
        if self._lines and phase in ("save", "load"):
            self.message(f"  {run.test} {which}: {phase}")

    def finished(self, record: RunRecord) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)
        if record.error:
            self.message(f"  ! {record.test} round {record.round}: {record.error}")
        elif self._lines:
            left_s = (time.monotonic() - self._started) / self._done * max(0, self._total - self._done)
            self.message(f"[{self._done}/{self._total}] {record.test} round {record.round}: "
                         f"save {record.save_s:.2f} s, load {record.load_s:.2f} s ({record.load_cache}); "
                         f"about {left_s:.0f} s left")

    def message(self, text: str) -> None:
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
