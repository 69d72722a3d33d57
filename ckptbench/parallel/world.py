"""The ranks of one launch (or this process and its --processes workers) as one gloo world.

The ranks form one gloo process group (torch.distributed, CPU, TCP) on torch's TCPStore, hosted by torchrun's agent or
by rank 0. Every step is torch's: a `monitored_barrier` first, by which rank 0 learns from torch which ranks did not
arrive within the step's timeout (one that hangs, or whose connection closed), then `broadcast_object_list` or
`all_gather_object`. What torch cannot say is added here: each rank's pid and host, whether a rank is a process that
exited, and, while rank 0 waits for ranks still busy with a long local operation, that another rank of this host died
(torch would name it only once the busy ones arrived). Rank 0 waits in a thread of its own, so that stop signals are
handled meanwhile. The harness opens no sockets of its own; torch is imported only when a world is joined.
"""

from __future__ import annotations

import datetime
import os
import re
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
LIVENESS_EVERY_S = 0.2  # how often rank 0, waiting for the others, checks that its host's ranks live
_NAMED_BY_TORCH = re.compile(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier")


@dataclass(frozen=True)
class Member:
    """One rank as it reported itself when the world formed."""

    rank: int
    host: str
    pid: int


class Broken(RuntimeError):
    """A collective failed: a rank died or did not answer, and the world cannot be used any more."""

    def __init__(self, what: str, who: str = "") -> None:
        super().__init__(f"{who} {what}".strip())
        self.what, self.who = what, who  # "exited", "did not answer within 60 s"; "rank 1 (pid 42 on h)"


def process_alive(pid: int) -> bool:
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


def _process_group(store: Any, launch: Launch, timeout_s: float) -> Any:
    """A gloo ProcessGroup as init_process_group makes one, but one of several in a process: the suite's process
    leads one world per --processes pool, and torch's object collectives take a ProcessGroup."""
    import torch
    import torch.distributed as dist

    prefixed = dist.PrefixStore(f"ckptbench/{launch.store_prefix}/group/", store)
    group = dist.ProcessGroup(prefixed, launch.rank, launch.world_size)
    gloo = dist.ProcessGroupGloo(prefixed, launch.rank, launch.world_size, seconds(timeout_s))
    group._set_default_backend(dist.ProcessGroup.BackendType.GLOO)
    group._register_backend(torch.device("cpu"), dist.ProcessGroup.BackendType.GLOO, gloo)
    return group


class World:
    """The ranks of one launch (or rank 0 = this process and its --processes workers) in one gloo group."""

    def __init__(self, launch: Launch, group: Any) -> None:
        self.launch = launch
        self.rank = launch.rank
        self.size = launch.world_size
        self.members: list[Member] = []
        self.broken: str | None = None  # why the world cannot be used any more
        self._group = group
        self.rank_label: Callable[[int], str] = lambda rank: f"rank {rank}"

    @classmethod
    def join(cls, launch: Launch, store: Any = None, timeout_s: float = START_TIMEOUT_S) -> World:
        """Form the group with every other rank (each rank calls this), then learn who is where."""
        store = store if store is not None else connect_store(launch, timeout_s)
        try:  # rank 0 bounds every wait itself; the others wait for rank 0's next step
            group = _process_group(store, launch, timeout_s if launch.rank == 0 else IDLE_TIMEOUT_S)
        except RuntimeError as exc:
            raise UserError(f"{launch.launcher}: rank {launch.rank} could not join the other "
                            f"{launch.world_size - 1} ranks within {timeout_s:.0f} s ({short_error(exc)}); "
                            "start every rank with the same world size and MASTER_ADDR/MASTER_PORT") from None
        world = cls(launch, group)
        here = Member(launch.rank, socket.gethostname(), os.getpid())
        world.members = world.all_gather(here, timeout_s=timeout_s)
        # The other ranks of this host are the run's own processes: their CPU and I/O are not another's (core.host)
        host.count_as_own(m.pid for m in world.members if m.host == here.host)
        return world

    # --- collectives: torch's, each after a monitored barrier that rank 0 bounds by timeout_s ---

    def all_gather(self, obj: Any, timeout_s: float = IDLE_TIMEOUT_S) -> list[Any]:
        """Every rank's obj (any picklable value), in rank order, on every rank."""
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.size
        self._step(timeout_s, lambda: dist.all_gather_object(gathered, obj, group=self._group))
        return gathered

    def broadcast(self, obj: Any = None, timeout_s: float = IDLE_TIMEOUT_S) -> Any:
        """Rank 0's obj on every rank (the others pass nothing)."""
        import torch.distributed as dist

        objects = [obj]
        self._step(timeout_s, lambda: dist.broadcast_object_list(objects, group=self._group, group_src=0))
        return objects[0]

    def barrier(self, timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self._step(timeout_s, lambda: None)

    def _step(self, timeout_s: float, collective: Callable[[], None]) -> None:
        if self.broken:
            raise Broken(self.broken)

        def step() -> None:
            self._group.monitored_barrier(seconds(timeout_s if self.rank == 0 else IDLE_TIMEOUT_S),
                                          wait_all_ranks=True)
            collective()

        started = time.monotonic()
        try:
            self._wait(step) if self.rank == 0 else step()
        except Broken as exc:
            self.broken = str(exc)
            raise
        except RuntimeError as exc:  # torch: ranks that did not arrive in time, or a closed connection
            self.broken = short_error(exc)
            raise self._named(exc, timeout_s, timed_out=time.monotonic() - started >= timeout_s) from None
        except BaseException:  # a stop signal while waiting: the step is half done, the world unusable
            self.broken = "interrupted"
            raise

    def _wait(self, step: Callable[[], None]) -> None:
        """Rank 0: the step in a thread; here, stop signals are handled and this host's ranks watched."""
        done, failed = threading.Event(), []

        def run() -> None:
            try:
                step()
            except BaseException as exc:  # raised again in the waiting thread
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=run, name="ckptbench-step", daemon=True).start()
        while not done.wait(LIVENESS_EVERY_S):
            dead = self.dead_ranks()
            if dead:
                raise Broken("exited", self.name(dead))
        if failed:
            raise failed[0]

    def _named(self, exc: RuntimeError, timeout_s: float, timed_out: bool) -> Broken:
        """torch's verdict, with pids and hosts, and the ranks of this host that exited said to have (a closed
        connection may show before its process is seen to exit)."""
        dead = self.dead_ranks()
        for _ in range(0 if timed_out else 10):  # allow a dying process a moment to finish exiting
            if dead:
                break
            time.sleep(0.1)
            dead = self.dead_ranks()
        if dead:
            return Broken("exited", self.name(dead))
        found = _NAMED_BY_TORCH.search(str(exc))
        if found:
            late = [int(rank) for rank in found.group(1).split(",")]
            return Broken(f"did not answer within {timeout_s:.0f} s", self.name(late))
        return Broken(f"the connection to a rank broke ({self.broken}); the launcher's report names the rank")

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
        return [m.rank for m in self.members if m.host == here and m.rank != self.rank and not process_alive(m.pid)]

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
        self.broken = self.broken or "closed"
