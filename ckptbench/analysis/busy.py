"""Was the machine busy during a timed operation? The judgement of a run's `other_processes` (core.host): on a
launch of several hosts, the busiest host's (`busiest`).

An operation was busy when, during it, other processes of the host
- used more than a quarter of one core on average (CPU_SHARE) and at least CPU_FLOOR_S seconds in all: /proc/stat
  counts in 10 ms ticks per CPU, so a shorter figure is rounding, not a neighbour;
- or read or wrote more than BYTES_FLOOR of the disk, plus a tenth of the operation's own bytes and METADATA_PER_FILE
  for each file of the run: the filesystem's journal and inodes, which the kernel writes for this run's own files but
  counts to no process (ext4 writes about 16 KiB per fsync'd file).
A quiet host gives neither: the journal's periodic commits and a daemon's logging are a few MB; BYTES_FLOOR also
covers what idle processes read back after the harness drops the page cache (drop_caches empties it for every process:
35-40 MiB seen on a 2-core VM).

Only measured runs count (not warm-up runs, not failed ones): those are what the statistics hold.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ckptbench.analysis.samples import measured_runs

CPU_SHARE = 0.25
CPU_FLOOR_S = 0.1
BYTES_FLOOR = 64 * 2**20
BYTES_SHARE = 0.10
METADATA_PER_FILE = 32 * 2**10
OPERATIONS = ("save", "warm_load", "load")
NOT_JUDGED = "not judged: busy machine"  # compare's verdict for a difference the busy machine may have made


def busy(figures: Mapping[str, float], n_files: int | None = None) -> bool:
    """Whether other processes were busy during one operation (see the module docstring)."""
    seconds, cpu_s = float(figures["seconds"]), float(figures["cpu_s"])
    if cpu_s >= CPU_FLOOR_S and cpu_s > CPU_SHARE * seconds:
        return True
    own_bytes = float(figures.get("own_read_bytes", 0)) + float(figures.get("own_write_bytes", 0))
    floor = BYTES_FLOOR + BYTES_SHARE * own_bytes + METADATA_PER_FILE * (n_files or 0)
    return max(float(figures["read_bytes"]), float(figures["write_bytes"])) > floor


def busiest(by_host: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """One operation watched on several hosts (each host's first rank watches its host: parallel.writers): the
    figures of the host whose other processes were busiest (one judged busy first, then the larger share of a core,
    then the more device bytes), with its name (`host`) and how many hosts were watched (`hosts`) when more than one."""
    def load(item: tuple[str, Mapping[str, float]]) -> tuple[bool, float, float]:
        figures = item[1]
        share = figures["cpu_s"] / figures["seconds"] if figures["seconds"] > 0 else 0.0
        return busy(figures), share, max(figures["read_bytes"], figures["write_bytes"])

    name, figures = max(by_host.items(), key=load)
    return dict(figures) if len(by_host) == 1 else {**figures, "host": name, "hosts": len(by_host)}


def timed_operations(run: Mapping[str, Any]) -> list[str]:
    """The operations a run timed: save, the warm load (if any), the load."""
    return [op for op in OPERATIONS if run.get(f"{op}_s") is not None]


def busy_operations(run: Mapping[str, Any]) -> list[str]:
    """The run's operations during which the machine was busy."""
    figures = run.get("other_processes") or {}
    return [op for op in timed_operations(run) if op in figures and busy(figures[op], run.get("n_files"))]


def summary(runs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A test's measured runs: how many timed operations were busy (by operation), how many were watched and how
    many not (no /proc, or a file written before they were), the busy rounds, and what the others did during the
    busy ones (CPU seconds over the operations' seconds; device bytes)."""
    timed = watched = 0
    by_op: dict[str, int] = {}
    rounds: list[int] = []
    seconds = cpu_s = read_bytes = write_bytes = 0.0
    for run in measured_runs(runs):
        figures = run.get("other_processes") or {}
        ops = timed_operations(run)
        timed += len(ops)
        watched += sum(op in figures for op in ops)
        hits = busy_operations(run)
        for op in hits:
            by_op[op] = by_op.get(op, 0) + 1
            seconds += figures[op]["seconds"]
            cpu_s += figures[op]["cpu_s"]
            read_bytes += figures[op]["read_bytes"]
            write_bytes += figures[op]["write_bytes"]
        if hits:
            rounds.append(int(run["round"]))
    return {"operations": sum(by_op.values()), "timed": timed, "not_measured": timed - watched, "by_op": by_op,
            "rounds": sorted(rounds), "other_cpu_s": cpu_s, "seconds": seconds, "other_read_bytes": int(read_bytes),
            "other_write_bytes": int(write_bytes)}
