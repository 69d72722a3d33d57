"""Many hosts: the suite run by every rank of a launch (torchrun, SLURM's srun, Open MPI's mpirun).

Each launcher tells a process who it is through environment variables; `detect` maps
them onto one `Launch`:

| meaning          | torchrun (or anything setting RANK, WORLD_SIZE) | SLURM `srun`                            | Open MPI `mpirun`            |
|------------------|-------------------------------------------------|-----------------------------------------|------------------------------|
| rank             | `RANK`                                          | `SLURM_PROCID`                          | `OMPI_COMM_WORLD_RANK`       |
| world size       | `WORLD_SIZE`                                    | `SLURM_STEP_NUM_TASKS`, else `SLURM_NTASKS` | `OMPI_COMM_WORLD_SIZE`   |
| rank on its host | `LOCAL_RANK`                                    | `SLURM_LOCALID`                         | `OMPI_COMM_WORLD_LOCAL_RANK` |
| rank 0's host    | `MASTER_ADDR`                                   | `MASTER_ADDR`, else the step's first host (`SLURM_STEP_NODELIST`, `SLURM_JOB_NODELIST`) | `MASTER_ADDR`; 127.0.0.1 when all ranks share one host |
| rendezvous port  | `MASTER_PORT`                                   | `MASTER_PORT`, else 20000 + `SLURM_JOB_ID` mod 20000 | `MASTER_PORT`, else 29500 |

`RANK`/`WORLD_SIZE` win over the others (torchrun started by srun sets both), and Open
MPI's win over SLURM's (mpirun inside an allocation). SLURM's are used only inside an
`srun` step (`SLURM_STEP_ID` set), not in the batch script itself. A world of one rank
is an ordinary run.

The ranks form one gloo process group (torch.distributed, CPU, TCP). It carries the
barriers that start each save and load together, the broadcast of each job from rank
0 and the all-gather of every rank's figures; its key-value store (torch's TCPStore,
hosted by torchrun's agent or by rank 0) carries the rendezvous and each rank's
progress, so rank 0 can name a rank that stops answering. The harness opens no
sockets of its own.

Rank 0 runs the suite (`runner.run`): checks, journal, plan, results and figures, as
in a single-process run. Every other rank only serves it (`distributed.serve`): it
saves and loads its slice of every array when rank 0 sends a job. So the plan, and
the seed it is drawn from, never leave rank 0: each job is broadcast as it comes.
torch is imported only when a world is joined.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pickle
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ckptbench.documents import store as documents
from ckptbench.core import interrupt
from ckptbench.core.errors import UserError

START_TIMEOUT_S = 600.0  # every rank must join (and load its weights) within this
IDLE_TIMEOUT_S = 6 * 3600.0  # a rank waits this long for rank 0's next step (rank 0 may run reference rows meanwhile)
SLURM_PORT_BASE = 20000
DEFAULT_PORT = 29500
_LIVENESS_EVERY_S = 0.2  # how often rank 0, waiting for the others, checks that its host's ranks live


@dataclass(frozen=True)
class Launch:
    """Who this process is in a launch, read from the launcher's environment variables."""

    launcher: str  # "torchrun", "env" (RANK/WORLD_SIZE set by something else), "slurm", "mpi", "processes"
    rank: int
    world_size: int
    local_rank: int | None
    master_addr: str
    master_port: int
    agent_store: bool = False  # torchrun's agent hosts the store; rank 0 must not start one
    store_prefix: str = ""  # keys of one attempt (torchrun restarts reuse its agent's store)


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}: {text!r} is not a whole number; it is set by the launcher "
                        "(torchrun, srun or mpirun): check how the job was started") from None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'node[003-005,9],gpu1' -> 'node003'."""
    match = re.match(r"\s*([^,\[]+)(?:\[([^\]]*)\])?", nodelist)
    if not match:
        raise UserError(f"SLURM_JOB_NODELIST: cannot read a host from {nodelist!r}; set MASTER_ADDR")
    name, ranges = match.group(1), match.group(2)
    return name + re.split(r"[,-]", ranges)[0] if ranges else name


def detect(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process belongs to (see the table above); None for an ordinary run."""
    env = os.environ if environ is None else environ
    if env.get("RANK") is not None and env.get("WORLD_SIZE") is not None:
        launcher = "torchrun" if env.get("TORCHELASTIC_RUN_ID") else "env"
        rank, size, local = _int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK")
        addr, port = env.get("MASTER_ADDR"), _int(env, "MASTER_PORT")
        prefix = f"{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        agent_store = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    elif env.get("OMPI_COMM_WORLD_RANK") is not None:
        launcher, prefix, agent_store = "mpi", "", False
        rank, size = _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE")
        local = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK")
        one_host = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE") == size
        addr = env.get("MASTER_ADDR") or ("127.0.0.1" if one_host else None)
        port = _int(env, "MASTER_PORT", DEFAULT_PORT)
    elif env.get("SLURM_PROCID") is not None and env.get("SLURM_STEP_ID") is not None:
        launcher, prefix, agent_store = "slurm", "", False
        rank, local = _int(env, "SLURM_PROCID"), _int(env, "SLURM_LOCALID")
        size = _int(env, "SLURM_STEP_NUM_TASKS", _int(env, "SLURM_NTASKS"))
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        addr = env.get("MASTER_ADDR") or (first_host(nodes) if nodes else None)
        port = _int(env, "MASTER_PORT", SLURM_PORT_BASE + (_int(env, "SLURM_JOB_ID", 0) or 0) % 20000)
    else:
        return None
    if size is None:
        raise UserError(f"{launcher}: the world size is not set; start the job with torchrun, srun or mpirun")
    if size <= 1:
        return None
    if rank is None or not 0 <= rank < size:
        raise UserError(f"{launcher}: rank {rank} is outside the world of {size} ranks; check the launcher's variables")
    if not addr:
        raise UserError(f"MASTER_ADDR: not set, and {launcher} does not say where rank 0 runs; "
                        "export MASTER_ADDR=<rank 0's host> (and MASTER_PORT) before starting the ranks")
    if port is None or not 0 < port < 65536:
        raise UserError(f"MASTER_PORT: {port!r} is not a port; export MASTER_PORT=<a free port on rank 0's host>")
    return Launch(launcher, rank, size, local, addr, port, agent_store, prefix)


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


