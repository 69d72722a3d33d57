"""Who this process is in a launch (torchrun, SLURM's srun, Open MPI's mpirun), from the launcher's variables.

`detect` maps each launcher's variables onto one `Launch` (the table is in docs/launching.md, "How a launch works";
SLURM's MASTER_ADDR falls back to the first host of SLURM_STEP_NODELIST, else of SLURM_JOB_NODELIST). An environment
that is neither a launch nor an ordinary run (a launcher's variables without their partners, numbers that contradict
each other) is refused in one line before anything is written: run as if no launcher were there, such a process would
run the whole suite beside its siblings in one output folder. Only variables are read here: torch is imported when a
world is joined (world.py).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

from ckptbench.core.errors import UserError

SLURM_PORT_BASE = 20000
DEFAULT_PORT = 29500
# Variables that come together: one set without its partner is a broken launch.
_PAIRS = (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"))
_TORCHRUN_ONLY = ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


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


def _check_pairs(env: Mapping[str, str]) -> None:
    for first, second in _PAIRS:
        if (env.get(first) is None) != (env.get(second) is None):
            given, missing = (first, second) if env.get(first) is not None else (second, first)
            raise UserError(f"{given} is set but {missing} is not: a launcher sets both; start the job with torchrun, "
                            f"srun or mpirun, or unset {given} for an ordinary run")
    if env.get("RANK") is None:
        stray = [name for name in _TORCHRUN_ONLY if env.get(name) is not None]
        if stray:
            raise UserError(f"{stray[0]} is set but RANK and WORLD_SIZE are not: a launcher sets all three; start the "
                            f"job with torchrun, or unset {stray[0]} for an ordinary run")


def _checked(launcher: str, rank: int | None, size: int) -> int:
    """The rank, once it fits the world."""
    if size < 1:
        raise UserError(f"{launcher}: a world of {size} ranks; the world size must be at least 1")
    if rank is None or not 0 <= rank < size:
        raise UserError(f"{launcher}: rank {rank} is outside the world of {size} ranks; check the launcher's variables")
    return rank


def _check_local(launcher: str, rank: int, size: int, local: int | None, local_size: int | None) -> None:
    if local_size is not None and not 1 <= local_size <= size:
        raise UserError(f"{launcher}: {local_size} ranks on this host but {size} in the world; check the launcher's "
                        "variables")
    if local is not None and not 0 <= local < (local_size or size):
        raise UserError(f"{launcher}: local rank {local} is outside the {local_size or size} ranks of this host; check "
                        "the launcher's variables")
    if local is not None and local > rank:
        raise UserError(f"{launcher}: local rank {local} is above the global rank {rank}; check the launcher's "
                        "variables")


def detect(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process belongs to (docs/launching.md has the table); None for an ordinary run."""
    env = os.environ if environ is None else environ
    _check_pairs(env)
    local_size = None
    if env.get("RANK") is not None:
        launcher = "torchrun" if env.get("TORCHELASTIC_RUN_ID") else "env"
        rank, size, local = _int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK")
        local_size = _int(env, "LOCAL_WORLD_SIZE")
        addr, port = env.get("MASTER_ADDR"), _int(env, "MASTER_PORT")
        prefix = f"{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        agent_store = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    elif env.get("OMPI_COMM_WORLD_RANK") is not None:
        launcher, prefix, agent_store = "mpi", "", False
        rank, size = _int(env, "OMPI_COMM_WORLD_RANK"), _int(env, "OMPI_COMM_WORLD_SIZE")
        local, local_size = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"), _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE")
        addr = env.get("MASTER_ADDR") or ("127.0.0.1" if local_size == size else None)
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
    rank = _checked(launcher, rank, size)
    if size > 1 and not addr:
        raise UserError(f"MASTER_ADDR: not set, and {launcher} does not say where rank 0 runs; "
                        "export MASTER_ADDR=<rank 0's host> (and MASTER_PORT) before starting the ranks")
    if size > 1 and (port is None or not 0 < port < 65536):
        raise UserError(f"MASTER_PORT: {port!r} is not a port; export MASTER_PORT=<a free port on rank 0's host>")
    _check_local(launcher, rank, size, local, local_size)
    if size == 1 or not addr or port is None:  # a world of one rank is an ordinary run (addr, port: checked above)
        return None
    return Launch(launcher, rank, size, local, addr, port, agent_store, prefix)
