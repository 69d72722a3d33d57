"""The ranks of one launch (or this process and its --processes workers) as one gloo world.

The ranks form one gloo process group (torch.distributed, CPU, TCP). It carries the
barriers that start each save and load together, the broadcast of each job from rank
0 and the all-gather of every rank's figures; its key-value store (torch's TCPStore,
hosted by torchrun's agent or by rank 0) carries the rendezvous and each rank's
progress, so rank 0 can name a rank that stops answering. The harness opens no
sockets of its own. torch is imported only when a world is joined.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pickle
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ckptbench.core import host
from ckptbench.core.errors import UserError, first_line
from ckptbench.parallel.launch import Launch

START_TIMEOUT_S = 600.0  # every rank must join (and load its weights) within this
IDLE_TIMEOUT_S = 6 * 3600.0  # a rank waits this long for rank 0's next step (rank 0 may run reference rows meanwhile)
_LIVENESS_EVERY_S = 0.2  # how often rank 0, waiting for the others, checks that its host's ranks live
HEARTBEAT_S = 0.5


@dataclass(frozen=True)
class Member:
    """One rank as it reported itself when the world formed."""

    rank: int
    host: str
    pid: int
    local_rank: int | None


class Broken(RuntimeError):
    """A collective failed: a rank died or did not answer, and the world cannot be used any more."""

    def __init__(self, what: str, who: str = "") -> None:
        super().__init__(f"{who} {what}".strip())
        self.what, self.who = what, who  # "exited", "did not answer within 60 s"; "rank 1 (pid 42 on h)"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1][:1] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


def connect_store(launch: Launch, timeout_s: float = START_TIMEOUT_S) -> Any:
    """torch's TCPStore of a launch: torchrun's agent hosts it, else rank 0 does."""
    import torch.distributed as dist

    try:
        return dist.TCPStore(launch.master_addr, launch.master_port, launch.world_size,
                             is_master=launch.rank == 0 and not launch.agent_store, timeout=seconds(timeout_s),
                             wait_for_workers=False)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"MASTER_ADDR/MASTER_PORT: rank {launch.rank} cannot reach or open the rendezvous at "
                        f"{launch.master_addr}:{launch.master_port} ({short_error(exc)}); rank 0 must run on "
                        "MASTER_ADDR's host and MASTER_PORT must be free there") from None


def short_error(exc: BaseException) -> str:
    """An error's first line, cut to 300 characters for a one-line message between ranks."""
    return first_line(exc)[:300]