class RankLost(interrupt.Interrupted):
    """A rank of a launch died or stopped answering: the launch cannot go on.

    Handled like a stop signal: the runs so far are kept (results.json, journal.jsonl)
    and `--resume` continues under a new launch.
    """

    def __init__(self, message: str) -> None:
        BaseException.__init__(self, message)
        self.signum = 0
        self.results = None

    @property
    def exit_status(self) -> int:  # type: ignore[override]
        return 1


_lost = False  # set once a rank of this launch is lost


def ignore_stop_signals() -> None:
    """A launch whose rank is lost ends: stop signals (the launcher's SIGTERM to every rank) are ignored from
    now on, so that rank 0 removes the run in progress and writes what finished (as after a first Ctrl-C)."""
    global _lost
    _lost = True
    if threading.current_thread() is threading.main_thread():
        for sig in interrupt.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def _stop_signal(signum: int, frame: Any) -> None:
    """Rank 0's handler outside the runs (where interrupt.signals_raise has its own): the default action,
    unless the launch is lost, when the launcher's SIGTERM must not cut short the results and the last line."""
    if _lost:
        return
    if signum == signal.SIGINT:
        signal.default_int_handler(signum, frame)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


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
                        f"{launch.master_addr}:{launch.master_port} ({first_line(exc)}); rank 0 must run on "
                        "MASTER_ADDR's host and MASTER_PORT must be free there") from None


def first_line(exc: BaseException) -> str:
    """An error's first line, cut to 300 characters for a one-line message between ranks."""
    return documents.first_line(exc)[:300]


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
    def join(cls, launch: Launch, store: Any = None, timeout_s: float = START_TIMEOUT_S) -> "World":
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
                            f"{launch.world_size - 1} ranks within {timeout_s:.0f} s ({first_line(exc)}); "
                            "start every rank with the same world size and MASTER_ADDR/MASTER_PORT") from None
        world = cls(launch, store, group)
        if launch.rank != 0:
            _start_heartbeat(launch)
        here = Member(launch.rank, socket.gethostname(), os.getpid(), launch.local_rank)
        world.members = [Member(**m) for m in world.all_gather(dataclasses.asdict(here), timeout_s=timeout_s,
                                                                during="start-up")]
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
            self.broken = first_line(exc)
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


