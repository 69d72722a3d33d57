"""A stand-in training step for async saves: fixed arithmetic and memory traffic over the weights, on this thread.

One step reads `step_bytes` of the weights (cycling over them), each piece scaled and added into a small
accumulator, as an optimizer's update reads every parameter: two float operations per 4 bytes, memory-bound on a
CPU. The weights are only read, so the step never changes what a checkpoint must hold. Its time alone is measured
before the save's clock; during a background write every step is timed again (bench.async_save). On a CPU-only
machine the step and the writer share the same cores; on an accelerator the step's compute would not.
"""

from __future__ import annotations

import statistics
import time
from typing import Mapping

import numpy as np

DEFAULT_STEP_BYTES = 2**30  # about 100 ms a step on the 2-core VM of docs/measurements
ALONE_STEPS = 5  # steps timed alone (after WARM_UP_S of untimed ones): their median is the step's time alone
WARM_UP_S = 0.3
_PIECE_ELEMENTS = 2**18  # 1 MiB of float32 at a time: the accumulator stays in the CPU's cache
_SCALE = np.float32(1e-3)


class StandInStep:
    """Calling it runs one step and returns its seconds."""

    def __init__(self, tensors: Mapping[str, np.ndarray], step_bytes: int | None = None) -> None:
        self.step_bytes = step_bytes or DEFAULT_STEP_BYTES
        # Every tensor's bytes read as float32 (whatever its dtype: the traffic is what counts)
        flat = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in tensors.values()]
        self._views = [b[: b.size // 4 * 4].view(np.float32) for b in flat if b.size >= 4]
        if not self._views:
            raise ValueError("the stand-in training step needs weights of at least 4 bytes")
        self._accumulator = np.zeros(_PIECE_ELEMENTS, np.float32)
        self._scratch = np.zeros(_PIECE_ELEMENTS, np.float32)

    def __call__(self) -> float:
        started = time.perf_counter()
        left = self.step_bytes // 4
        while left > 0:
            for view in self._views:
                for start in range(0, view.size, _PIECE_ELEMENTS):
                    piece = view[start:start + min(_PIECE_ELEMENTS, left)]
                    scratch = self._scratch[:piece.size]
                    np.multiply(piece, _SCALE, out=scratch)
                    np.add(self._accumulator[:piece.size], scratch, out=self._accumulator[:piece.size])
                    left -= piece.size
                    if left <= 0:
                        return time.perf_counter() - started
        return time.perf_counter() - started

    def alone_s(self, steps: int = ALONE_STEPS) -> float:
        """The step's time with nothing else of this process running: the median of `steps`, after untimed steps
        for WARM_UP_S (the first steps of a small step run slower: caches, the CPU's clock)."""
        warm_until = time.perf_counter() + WARM_UP_S
        while time.perf_counter() < warm_until:
            self()
        return statistics.median(self() for _ in range(steps))


def slowdown(alone_s: float, during_s: list[float]) -> float | None:
    """How much slower the steps ran than alone, as a fraction (0.25: 25 % slower); None without steps."""
    return statistics.fmean(during_s) / alone_s - 1.0 if during_s and alone_s > 0 else None


def time_lost_s(blocked_s: float, alone_s: float, during_s: list[float]) -> float:
    """Training time a checkpoint costs: the time the loop was blocked, plus each step's time beyond its time alone
    until the checkpoint was durable."""
    return blocked_s + sum(s - alone_s for s in during_s)
