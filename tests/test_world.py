"""The gloo world names a rank that dies or hangs, quickly: real spawned ranks on loopback, torch's collectives.

Rank 0 (this process) waits in an all-gather. A rank that dies is named as having exited, even while another rank
is still busy with a long local operation (torch's monitored barrier alone would name it only once the busy rank
arrived); a rank that hangs is named when the step's timeout runs out. The bounds are those the world had before
it used torch's collectives: a death seen by the liveness poll (every 0.2 s), a hang at the timeout plus at most
1.5 s (three heartbeats); each is asserted with a wide margin for a busy machine."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from ckptbench.parallel.launch import Launch
from ckptbench.parallel.world import Broken, World, connect_store, seconds

LOOPBACK = "127.0.0.1"
BUSY_S = 30.0  # a rank's long local operation, far longer than any bound below
MISBEHAVE_AFTER_S = 0.25  # after joining, the rank under test dies or freezes
TIMEOUT_S = 1.0  # rank 0's timeout for the step in which a rank hangs (one that dies: the busy rank's BUSY_S and more)
MARGIN_S = 5.0  # a busy, shared machine


def _rank_main(launch: Launch, behaviour: str) -> None:
    world = World.join(launch, store=connect_store(launch))
    if behaviour in ("dies", "hangs"):
        time.sleep(MISBEHAVE_AFTER_S)
        os.kill(os.getpid(), signal.SIGKILL if behaviour == "dies" else signal.SIGSTOP)
    if behaviour == "busy":
        time.sleep(BUSY_S)
    world.all_gather(None)


@pytest.mark.parametrize("behaviour", ["dies", "hangs"])
def test_a_rank_that_dies_or_hangs_is_named_in_time(behaviour: str) -> None:
    import torch.distributed as dist

    store = dist.TCPStore(LOOPBACK, 0, 3, is_master=True, timeout=seconds(60), wait_for_workers=False)
    launch = Launch("processes", 0, 3, 0, LOOPBACK, store.port)
    # Ranks are fresh processes forked from one server that imported torch's collectives once for both tests
    spawn = multiprocessing.get_context("forkserver")
    spawn.set_forkserver_preload([__name__, "torch.distributed"])
    ranks = [spawn.Process(target=_rank_main, args=(Launch("processes", rank, 3, rank, LOOPBACK, store.port), does),
                           daemon=True)
             for rank, does in ((1, "busy" if behaviour == "dies" else "prompt"), (2, behaviour))]
    for process in ranks:
        process.start()
    try:
        world = World.join(launch, store=store, timeout_s=60)
        started = time.monotonic()
        with pytest.raises(Broken) as caught:
            world.all_gather(None, timeout_s=TIMEOUT_S if behaviour == "hangs" else 2 * BUSY_S)
        elapsed_s = time.monotonic() - started
    finally:
        for process in ranks:
            process.kill()
            process.join()
    world.close()
    print(f"{behaviour}: named after {elapsed_s:.2f} s")
    assert caught.value.who == f"rank 2 (pid {ranks[1].pid} on {os.uname().nodename})", str(caught.value)
    if behaviour == "dies":
        assert caught.value.what.startswith("exited"), caught.value.what
        assert elapsed_s < MISBEHAVE_AFTER_S + MARGIN_S < BUSY_S, elapsed_s  # not once the busy rank arrives
    else:
        assert caught.value.what == f"did not answer within {TIMEOUT_S:.0f} s"
        assert TIMEOUT_S <= elapsed_s < TIMEOUT_S + 1.5 + MARGIN_S, elapsed_s