class World:
    """The ranks of one launch (or rank 0 = this process and its --processes workers) in one gloo group."""

    def __init__(self, launch: Launch, store: Any, group: Any) -> None:
        self.launch = launch
        self.rank = launch.rank
        self.size = launch.world_size
        self.members: list[Member] = []
        self.broken: str | None = None  # why the world cannot be used any more
        self._store = store
        self._group = group
        self._round = 0
        self.liveness: Callable[[], None] = self._same_host_ranks_alive  # raises Broken when a rank is known dead
        self.rank_label: Callable[[int], str] = lambda rank: f"rank {rank}"

    @classmethod
    def join(cls, launch: Launch, store: Any = None, timeout_s: float = START_TIMEOUT_S) -> World:
        """Form the group with every other rank (each rank calls this), then learn who is where."""
        import torch.distributed as dist

        store = store if store is not None else connect_store(launch, timeout_s)
        # Reported before the group forms, so every rank's key exists whenever rank 0 reads them all.
        store.set(_progress_key(launch, launch.rank), "0")
        try:
            group = dist.ProcessGroupGloo(dist.PrefixStore(f"ckptbench/{launch.store_prefix}/group/", store),
                                          launch.rank, launch.world_size, seconds(IDLE_TIMEOUT_S))
        except RuntimeError as exc:
            raise UserError(f"{launch.launcher}: rank {launch.rank} could not join the other "
                            f"{launch.world_size - 1} ranks within {timeout_s:.0f} s ({short_error(exc)}); "
                            "start every rank with the same world size and MASTER_ADDR/MASTER_PORT") from None
        world = cls(launch, store, group)
        if launch.rank != 0:
            _start_heartbeat(launch)
        here = Member(launch.rank, socket.gethostname(), os.getpid(), launch.local_rank)
        world.members = [Member(**m) for m in world.all_gather(dataclasses.asdict(here), timeout_s=timeout_s,
                                                                during="start-up")]
        # The other ranks of this host are the run's own processes: their CPU and I/O are not another's (core.host)
        host.count_as_own(m.pid for m in world.members if m.host == here.host)
        return world

    # --- collectives: rank 0 waits interruptibly, with deadlines that name late ranks; the others block ---

    def _wait(self, work: Any, timeout_s: float, during: str) -> None:
        if self.broken:
            raise Broken(self.broken)
        try:
            if self.rank == 0:  # woken the moment the step completes; signals are handled meanwhile
                done = threading.Event()
                work.get_future().add_done_callback(lambda _: done.set())
                deadline = time.monotonic() + timeout_s
                while not done.wait(_LIVENESS_EVERY_S):
                    if time.monotonic() > deadline:
                        late = self.late_ranks() or self.stalled_ranks()
                        raise Broken(f"did not answer within {timeout_s:.0f} s", self.name(late) if late else
                                     "the other ranks")
                    self.liveness()
            work.wait()
        except Broken as exc:
            self.broken = str(exc)
            raise
        except RuntimeError as exc:  # gloo: a peer closed its connection, or the group's own timeout
            self.broken = short_error(exc)
            dead = self._settled_dead_ranks()
            raise Broken(f"exited ({self.broken})", self.name(dead)) if dead else Broken(
                f"the connection to a rank broke ({self.broken}); the launcher's report names the rank") from None
        except BaseException:  # a stop signal while waiting: the step is half done, the world unusable
            self.broken = "interrupted"
            raise

    def _settled_dead_ranks(self) -> list[int]:
        """Ranks on this host found dead, allowing a dying process a moment to finish exiting."""
        for _ in range(10):
            dead = self.dead_ranks()
            if dead:
                return dead
            time.sleep(0.1)
        return []

    def _progress(self, step: int) -> None:
        """Tell the store how far this rank got, so rank 0 can name the ranks that did not arrive."""
        self._store.set(_progress_key(self.launch, self.rank), str(step))

    def late_ranks(self) -> list[int]:
        """Ranks whose last reported step is behind rank 0's."""
        keys = [_progress_key(self.launch, r) for r in range(self.size)]
        try:
            steps = [int(v) for v in self._store.multi_get(keys)]
        except RuntimeError:
            return []
        return [r for r, step in enumerate(steps) if r != self.rank and step < self._round]

    def stalled_ranks(self) -> list[int]:
        """Ranks whose heartbeat stopped: a process that is stopped or frozen, though it reported reaching
        the step (a counter each rank's thread bumps, compared over a few beats: no clocks compared)."""
        keys = [_heartbeat_key(self.launch, r) for r in range(self.size) if r != self.rank]
        try:
            before = self._store.multi_get(keys)
            time.sleep(3 * HEARTBEAT_S)
            after = self._store.multi_get(keys)
        except RuntimeError:
            return []
        others = [r for r in range(self.size) if r != self.rank]
        return [r for r, a, b in zip(others, before, after) if a == b]

    def _step(self) -> None:
        """Every collective is one step, on every rank; each rank reports reaching it before it waits."""
        self._round += 1
        self._progress(self._round)

    def all_gather(self, obj: Any, timeout_s: float = IDLE_TIMEOUT_S, during: str = "a step") -> list[Any]:
        """Every rank's obj (any picklable value), in rank order, on every rank."""
        import torch

        self._step()
        data = _encode(obj)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        self._wait(self._group.allgather([sizes], [torch.tensor([data.numel()], dtype=torch.int64)]),
                   timeout_s, during)
        longest = max(int(s) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[:data.numel()] = data
        out = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.size)]
        self._wait(self._group.allgather([out], [padded]), timeout_s, during)
        return [pickle.loads(o[:int(n)].numpy().tobytes()) for o, n in zip(out, sizes)]

    def broadcast(self, obj: Any = None, timeout_s: float = IDLE_TIMEOUT_S, during: str = "a step") -> Any:
        """Rank 0's obj on every rank (the others pass nothing)."""
        import torch
        import torch.distributed as dist

        self._step()
        options = dist.BroadcastOptions()
        options.rootRank = 0
        data = _encode(obj) if self.rank == 0 else torch.empty(0, dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.int64)
        self._wait(self._group.broadcast([size], options), timeout_s, during)
        if self.rank != 0:
            data = torch.empty(int(size), dtype=torch.uint8)
        self._wait(self._group.broadcast([data], options), timeout_s, during)
        return obj if self.rank == 0 else pickle.loads(data.numpy().tobytes())

    def barrier(self, timeout_s: float = IDLE_TIMEOUT_S, during: str = "a step") -> None:
        self._step()
        self._wait(self._group.barrier(), timeout_s, during)

    # --- who is where ---

    def name(self, ranks: Sequence[int]) -> str:
        """'rank 1 (pid 42 on host h)' for the ranks given."""
        words = [f"{self.rank_label(r)} (pid {self.members[r].pid} on {self.members[r].host})"
                 if r < len(self.members) else self.rank_label(r) for r in ranks]
        return ", ".join(words) if words else "a rank"

    def hosts(self) -> dict[str, list[int]]:
        """Each host's ranks, hosts in the order of their first rank."""
        found: dict[str, list[int]] = {}
        for member in self.members:
            found.setdefault(member.host, []).append(member.rank)
        return found

    def leader(self, rank: int) -> int:
        """The lowest rank on `rank`'s host: it loads, shares and evicts for that host."""
        return self.hosts()[self.members[rank].host][0]

    def dead_ranks(self) -> list[int]:
        """Ranks on this host whose process is gone (the only ones a process can see die)."""
        here = self.members[self.rank].host if self.members else socket.gethostname()
        return [m.rank for m in self.members if m.host == here and m.rank != self.rank and not _alive(m.pid)]

    def _same_host_ranks_alive(self) -> None:
        dead = self.dead_ranks()
        if dead:
            raise Broken("exited", self.name(dead))

    def describe(self) -> dict[str, Any]:
        """What results.json records about the launch."""
        hosts = self.hosts()
        counts = {len(ranks) for ranks in hosts.values()}
        return {"launcher": self.launch.launcher, "world_size": self.size, "n_hosts": len(hosts),
                "ranks_per_host": counts.pop() if len(counts) == 1 else None,
                "hosts": [{"name": host, "ranks": ranks} for host, ranks in hosts.items()]}

    def close(self) -> None:
        try:
            self._group.shutdown()
        except RuntimeError:
            pass
        self._group = None
        self._store = None
        self.broken = self.broken or "closed"


def _heartbeat_key(launch: Launch, rank: int) -> str:
    return f"ckptbench/{launch.store_prefix}/heartbeat/{rank}"


def _start_heartbeat(launch: Launch) -> None:
    """A thread of this rank that bumps its counter in the store every HEARTBEAT_S, on a connection of its
    own, so that rank 0 can tell a rank that stopped running from one that is only slow."""
    key = _heartbeat_key(launch, launch.rank)
    client = connect_store(launch)
    client.set(key, "0")

    def beat() -> None:
        while True:
            try:
                client.add(key, 1)
            except RuntimeError:  # the store is gone: the launch is over
                return
            time.sleep(HEARTBEAT_S)

    threading.Thread(target=beat, name="ckptbench-heartbeat", daemon=True).start()


def _progress_key(launch: Launch, rank: int) -> str:
    return f"ckptbench/{launch.store_prefix}/progress/{rank}"


def _encode(obj: Any) -> Any:
    import torch

    return torch.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)
