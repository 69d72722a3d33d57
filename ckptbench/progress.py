"""Live progress on stderr while a suite runs: test, round, phase and ETA (tqdm)."""

from __future__ import annotations

import sys

from tqdm import tqdm

from .measure import PlannedRun, RunRecord


class Progress:
    """Receives the runner's phase callbacks; draws nothing to stdout, so reports stay clean."""

    def __init__(self, total_runs: int, num_runs: int, enabled: bool = True) -> None:
        self._num_runs = num_runs
        # A redrawn bar is noise in a log file or CI: there, print one line per finished run instead.
        self._lines = enabled and not sys.stderr.isatty()
        self._bar = tqdm(total=total_runs, unit="run", file=sys.stderr, disable=not enabled or self._lines,
                         bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")

    def phase(self, run: PlannedRun, phase: str) -> None:
        which = f"warm-up {abs(run.round)}" if run.warmup else f"round {run.round + 1}/{self._num_runs}"
        self._bar.set_description_str(f"{which} {run.test}", refresh=False)
        self._bar.set_postfix_str(phase)

    def finished(self, record: RunRecord) -> None:
        self._bar.update(1)
        if record.error:
            self._bar.write(f"  ! {record.test} round {record.round}: {record.error}", file=sys.stderr)
        elif self._lines:
            done, total = self._bar.n, self._bar.total
            rate = self._bar.format_dict["elapsed"] / done
            print(f"[{done}/{total}] {record.test} round {record.round}: save {record.save_s:.2f} s, "
                  f"load {record.load_s:.2f} s ({record.load_cache}); about {rate * (total - done):.0f} s left",
                  file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        self._bar.write(text, file=sys.stderr)
        sys.stderr.flush()

    def close(self) -> None:
        self._bar.close()
