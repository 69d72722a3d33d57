"""The reference rows: what a user would store checkpoints with instead, and the device's own ceiling.

Every fact about a reference kind lives in its entry here: its name in a config's `references` block (and its test's
name), its words, what the memory pre-check and `tune`'s budget assume of it before anything is measured, and its colour
in figures. The code that measures each kind is `bench.references`, keyed by the same names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ckptbench.core.errors import UserError
from ckptbench.core.units import size_label
from ckptbench.spec.fields import SAVE_MODES, SWEEP_FIELDS

SAVE_MODE = "save_mode"  # a key every kind's entries take besides its settings: the row's TestSpec.save_mode
CHECKPOINTER = "async_checkpointer"  # torch_dcp's: how its async save writes (bench.async_save)

CEILING = "device_ceiling"
DIRECT_PREFIX = "direct "  # in the name of a ceiling pattern read with O_DIRECT


@dataclass(frozen=True)
class Setting:
    """One setting of a reference row: its JSON Schema, its default (the library's own) and what it does."""

    schema: dict[str, Any]
    default: Any
    meaning: str
    label: str  # in the name of a row with this setting given ("runai_streamer_conc=32")


@dataclass(frozen=True)
class Reference:
    kind: str  # the config's key, the test's name and the back end's name
    label: str  # in words
    description: str  # what one run does, for results.json
    memory_multiplier: float  # peak anonymous memory of the whole process per byte of model (bench.capacity)
    prior_s_per_gb: float  # seconds of one run's save and load per GB of model, before any is measured
    colour: str
    peer: bool = True  # a loader a user could pick instead of TensorStore (the ceiling is not one)
    later_s_per_gb: float | None = None  # a later run's, where it does less than the first (None: the same)
    # What a kind's entries in a config's `references` block may set (the test's `reference_settings`)
    settings: Mapping[str, Setting] = field(default_factory=dict)
    # What must import for the row to run here (a package, a native library it loads); else it is skipped
    package: str | None = None  # the distribution that brings it (requirements.txt pins it), for the reason
    modules: tuple[str, ...] = ()
    # Anonymous bytes some settings add to the multiplier's (from the settings, the model's bytes and load_into)
    extra_memory: Callable[[Mapping[str, Any], int, str], float] | None = None
    # Under load_into "preallocated": its own read buffer per byte of model, besides the arrays (fastsafetensors')
    copy_buffer: float = 0.0
    # Under tp > 1 (spec.tensor_parallel): how each rank reads its slice, or why the row cannot (it is skipped)
    tp_load: str = ""
    tp_unsupported: str | None = None
    tp_reads_whole: bool = False  # each tp reader holds the whole model before it copies its slice out
    # A load's claim to read around the page cache, in words ("" for none), which the harness checks after each load
    bypass_claim: str = ""
    # (load_into, why) of a row whose destination is its design, whatever the suite's load_into; None: the suite's
    destination: tuple[str, str] | None = None

    def memory_bytes(self, settings: Mapping[str, Any] | None, model_bytes: int, load_into: str | None = None
                     ) -> float:
        """Peak anonymous memory of a row with these settings, beyond the process's fixed part (bench.capacity)."""
        need = self.memory_multiplier * model_bytes
        if load_into == "preallocated":
            need += self.copy_buffer * model_bytes
        if self.extra_memory is not None:
            need += self.extra_memory({**{k: s.default for k, s in self.settings.items()}, **(settings or {})},
                                      model_bytes, load_into or "new")
        return need

    @property
    def prior_later_s_per_gb(self) -> float:
        return self.prior_s_per_gb if self.later_s_per_gb is None else self.later_s_per_gb


def _threads(default: int, meaning: str, label: str = "threads") -> Setting:
    return Setting({"type": "integer", "minimum": 1, "maximum": 1024}, default, meaning, label)


def _runai_buffers(settings: Mapping[str, Any], model_bytes: int, load_into: str) -> float:
    """Run:ai with owned false keeps its read buffers besides the copies it hands out: up to its memory limit
    (-1: unlimited), so a limit of at most a quarter of the model keeps the harness's memory bound. Under
    load_into "preallocated" its owned buffers are besides the arrays they are copied into: counted as the
    whole model (not measured: an upper bound)."""
    if settings["owned"]:
        return 0.0 if load_into == "new" else float(model_bytes)  # new: the buffers are the loaded copy
    limit = settings["memory_limit"]
    return float(model_bytes if limit < 0 else min(limit, model_bytes))


# Run:ai's settings: environment variables its C++ core reads when a streamer is made (a setting at its default
# "auto"/null leaves its variable unset, so the core picks), and `owned`. Their names and defaults are the core's own
# (runai-model-streamer 0.17.1, its debug log of a streamer's settings; PHASE4_GUIDE.md, section 4.7).
RUNAI_STRATEGIES = ("auto", "io_uring_direct", "libaio_direct", "sync_buffered")
_RUNAI_SETTINGS = {
    "concurrency": Setting({"type": ["integer", "null"], "minimum": 1, "maximum": 1024}, None,
                           "RUNAI_STREAMER_CONCURRENCY: its C++ core's reader threads (and, for files, its queue "
                           "depth unless fs_queue_depth is given); null: unset, the core's own (16 threads, queue "
                           "depth 64)", "conc"),
    "chunk_bytesize": Setting({"type": "integer", "minimum": 4096, "maximum": 2**30}, 2 * 2**20,
                              "RUNAI_STREAMER_CHUNK_BYTESIZE: bytes of each file-system read (its \"file system block "
                              "size\")", "chunk"),
    "fs_strategy": Setting({"enum": list(RUNAI_STRATEGIES)}, "auto",
                           "RUNAI_STREAMER_FS_STRATEGY: how it reads files: io_uring_direct and libaio_direct "
                           "(O_DIRECT), sync_buffered (pread through the page cache); auto: unset, the first that "
                           "works here", "fs"),
    "fs_queue_depth": Setting({"type": ["integer", "null"], "minimum": 1, "maximum": 4096}, None,
                              "RUNAI_STREAMER_FS_QUEUE_DEPTH: file-system reads in flight (node-wide; for files it "
                              "also sets the reader threads); null: unset, from the concurrency", "qd"),
    "memory_limit": Setting({"type": "integer", "minimum": -1, "maximum": 2**50}, 40_000_000_000,
                            "RUNAI_STREAMER_MEMORY_LIMIT: bytes of its read buffers (-1: unlimited; 0: one "
                            "tensor's), read at each stream_files call", "mem"),
    "owned": Setting({"type": "boolean"}, True,
                     "true: each tensor it yields is the caller's (its buffers are not reused); false: buffers are "
                     "reused, so the load copies each tensor out", "owned"),
}
_FASTSAFETENSORS_SETTINGS = {
    "max_threads": _threads(16, "SafeTensorsFileLoader's max_threads: threads of its copies"),
    "bbuf_size_kb": Setting({"type": "integer", "minimum": 64, "maximum": 2**24}, 16 * 1024,
                            "SafeTensorsFileLoader's bbuf_size_kb: KiB of its bounce buffer (nogds reads pread "
                            "through it)", "bbuf"),
}


# Multipliers (anonymous memory per byte of model, beyond the process's fixed part): each row's loaded copy (the
# ceiling's, its read buffer), measured on a 2-core VM (PHASE4_GUIDE.md, section 9; docs/measurements/memory.md);
# Run:ai with owned false keeps its buffers besides: 2.0 at its default 40 GB limit, 1.24 with 512 MiB (tinyllama).
# Priors (seconds per GB of a run's save and load) from open_llama_3b in bfloat16 (6.85 GB) on the same machine, where
# the ceiling's 13 passes over the bytes took 12 s/GB; its full grid is now 19 passes, its later runs 7 to 9. The
# peers' priors are safetensors' scaled by the ratio of their save + load seconds to its, measured in the same suites.
REFERENCES: dict[str, Reference] = {ref.kind: ref for ref in (
    Reference("safetensors", "safetensors",
              "reference: safetensors save_file + fsync, load_file with every tensor copied out of the map",
              1.05, 3.0, "#6a4c93",
              tp_load="each rank: safe_open(...).get_slice(name)[its slice], as vLLM loads a shard"),
    Reference("torch_save", "torch.save", "reference: torch.save + fsync, torch.load", 1.05, 3.0, "#1b998b",
              tp_load="each rank: torch.load of the whole file (mmap off), then its slice copied out",
              tp_reads_whole=True),
    Reference("runai_streamer", "Run:ai streamer",
              "reference: safetensors save_file + fsync; Run:ai Model Streamer streams the file (O_DIRECT reads "
              "through io_uring) into tensors it hands over (owned), or copies each out of buffers it reuses",
              1.05, 1.5, "#ff7f0e", package="runai-model-streamer", modules=("runai_model_streamer",),
              settings=_RUNAI_SETTINGS, extra_memory=_runai_buffers,
              tp_load="each rank: streams the whole file (it has no slice request), then copies its slice out",
              tp_reads_whole=True,
              bypass_claim="O_DIRECT reads"),
    Reference("fastsafetensors", "fastsafetensors", "reference: safetensors save_file + fsync; fastsafetensors on "
              "the CPU (nogds: pread through a bounce buffer) reads the file into one buffer, the tensors views of it",
              1.05, 1.5, "#8c564b", package="fastsafetensors", modules=("fastsafetensors",),
              settings=_FASTSAFETENSORS_SETTINGS, copy_buffer=1.0,
              tp_unsupported="fastsafetensors under tp is not measured yet: its slices come from a process group's "
                             "shards (get_sharded), which the harness's readers do not form"),
    Reference("torch_dcp", "torch DCP",
              "reference: torch.distributed.checkpoint save (FileSystemWriter, every file fsync'd) and load "
              "(FileSystemReader) into a state dict allocated from its metadata inside the clock, or into the "
              "preallocated tensors (load_into), one process, no process group", 1.25, 3.5, "#3a86ff",
              package="torch", modules=("torch.distributed.checkpoint",),
              settings={"thread_count": _threads(1, "FileSystemWriter's thread_count: writing threads, a file each "
                                                  "(torch 2.13's FileSystemReader has no thread count: it reads in "
                                                  "one thread)"),
                        CHECKPOINTER: Setting({"enum": ["thread", "process"]}, "thread",
                                              "save_mode \"async\" only: async_save's async_checkpointer_type, the "
                                              "save written by a thread of this process or by a process of DCP's own",
                                              "checkpointer")},
              tp_load="each rank: dcp.load of tensors of its slices' shapes, no process group, with a planner "
                      "asking for each slice at its offsets (as a DTensor shard would); the FileSystemReader reads "
                      "each saved tensor whole, then narrows it"),
    Reference(CEILING, "device ceiling",
              "reference: the same bytes written and read cold in raw files, over a grid of access patterns (fio's "
              "io_uring queues too where fio is on PATH); the fastest pattern of each run is the ceiling", 1.05, 18.0,
              "#c1121f", peer=False, later_s_per_gb=8.0,
              destination=("preallocated", "the device ceiling reads into one buffer touched before the clock "
                                           "whatever load_into: it measures the device, not the allocation"),
              tp_load="N reader processes from a common start, each reading 1/N of the bytes (one file, 16 MiB "
                      "blocks, cold)",
              bypass_claim="its O_DIRECT read pattern"),
)}


def defaults(kind: str) -> dict[str, Any]:
    """A kind's settings at their defaults (the library's own)."""
    return {name: setting.default for name, setting in REFERENCES[kind].settings.items()}


def config_schema(kind: str) -> dict[str, Any]:
    """What a config's `references` block takes for a kind: true or false; or, for a kind with settings, an object
    of them (one row), or a list of such objects (one row each: the settings a peer is tried with)."""
    properties = {name: setting.schema for name, setting in REFERENCES[kind].settings.items()}
    properties[SAVE_MODE] = {"enum": list(SAVE_MODES)}  # every row's, the test's save_mode (bench.async_save)
    one = {"type": "object", "additionalProperties": False, "properties": properties}
    return {"anyOf": [{"type": "boolean"}, one, {"type": "array", "minItems": 1, "maxItems": 100, "items": one}]}


def rows_of(kind: str, value: Any) -> list[tuple[str, dict[str, Any]]]:
    """A kind's rows from its `references` value (checked by config_schema), as (test name, settings with defaults
    filled): none when it is off; one named after the kind for true or an object; one per entry of a list, named
    after the settings it gives ("runai_streamer_conc=32_chunk=8MB"; the kind alone for an empty entry)."""
    if value is False or value is None:
        return []
    if not isinstance(value, list):  # one row: named after the kind (and its save mode, when async)
        given = value if isinstance(value, Mapping) else {}
        rows = [(row_name(kind, {k: v for k, v in given.items() if k == SAVE_MODE}), {**defaults(kind), **given})]
    else:
        rows = [(row_name(kind, entry), {**defaults(kind), **entry}) for entry in value]
    for _, settings in rows:  # kept only where not DCP's default: an async row of threads has its sync twin's settings
        if settings.get(CHECKPOINTER) == "thread":
            del settings[CHECKPOINTER]
        elif CHECKPOINTER in settings and settings.get(SAVE_MODE) != "async":
            raise UserError(f"references.{kind}: {CHECKPOINTER} chooses how an async save writes; add \"save_mode\": "
                            f"\"async\" to that row, or drop {CHECKPOINTER}")
    return rows


def row_name(kind: str, given: Mapping[str, Any]) -> str:
    """A row's name from the settings its entry gives, in the kind's order of settings."""
    settings = REFERENCES[kind].settings
    parts = [f"{settings[name].label}={_value_label(given[name])}" for name in settings if name in given]
    if given.get(SAVE_MODE, "sync") != "sync":
        parts.append(f"{SWEEP_FIELDS[SAVE_MODE]}={given[SAVE_MODE]}")
    return "_".join([kind, *parts])


def kind_of(name: str) -> str | None:
    """The reference kind of a row named by rows_of (the kind itself, or the kind and its settings), else None."""
    return next((kind for kind in REFERENCES if name == kind or name.startswith(kind + "_")
                 and "=" in name[len(kind):]), None)


def _value_label(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int) and value >= 2**20 and value % 2**20 == 0:
        return size_label(value)  # a byte count: "8MB", binary, as sweep point names write sizes
    return str(value)


def unavailable(kind: str) -> str | None:
    """Why a kind cannot run here (its package missing, or a native library it loads failing), or None.
    Imports its modules: a row is skipped with this reason before anything is written."""
    for module in REFERENCES[kind].modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or OSError from a native library, or anything its import raises
            text = f"{type(exc).__name__}: {exc}".splitlines()[0]
            package = REFERENCES[kind].package or module
            return (f"{package} cannot be used here ({text}): not installed, or not made for this platform; "
                    "requirements.txt installs it on Linux")
    return None


def label(kind: str) -> str:
    """A reference kind in words, or the name itself for anything else."""
    return REFERENCES[kind].label if kind in REFERENCES else kind
