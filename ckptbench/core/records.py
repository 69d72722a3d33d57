"""The plan of a suite and the raw record of one run: plain data, no I/O.

A plan is the order runs execute in (PHASE4_GUIDE.md, section 4.5: interleaved rounds, "blocked", and blocks of tests
at a seeded place among interleaved rounds), generated lazily: a suite of a million runs costs nothing until it runs.
Confirmation rounds (`confirmation_plan`) come after a suite's rounds; their runs carry their block's number
(`confirm_block`), so the answer can be computed from them alone and the rounds it was chosen from stay as they were.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

ORDERS = ("interleaved", "blocked")


@dataclass(frozen=True)
class PlannedRun:
    test: str
    round: int  # 0-based; warm-up rounds come first and have negative numbers
    position: int  # place within its round (interleaved), the suite's test list (blocked) or its block
    warmup: bool = False
    confirm_block: int | None = None  # 1, 2, ...: a confirmation block's run (module docstring); None: a suite's

    @property
    def label(self) -> str:
        block = "" if self.confirm_block is None else f"c{self.confirm_block}"
        return f"{self.test}-{block}{'w' if self.warmup else 'r'}{abs(self.round)}"


@dataclass(frozen=True)
class Plan:
    """Every run of a suite in execution order, made on demand; `done` runs are left out (a resume)."""

    tests: tuple[str, ...]
    num_runs: int
    warmup_rounds: int
    seed: int
    order: str = "interleaved"
    done: frozenset[tuple[str, int]] = frozenset()
    blocks: tuple[tuple[str, ...], ...] = ()  # groups of tests run back to back (module docstring)

    def __iter__(self) -> Iterator[PlannedRun]:
        if self.order == "blocked":
            yield from self._blocked(self.tests)
            return
        rounds = range(-self.warmup_rounds, self.num_runs)
        in_blocks = {name for block in self.blocks for name in block}
        free = [name for name in self.tests if name not in in_blocks]
        slots = block_slots(len(self.blocks), len(rounds), self.seed)
        rng = random.Random(self.seed)
        for i, r in enumerate(rounds):
            for block, slot in zip(self.blocks, slots):
                if slot == i:
                    yield from self._blocked(block)
            order = list(free)
            rng.shuffle(order)
            for position, name in enumerate(order):
                if (name, r) not in self.done:
                    yield PlannedRun(name, r, position, warmup=r < 0)
        for block, slot in zip(self.blocks, slots):
            if slot == len(rounds):
                yield from self._blocked(block)

    def _blocked(self, names: Sequence[str]) -> Iterator[PlannedRun]:
        """Each test's rounds back to back, the tests in the given order (AAABBB)."""
        for position, name in enumerate(names):
            for r in range(-self.warmup_rounds, self.num_runs):
                if (name, r) not in self.done:
                    yield PlannedRun(name, r, position, warmup=r < 0)

    def __len__(self) -> int:
        total = len(self.tests) * (self.num_runs + self.warmup_rounds)
        return total - sum(1 for name, r in self.done
                           if name in self.tests and -self.warmup_rounds <= r < self.num_runs)

    @property
    def last_round(self) -> int:
        return self.num_runs - 1

    def without(self, done: Collection[tuple[str, int]]) -> Plan:
        """The plan less the `done` runs (test, round): a resumed suite's."""
        return replace(self, done=frozenset(done))


def plan(test_names: Sequence[str], num_runs: int, warmup_rounds: int, seed: int, order: str = "interleaved",
         blocks: Sequence[Sequence[str]] = ()) -> Plan:
    """The suite's runs in execution order (see the module docstring); `Plan.without` leaves out runs done."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}")
    grouped = [name for block in blocks for name in block]
    unknown = sorted(set(grouped) - set(test_names))
    if unknown or len(grouped) != len(set(grouped)):
        raise ValueError(f"blocks must hold distinct tests of the plan, got {list(blocks)!r}")
    return Plan(tuple(test_names), num_runs, warmup_rounds, seed, order,
                blocks=tuple(tuple(block) for block in blocks if block))


def block_slots(n_blocks: int, n_rounds: int, seed: int) -> list[int]:
    """Per block, how many interleaved rounds run before it (0 to n_rounds), drawn from the seed by a generator of its
    own, so adding a block never changes the interleaved rounds' shuffles."""
    rng = random.Random(f"ckptbench-blocks-{seed}")
    return [rng.randint(0, n_rounds) for _ in range(n_blocks)]