HEARTBEAT_S = 0.5


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


# --- running a suite under a launcher ---------------------------------------------------------------

_current: World | None = None


def current() -> World | None:
    """The launch this process has joined, while a suite runs under a launcher; else None."""
    return _current


def launched() -> bool:
    """True when this process was started by a launcher with several ranks and has not joined them yet."""
    return _current is None and detect() is not None


def run(config: Any, run_suite: Callable[..., Any], **options: Any) -> Any:
    """Run a suite under a launcher: rank 0 runs `run_suite(config, **options)` (runner.run) and drives the
    other ranks, which serve it and return None (or exit with rank 0's status when it stopped on an error)."""
    global _current, _lost
    launch = detect()
    assert launch is not None
    _lost = False
    world = World.join(launch)
    _current = world
    status = 1
    try:
        _check_same_suite(world, config)
        if world.rank != 0:
            status = _serve(world, config)
            if status:
                raise SystemExit(status)  # rank 0 said why
            return None
        handlers = _install(_stop_signal)
        try:
            outcome = run_suite(suite_for_launch(config, launch), **options)
        finally:
            if not _lost:  # a lost launch keeps ignoring the launcher's SIGTERM until the last line is out
                _install(handlers)
        status = 0
        return outcome
    except UserError:
        status = 2
        raise
    except interrupt.Interrupted as stop:
        status = stop.exit_status
        dead = world.dead_ranks() if not isinstance(stop, RankLost) else []
        if dead:  # the launcher stopped rank 0 because another rank died: say which
            ignore_stop_signals()
            lost = RankLost(f"the loss of {world.name(dead)}, which exited; the launcher then stopped this rank")
            lost.results = stop.results
            raise lost from None
        raise
    finally:
        if world.rank == 0 and not world.broken:
            try:
                world.broadcast(("stop", status), timeout_s=60, during="the end")
            except Broken:
                pass
        world.close()
        _current = None


def _install(handler: Any) -> dict[int, Any]:
    """Set the stop signals' handler (one, or one per signal), returning the ones it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers = handler if isinstance(handler, dict) else {sig: handler for sig in interrupt.SIGNALS}
    return {sig: signal.signal(sig, h) for sig, h in handlers.items()}


def suite_for_launch(config: Any, launch: Launch) -> Any:
    """The suite with every TensorStore test run by the launch's ranks (they are its processes)."""
    from ckptbench.spec import config as config_mod

    if tuple(config.processes) not in ((1,), (launch.world_size,)):
        raise UserError(f"--processes: started by {launch.launcher} with {launch.world_size} ranks, the ranks are "
                        "the processes; drop --processes (and the config's processes), or run without the launcher")
    for test in config.tests:  # the other ranks hold the suite's weights only
        if not test.is_reference and config.values_for(test) != config.values:
            raise UserError(f"test {test.name!r}: its own values ({config.values_for(test)!r}) under a launcher, "
                            f"whose ranks hold the suite's weights (values {config.values!r}); drop the test's "
                            "values, or run it without the launcher")
    return config_mod.with_processes(config, launch.world_size)


def suite_hash(config: Any) -> tuple[str, dict[str, Any]]:
    """A digest of what every rank must agree on: the suite, without where this host keeps its files."""
    from ckptbench.documents import journal

    described = journal.fingerprint(config.to_json(), {})
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest(), described


def _check_same_suite(world: World, config: Any) -> None:
    """Refuse, on every rank, a launch whose ranks were given different suites (rank 0 says how)."""
    from ckptbench.documents import journal

    digest, described = suite_hash(config)
    digests = world.all_gather(digest, timeout_s=START_TIMEOUT_S, during="start-up")
    if len(set(digests)) == 1:
        return
    suites = world.all_gather(described, timeout_s=START_TIMEOUT_S, during="start-up")
    world.broken = "the ranks were given different suites"  # nothing more is sent: every rank stops here
    if world.rank != 0:
        raise SystemExit(2)  # rank 0 prints the one line
    other = next(r for r, d in enumerate(digests) if d != digests[0])
    differences = journal.differences(suites[0], suites[other])
    raise UserError(f"{world.launch.launcher}: {world.name([other])} was given a different suite than rank 0 "
                    f"(rank 0 -> rank {other}: {'; '.join(differences[:3]) or 'details differ'}); "
                    "start every rank with the same command, config and flags")


