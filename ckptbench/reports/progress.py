"""Live progress on stderr while a suite runs: test, round, phase and ETA.

On a terminal a tqdm bar; in a log file or CI, where a redrawn bar is noise, one line per finished run. Nothing goes to
stdout, so reports stay clean. It is a suite's observer (bench.context.Observer: `start`, `phase`, `record`) and
measures nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ckptbench.bench.context import Start
from ckptbench.core import tune_events as events
from ckptbench.core.records import PlannedRun, RunRecord
from ckptbench.core.units import duration_label, human_bytes
from ckptbench.documents.store import weights_name


class _Display:
    """Lines (and a tqdm bar on a terminal) on stderr; nothing when disabled."""

    def __init__(self, enabled: bool = True) -> None:
        self._enabled = enabled
        self._lines = enabled and not sys.stderr.isatty()
        self._bar: Any = None

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
            self._bar = None


class Progress(_Display):
    def __init__(self, enabled: bool = True) -> None:
        super().__init__(enabled)
        self._num_runs, self._total, self._done = 0, 0, 0
        self._started = time.monotonic()

    def start(self, start: Start) -> None:
        from tqdm import tqdm

        self._num_runs, self._total = start.num_runs, start.total_runs
        self._started = time.monotonic()
        self._bar = tqdm(total=start.total_runs, unit="run", file=sys.stderr, disable=not self._enabled or self._lines,
                         bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")
        info = start.weights
        warmup = f" + {start.warmup_rounds} warm-up rounds" if start.warmup_rounds else ""
        resumed = f"; resuming, {start.resumed_runs} runs already done" if start.resumed_runs else ""
        confirming = start.confirmation_runs
        warmup += f", then up to {confirming} confirmation runs (not in the bar)" if confirming else ""
        self.message(f"weights: {weights_name(info)} "
                     f"({info['n_params'] / 1e6:.1f}M params, {human_bytes(info['size_bytes'])} {info['dtype']}, "
                     f"values {info.get('values')}); {start.n_tests} tests x {start.num_runs} runs{warmup}; "
                     f"seed {start.seed}{resumed}")

    def phase(self, run: PlannedRun, phase: str) -> None:
        if self._bar is None:
            return
        which = f"warm-up {abs(run.round)}" if run.warmup else f"round {run.round + 1}/{self._num_runs}"
        if run.confirm_block is not None:  # after the rounds: not counted in the bar's total
            which = f"confirmation block {run.confirm_block}, round {run.round + 1}"
        self._bar.set_description_str(f"{which} {run.test}", refresh=False)
        self._bar.set_postfix_str(phase)
        if self._lines and phase in ("save", "load"):
            self.message(f"  {run.test} {which}: {phase}")

    def record(self, record: RunRecord) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)
        if record.error:
            self.message(f"  ! {record.test} round {record.round}: {record.error}")
        elif self._lines:
            warm = "" if record.warm_load_s is None else f"warm load {record.warm_load_s:.2f} s, "
            left_s = (time.monotonic() - self._started) / self._done * max(0, self._total - self._done)
            self.message(f"[{self._done}/{self._total}] {record.test} round {record.round}: "
                         f"save {record.save_s:.2f} s, {warm}load {record.load_s:.2f} s ({record.load_cache}); "
                         f"about {left_s:.0f} s left")

class TuneProgress(_Display):
    """`tune`'s progress: the budget estimate, then per stage a bar (or, in a log, a line per run) showing
    the rung, the candidates left and the time left. It receives `tune.run`'s events and measures nothing."""

    def event(self, event: events.TuneEvent) -> None:
        match event:
            case events.Estimate():
                self._estimate(event)
            case events.Corrected():
                self.message(f"after rung 0: measured {event.measured} candidates (estimated {event.planned}); a "
                             f"run took {event.run_s_measured or 0:.1f} s on average (estimated "
                             f"{event.run_s_estimated:.1f} s), the reference rows {event.references_s_measured:.0f} "
                             f"s; {int(event.time_left_s)} s left for "
                             f"{' -> '.join(map(str, event.next_rungs)) or 'no more rungs'} and the final")
            case events.StageStarted():
                self._stage(event)
            case events.Phase():
                if self._bar is not None:
                    self._bar.set_description_str(f"{event.stage} {event.test[:40]} {event.phase}", refresh=True)
                if self._lines and event.phase in ("save", "load"):
                    self.message(f"  {event.stage} {event.test}: {event.phase}")
            case events.RunEnded():
                self._run(event)
            case events.Skipped():
                self.message(f"  {event.stage} {event.test}: {event.reason}")
            case events.StageEnded():
                self._stage_end(event)
            case events.Finishing():
                self.close()
                self.message(f"writing the tuned checkpoint and reading it back with the printed spec; "
                             f"{_left(event.time_left_s)} left")

    def _estimate(self, event: events.Estimate) -> None:
        plan, info = event.plan, event.weights
        rungs = " -> ".join(str(n) for n in plan["rung_sizes"])
        references = (f", the reference rows ({', '.join(event.references)}) about {plan['references_s']:.0f} s in "
                      "rung 0" if event.references else "")
        self.message(
            f"tune: {weights_name(info)} ({human_bytes(info['size_bytes'])} "
            f"{info['dtype']}, values {info.get('values')}), objective {event.objective}, budget "
            f"{duration_label(event.budget_s)}, seed {event.seed}\n"
            f"space: {event.n_candidates:,} candidates ({event.n_skipped:,} invalid combinations skipped, "
            f"{event.n_duplicates:,} identical in effect for this model)\n"
            f"estimate from the model's size: a run takes about {plan['run_s']:.1f} s (the candidates rung 0 runs "
            f"first){references}; after {event.setup_s:.0f} s of setup and {plan['final_reserve_s']:.0f} s kept for "
            f"the final, about {plan['n_candidates']} candidates fit (rungs {rungs}, then the final); rung 0 lists "
            f"{event.n_listed} and measures them while the rest of the plan still fits, by the durations measured "
            "as it goes")

    def _stage(self, event: events.StageStarted) -> None:
        from tqdm import tqdm

        self.close()
        self._bar = tqdm(total=event.n_tests, unit="run", file=sys.stderr, disable=not self._enabled or self._lines,
                         desc=event.name, bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} {postfix}")
        self._postfix(event.candidates_left, event.time_left_s)
        resumed = ", resumed" if event.resumed else ""
        self.message(f"{event.name}: {event.n_tests} runs ({event.candidates_left} candidates left{resumed}), "
                     f"planned {event.planned_s:.0f} s, {_left(event.time_left_s)} of the budget left")

    def _run(self, event: events.RunEnded) -> None:
        record = event.record
        if self._bar is not None:
            self._bar.update(1)
            self._postfix(event.candidates_left, event.time_left_s)
        if record.error:
            self.message(f"  ! {event.stage} {record.test}: {record.error}")
        elif self._lines:
            self.message(f"[{event.stage} {event.done}/{event.total}] {record.test}: save {record.save_s:.2f} s, "
                         f"load {record.load_s:.2f} s ({record.load_cache}); {event.candidates_left} candidates "
                         f"left, {_left(event.time_left_s)} left")

    def _stage_end(self, event: events.StageEnded) -> None:
        decision = event.decision
        cut = " (stopped by the budget)" if event.status == "budget" else ""
        if event.kind == "halving":
            censored, skipped = len(decision.get("censored", [])), len(decision.get("skipped", []))
            also = (f" ({censored} of them too slow to run again)" if censored else "") + (
                f", {skipped} skipped as predicted too slow" if skipped else "")
            self.message(f"{event.name} done{cut}: {len(decision.get('kept', []))} kept, "
                         f"{event.eliminated} eliminated{also}; {_left(event.time_left_s)} left")
        else:
            p = decision.get("p_value")
            state = ("separated" if decision.get("separated") else "not yet separated") + (
                f" (p = {p:.2g})" if p is not None else "")
            self.message(f"{event.name} done{cut}: leader {decision.get('winner')}, runner-up "
                         f"{decision.get('runner_up')}: {state}; {_left(event.time_left_s)} left")

    def _postfix(self, candidates_left: int, time_left_s: float) -> None:
        self._bar.set_postfix_str(f"{candidates_left} candidates left, {_left(time_left_s)} left")


def _left(seconds: float) -> str:
    return duration_label(max(0.0, seconds))