def confirmation_plan(test_names: Sequence[str], rounds: int, blocks: int, first_round: int, seed: int,
                      done: Collection[tuple[str, int]] = ()) -> list[list[PlannedRun]]:
    """Per confirmation block, its runs: `rounds` interleaved rounds of the tests numbered on from `first_round`,
    shuffled by a generator of its own (the suite's rounds keep their shuffles); `done` runs (a resume) are left out."""
    rng = random.Random(f"ckptbench-confirm-{seed}")
    out = []
    for block in range(1, blocks + 1):
        runs: list[PlannedRun] = []
        for i in range(rounds):
            r = first_round + (block - 1) * rounds + i
            order = list(test_names)
            rng.shuffle(order)
            runs.extend(PlannedRun(name, r, position, confirm_block=block)
                        for position, name in enumerate(order) if (name, r) not in done)
        out.append(runs)
    return out


def new_seed() -> int:
    return secrets.randbits(32)


@dataclass
class RunRecord:
    """Raw figures of one run: what was measured, nothing derived."""

    test: str
    round: int
    position: int
    warmup: bool
    save_s: float | None = None
    load_s: float | None = None
    save_cpu_s: float | None = None
    load_cpu_s: float | None = None
    save_peak_rss_bytes: int | None = None  # growth above the process's RSS when the save began
    load_peak_rss_bytes: int | None = None
    # The whole process's peak anonymous and file-backed (mapped files: droppable) resident bytes (guide, section 4.6)
    save_rss_anon_bytes: int | None = None
    save_rss_file_bytes: int | None = None
    load_rss_anon_bytes: int | None = None
    load_rss_file_bytes: int | None = None
    rss_anon_after_bytes: int | None = None  # once the run is over: growth here across rounds is a leak
    # Run by several processes: the anonymous peaks of this host's processes that took part, summed (an upper bound)
    save_host_rss_anon_bytes: int | None = None
    load_host_rss_anon_bytes: int | None = None
    size_bytes: int | None = None
    disk_bytes: int | None = None
    n_files: int | None = None
    eviction: str | None = None
    resident_bytes_at_load: int | None = None
    resident_bytes_after_load: int | None = None  # of the run's files, right after the load's clock stopped
    # A load meant to read around the page cache: what its files left there right after it; None: no such claim
    bypass_resident_bytes: int | None = None
    load_cache: str | None = None  # "cold", "partial", "warm", "memory" or "remote": what the load read from
    # A test with warm_load also loads right after the save, before the eviction (from the page cache).
    warm_load_s: float | None = None
    warm_load_cpu_s: float | None = None
    warm_load_cache: str | None = None  # what that load read from: "warm", or "partial" if pages were dropped
    verified: bool | None = None
    process_save_s: list[float] | None = None  # with several processes: each one's time from the common start
    process_load_s: list[float] | None = None  # each reader's own: from the barrier's release to its slices in memory
    # "readers": load_s (and warm_load_s) is the readers' own span (bench.measure.readers_span_s); None: this clock's
    load_clock: str | None = None
    # A load by several readers: each one's device bytes, its read calls' (rchar) and its slices' (core.system.io_bytes)
    process_load_read_bytes: list[int] | None = None
    process_load_rchar_bytes: list[int] | None = None
    process_load_slice_bytes: list[int] | None = None
    patterns: dict[str, dict[str, float]] | None = None  # the device ceiling: seconds per access pattern
    # What other processes of this host did during each timed operation (core.host.others); with writers on
    # several hosts, the busiest host's, named (analysis.busy.busiest); None: not measured
    other_processes: dict[str, dict[str, float]] | None = None
    # An async save's figures (bench.async_save; None for sync ones), each described in results.schema.json
    blocked_s: float | None = None
    commit_s: float | None = None
    staging_bytes: int | None = None
    step_alone_s: float | None = None
    steps_during_s: list[float] | None = None
    step_slowdown: float | None = None
    training_lost_s: float | None = None
    error: str | None = None
    fatal: bool = False  # the storage itself failed (full disk, I/O error): the suite must stop
    confirm_block: int | None = None  # a confirmation block's run (1, 2, ...); None: a run of the suite's rounds
    started_at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        """A record from its JSON form; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


Phase = Callable[[PlannedRun, str], None]