def _serve(world: World, config: Any) -> int:
    """A rank other than 0: check what it can, load its weights, then save and load slices until rank 0 stops."""
    from ckptbench.parallel import distributed
    from ckptbench.bench import targets

    # A stop signal ends this rank at once, mid-write if need be: the launcher (torchrun, srun, mpirun) sends
    # it to every rank, and rank 0 removes the run's folder once no rank writes into it any more.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    problem, tensors = None, None
    try:
        targets.set_http_timeouts()
        targets.parse(config.storage, config.output_dir, config.storage_options).check()
        if world.leader(world.rank) == world.rank:
            tensors = load_weights(config)
    except Exception as exc:  # reported by rank 0, in one line naming this rank
        problem = first_line(exc)
    try:
        step = world.broadcast(during="start-up")
        if step[0] == "stop":
            return step[1]
        tensors = share_weights(world, tensors, problem, config)
        return distributed.serve(world, tensors, label=f"rank {world.rank}")
    except Broken as exc:
        print(f"error: rank {world.rank}: the launch broke ({exc}); rank 0 keeps the runs so far",
              file=sys.stderr)
        return 1


def wait_ready(tensors: Mapping[str, Any]) -> None:
    """Rank 0, before anything is written: hand the weights to this host's other ranks and check that every
    rank has its weights and can reach the storage. Does nothing outside a launch."""
    world = current()
    if world is None:
        return
    try:
        world.broadcast(("weights",), timeout_s=START_TIMEOUT_S, during="start-up")
        share_weights(world, tensors, None, None)
    except Broken as exc:
        raise UserError(f"{world.launch.launcher}: {exc} while the ranks were starting; "
                        "check every rank's output") from None


def share_weights(world: World, tensors: Mapping[str, Any] | None, problem: str | None, config: Any) -> Any:
    """Every rank: each host's leader offers its weights to the host's other ranks through /dev/shm (one copy
    per host, as --processes does); the others map them (or make their own). Then every rank reports whether
    it is ready, and rank 0 refuses the suite, with one line, if one is not."""
    from ckptbench.parallel import distributed

    leader = world.leader(world.rank) == world.rank
    shared = None
    if leader and tensors is not None and len(world.hosts()[world.members[world.rank].host]) > 1:
        try:
            shared = distributed.SharedTensors.create(tensors)
        except OSError:  # a small /dev/shm: each rank makes its own
            shared = None
    try:
        offers = world.all_gather((problem, shared), timeout_s=START_TIMEOUT_S, during="start-up")
        if not leader and problem is None:
            try:
                offer = offers[world.leader(world.rank)][1]
                tensors = offer.open() if offer is not None else load_weights(config)
            except Exception as exc:  # reported by rank 0
                problem = first_line(exc)
        reports = world.all_gather((problem, identity(tensors)), timeout_s=START_TIMEOUT_S, during="start-up")
    finally:
        if shared is not None:
            shared.remove()  # every rank of the host has mapped it (or given up): the memory lives while mapped
    if world.rank == 0:
        for rank, (trouble, mine) in enumerate(reports):
            if trouble is not None:
                raise UserError(f"{world.name([rank])}: {trouble}")
            if mine != reports[0][1]:
                raise UserError(f"{world.name([rank])} has other weights than rank 0 ({mine} against "
                                f"{reports[0][1]}: tensors, parameters, bytes, dtype); give every rank the same "
                                "--weights")
    return tensors


def load_weights(config: Any) -> Any:
    """A rank's own copy of the suite's weights (the same seed, or the same checkpoint, as rank 0's)."""
    from ckptbench.sources import weights

    return weights.load(config.model, weights.resolve(config.weights)[0], config.dtype, config.values).tensors


def identity(tensors: Mapping[str, Any] | None) -> tuple | None:
    """What every rank's weights must share with rank 0's: tensors, parameters, bytes and dtype."""
    if tensors is None:
        return None
    arrays = list(tensors.values())
    return (len(arrays), sum(int(a.size) for a in arrays), sum(int(a.nbytes) for a in arrays),
            str(arrays[0].dtype) if arrays else None)
