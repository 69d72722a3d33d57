"""This process's part in a launch (torchrun, srun, mpirun), chosen once at the command line.

`Session(launch)` joins the world of ranks (docs/launching.md, "How a launch works", says what each rank does). Rank 0
runs the suite with the launch's ranks as its writers (`LaunchWriters`); every other rank only serves (`serve`). So the
plan, and the seed it is drawn from, never leave rank 0: each job is broadcast as it comes.

Stops: the launcher sends SIGTERM to every rank when one dies. Once a rank is lost, rank 0 ignores stop signals
(`lose`), so that it removes the run in progress and writes what finished; the stop it raises (`Stopped`, cause lost
rank) names the rank.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping

from ckptbench.bench import targets
from ckptbench.bench.backend import Backend
from ckptbench.bench.context import Executor, RunContext
from ckptbench.core import interrupt
from ckptbench.core.errors import Stopped, UserError
from ckptbench.documents import journal
from ckptbench.parallel.backend import backend_of
from ckptbench.parallel.launch import Launch
from ckptbench.parallel.shared import SharedTensors, handoff
from ckptbench.parallel.world import START_TIMEOUT_S, Broken, World, short_error
from ckptbench.parallel.writers import WriterPool, serve
from ckptbench.sources import weights
from ckptbench.spec import config as config_mod
from ckptbench.spec.fields import TestSpec
from ckptbench.spec.suite import SuiteConfig


class Session:
    """One rank's membership of a launch, from joining the world (made) to the last word rank 0 sends (exit)."""

    def __init__(self, launch: Launch) -> None:
        self.world = World.join(launch)
        self.lost = False  # set once a rank of this launch is lost
        self.status = 1  # what rank 0 tells the other ranks at the end

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        world = self.world
        if world.rank == 0 and not world.broken:
            try:
                world.broadcast(("stop", self.status), timeout_s=60)
            except Broken:
                pass
        world.close()

    @property
    def is_rank0(self) -> bool:
        return self.world.rank == 0

    # --- every rank ---

    def check_same_suite(self, config: SuiteConfig) -> None:
        """Refuse, on every rank, a launch whose ranks were given different suites (rank 0 says how)."""
        world = self.world
        described = journal.fingerprint(config.to_json(), {})  # the suite, without where this host keeps its files
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
        digests, suites = zip(*world.all_gather((digest, described), timeout_s=START_TIMEOUT_S))
        if len(set(digests)) == 1:
            return
        world.broken = "the ranks were given different suites"  # nothing more is sent: every rank stops here
        if world.rank != 0:
            raise SystemExit(2)  # rank 0 prints the one line
        other = next(r for r, d in enumerate(digests) if d != digests[0])
        differences = journal.differences(suites[0], suites[other])
        raise UserError(f"{world.launch.launcher}: {world.name([other])} was given a different suite than rank 0 "
                        f"(rank 0 -> rank {other}: {'; '.join(differences[:3]) or 'details differ'}); "
                        "start every rank with the same command, config and flags")

    # --- rank 0 ---

    def run(self, context: RunContext, run_suite: Executor) -> Any:
        """Rank 0: run the suite with the launch's ranks as its writers; the status the other ranks get at
        the end follows how it ended."""
        try:
            launched = dataclasses.replace(context, config=suite_for_launch(context.config, self.world.launch),
                                           writers=LaunchWriters(self))
            main = threading.current_thread() is threading.main_thread()  # the only thread that may set handlers
            handlers = {sig: signal.signal(sig, self._stop_signal) for sig in interrupt.SIGNALS} if main else {}
            try:
                outcome = run_suite(launched)
            finally:
                if not self.lost:  # a lost launch keeps ignoring the launcher's SIGTERM until the last line is out
                    for sig, handler in handlers.items():
                        signal.signal(sig, handler)
            self.status = 0
            return outcome
        except UserError:
            self.status = 2
            raise
        except Stopped as stop:
            self.status = stop.exit_status
            dead = self.world.dead_ranks() if stop.cause != Stopped.LOST_RANK else []
            if dead:  # the launcher stopped rank 0 because another rank died: say which
                self.lose()
                lost = Stopped.by_lost_rank(f"the loss of {self.world.name(dead)}, which exited; the launcher then "
                                            "stopped this rank")
                lost.partial = stop.partial
                raise lost from None
            raise

    def lose(self) -> None:
        """A rank is lost and the launch ends: stop signals (the launcher's SIGTERM to every rank) are ignored
        from now on, so that rank 0 removes the run in progress and writes what finished."""
        self.lost = True
        if threading.current_thread() is threading.main_thread():
            for sig in interrupt.SIGNALS:
                signal.signal(sig, signal.SIG_IGN)

    def _stop_signal(self, signum: int, frame: Any) -> None:
        """Rank 0's handler outside the runs (where interrupt.signals_raise has its own): the default action,
        unless the launch is lost, when the launcher's SIGTERM must not cut short the results and the last line."""
        if self.lost:
            return
        if signum == signal.SIGINT:
            signal.default_int_handler(signum, frame)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    # --- the other ranks ---

    def serve(self, config: SuiteConfig) -> int:
        """A rank other than 0: check what it can, load its weights, then save and load slices until rank 0
        stops; the exit status rank 0 sent (it reports why)."""
        world = self.world
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
            problem = short_error(exc)
        try:
            step = world.broadcast()
            if step[0] == "stop":
                return step[1]
            tensors = share_weights(world, tensors, problem, config)
            return serve(world, tensors, label=f"rank {world.rank}")
        except Broken as exc:
            print(f"error: rank {world.rank}: the launch broke ({exc}); rank 0 keeps the runs so far",
                  file=sys.stderr)
            return 1


class LaunchWriters(WriterPool):
    """The writers of a launch, for `bench.suite.run_suite`: every rank, rank 0 (this process) among them.
    A lost rank ends the launch: the session is told (`Session.lose`) before the stop is raised, so that the
    launcher's SIGTERM does not cut short the cleanup that follows."""

    def __init__(self, session: Session) -> None:
        super().__init__(list(range(session.world.size)), session.world)
        self.session = session

    def backend(self, test: TestSpec, config: SuiteConfig, target: targets.Target) -> Backend:
        return backend_of(test, config, target, self)

    def ready(self, tensors: Mapping[str, Any]) -> None:
        """Rank 0, before anything is written: hand the weights to this host's other ranks and check that
        every rank has its weights and can reach the storage."""
        world = self.session.world
        try:
            world.broadcast(("weights",), timeout_s=START_TIMEOUT_S)
            share_weights(world, tensors, None, None)
        except Broken as exc:
            raise UserError(f"{world.launch.launcher}: {exc} while the ranks were starting; "
                            "check every rank's output") from None

    def describe(self) -> dict[str, Any] | None:
        return self.session.world.describe()

    def start(self, tensors: Mapping[str, Any]) -> None:
        self._tensors = tensors

    def stop(self) -> None:
        # The launch itself ends with the suite (Session); a broken one, with its launcher, which stops every rank
        # (so none still writes into a run folder rank 0 removes).
        self._rounds, self._replies = [], None

    close = stop

    def _lost(self, broken: Broken, during: str) -> BaseException:
        self.session.lose()
        if broken.who:
            return Stopped.by_lost_rank(f"the loss of {broken.who}, which {broken.what} during {during}")
        return Stopped.by_lost_rank(f"a broken launch during {during}: {broken.what}")


def suite_for_launch(config: SuiteConfig, launch: Launch) -> SuiteConfig:
    """The suite with every TensorStore test run by the launch's ranks (they are its processes)."""
    if tuple(config.processes) not in ((1,), (launch.world_size,)):
        raise UserError(f"--processes: started by {launch.launcher} with {launch.world_size} ranks, the ranks are "
                        "the processes; drop --processes (and the config's processes), or run without the launcher")
    for test in config.tests:  # the other ranks hold the suite's weights only
        if not test.is_reference and config.values_for(test) != config.values:
            raise UserError(f"test {test.name!r}: its own values ({config.values_for(test)!r}) under a launcher, "
                            f"whose ranks hold the suite's weights (values {config.values!r}); drop the test's "
                            "values, or run it without the launcher")
    for test in config.tests:  # a tensor-parallel load's readers are the ranks
        if test.tp > 1 and test.tp != launch.world_size:
            raise UserError(f"test {test.name!r}: tp {test.tp} under {launch.launcher} with {launch.world_size} ranks; "
                            f"the ranks are the tensor-parallel readers: start {test.tp} ranks, or use --tp "
                            f"{launch.world_size}")
    return config_mod.with_processes(config, launch.world_size)


def share_weights(world: World, tensors: Mapping[str, Any] | None, problem: str | None,
                  config: SuiteConfig | None) -> Any:
    """Every rank: each host's leader offers its weights to the host's other ranks through /dev/shm (one copy
    per host, as --processes does); the others map them (or make their own). Then every rank reports whether
    it is ready, and rank 0 refuses the suite, with one line, if one is not."""
    leader = world.leader(world.rank) == world.rank
    shared = None
    if leader and tensors is not None and len(world.hosts()[world.members[world.rank].host]) > 1:
        shared = handoff(tensors, fallback=None)  # the source file; weights in memory go through /dev/shm
    try:
        offers = world.all_gather((problem, shared), timeout_s=START_TIMEOUT_S)
        if not leader and problem is None and config is not None:  # rank 0 leads its host: it passes no config
            try:
                offer = offers[world.leader(world.rank)][1]
                tensors = offer.open() if offer is not None else load_weights(config)
            except Exception as exc:  # reported by rank 0
                problem = short_error(exc)
        reports = world.all_gather((problem, identity(tensors)), timeout_s=START_TIMEOUT_S)
    finally:
        if isinstance(shared, SharedTensors):
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


def load_weights(config: SuiteConfig) -> Any:
    """A host's own copy of the suite's weights (the same seed, or the same checkpoint, as rank 0's), in a source
    file of its own in a temporary folder this process removes when it ends."""
    folder = Path(tempfile.mkdtemp(prefix="ckptbench-source-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return weights.plan(config.model, config.weights, config.dtype, config.values).to_file(folder).tensors


def identity(tensors: Mapping[str, Any] | None) -> tuple | None:
    """What every rank's weights must share with rank 0's: tensors, parameters, bytes and dtype."""
    if tensors is None:
        return None
    arrays = list(tensors.values())
    return (len(arrays), sum(int(a.size) for a in arrays), sum(int(a.nbytes) for a in arrays),
            str(arrays[0].dtype) if arrays else None)
