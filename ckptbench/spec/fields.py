"""A test's settings, one table: the fields of `TestSpec`.

Each field a config file may set carries an `Option` in its metadata: its JSON Schema, whether it is required, its short
label in sweep point names (or none: it cannot be swept), how a config value becomes the field's value and back, and
whether it changes how a checkpoint is laid out. Everything else is derived from this one table: the config schema of a
test (`TEST_SCHEMA`), the sweepable fields (`SWEEP_FIELDS`), the parser of a config entry (`read_test`) and its writer
(`entry`), and `tune`'s key of identical layouts (`LAYOUT_FIELDS`). A new setting is one new field here.

The field order is the order of a config entry's keys and of the labels in a sweep point's name
("zarr2_chunk=1MB_conc=128"), so it is kept stable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ckptbench.core.units import MAX_SIZE_BYTES, SIZE_PATTERN, parse_size, size_label
from ckptbench.spec import chunking, compression
from ckptbench.spec.presets import VALUES

OPTION = "ckptbench.option"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,199}$"  # sweep points of many axes have long names
MAX_CHUNK_ELEMENTS = 2**30  # 4 GiB of float32
MAX_CONCURRENCY = 4096
MAX_TP = 256  # as many readers as processes (spec.suite.MAX_PROCESSES)
CACHE_EVICTION = ("auto", "drop_caches", "fadvise", "none")
FORMATS = ("zarr2", "zarr3")
KVSTORES = ("file", "ocdbt", "memory")
# What each choice of these does: PHASE4_GUIDE.md, section 3 ("A test") and the sections it names
FILE_IO_MODES = ("default", "memmap", "direct")  # TensorStore's file_io_mode context resource (kvstore/file)
IN_FLIGHT = ("all", "one_tensor")  # how many tensors a save or load keeps in flight
LOAD_INTO = ("new", "preallocated")  # where a load puts what it reads (the suite's testing.load_into, a test's own)
SAVE_MODES = ("sync", "async")  # how a save runs beside training (bench.async_save)

_POSITIVE_INT = {"type": "integer", "minimum": 1}
_RANGE_PCT = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
# A size is bytes as a whole number, or a string such as "64KB", "1MiB" or "t5x" (64 MiB).
SIZE_SCHEMA = {"anyOf": [{**_POSITIVE_INT, "maximum": MAX_SIZE_BYTES}, {"type": "string", "pattern": SIZE_PATTERN}]}


@dataclass(frozen=True)
class Option:
    """How one field of a test appears in a config file."""

    schema: dict[str, Any]  # JSON Schema of one value
    sweep: str | None = None  # label in a sweep point's name; None: the field cannot be swept
    required: bool = False
    read: Callable[[Any, str], Any] | None = None  # config value -> field value (where: for error messages)
    write: Callable[[Any], Any] | None = None  # field value -> config value
    layout: bool = True  # False: it does not change what a save writes (or acts only through chunk shapes)
    always_written: bool = False  # written into an entry even at its default, so the entry reads on its own


def option(default: Any = dataclasses.MISSING, **settings: Any) -> Any:
    """A TestSpec field that a config file sets."""
    return field(default=default, metadata={OPTION: Option(**settings)})


def _size_out(value: int | None) -> Any:
    return None if value is None else size_label(value)  # "1MB", or "1000B": both read back to the same bytes


@dataclass(frozen=True)
class TestSpec:
    """One configuration to measure: a TensorStore layout, or a reference row (`backend`)."""

    name: str = option(schema={"type": "string", "pattern": NAME_PATTERN}, required=True, layout=False)
    description: str = option("", schema={"type": "string"}, layout=False)
    chunk_size_elements: int | None = option(None, schema={**_POSITIVE_INT, "maximum": MAX_CHUNK_ELEMENTS},
                                             sweep="elems", layout=False)
    chunk_bytes: int | None = option(None, schema=SIZE_SCHEMA, sweep="chunk", read=parse_size, write=_size_out,
                                     layout=False)
    chunk_strategy: str = option("halve", schema={"enum": list(chunking.STRATEGIES)}, sweep="strategy", layout=False,
                                 always_written=True)
    concurrency_limit: int | None = option(None, schema={**_POSITIVE_INT, "maximum": MAX_CONCURRENCY}, sweep="conc",
                                           required=True, always_written=True)
    # written out as "none": an omitted compressor is not raw storage in zarr v2
    compression: dict[str, Any] | None = option(None, schema={"type": ["string", "object", "null"]}, sweep="comp",
                                                read=compression.normalize, always_written=True,
                                                write=lambda value: "none" if value is None else value)
    format: str = option("zarr2", schema={"enum": list(FORMATS)}, sweep="fmt", always_written=True)
    kvstore: str = option("file", schema={"enum": list(KVSTORES)}, sweep="kv")
    shard_bytes: int | None = option(None, schema=SIZE_SCHEMA, sweep="shard", read=parse_size, write=_size_out,
                                     layout=False)
    # None: TensorStore's default (one per core)
    data_copy_concurrency: int | None = option(None, schema={"type": ["integer", "null"], "minimum": 1,
                                                             "maximum": MAX_CONCURRENCY}, sweep="copy")
    file_io_sync: bool = option(True, schema={"type": "boolean"}, sweep="sync")
    file_io_mode: str = option("default", schema={"enum": list(FILE_IO_MODES)}, sweep="io")
    in_flight: str = option("all", schema={"enum": list(IN_FLIGHT)}, sweep="inflight")
    load_into: str | None = option(None, schema={"enum": list(LOAD_INTO)}, sweep="into")  # None: the suite's
    # The original's conversions inside the timers (bench.storage)
    timed_conversion: bool = option(False, schema={"type": "boolean"}, sweep="conv")
    # None: the suite's testing.cache_eviction ("auto" under tp > 1 is fadvise: SuiteConfig.eviction_for)
    cache_eviction: str | None = option(None, schema={"enum": list(CACHE_EVICTION)}, sweep="evict")
    # Also time a load from the page cache the save left, before the eviction (warm_load_s), as `explain` uses it
    warm_load: bool = option(False, schema={"type": "boolean"})
    values: str | None = option(None, schema={"enum": list(VALUES)}, sweep="values")  # None: the suite's
    # tests sharing a block run back to back (AAABBB) at a seeded place in the rounds
    block: str | None = option(None, schema={"type": "string", "pattern": NAME_PATTERN})
    # Tensor parallelism (spec.tensor_parallel): loads by `tp` readers, each its slice; tp_save: saves too
    tp: int = option(1, schema={**_POSITIVE_INT, "maximum": MAX_TP}, sweep="tp", layout=False)
    tp_save: bool = option(False, schema={"type": "boolean"}, sweep="tpsave", layout=False)
    # (layout left True for both: tune must not take an async candidate for its sync twin)
    save_mode: str = option("sync", schema={"enum": list(SAVE_MODES)}, sweep="mode")
    # Async saves: bytes of the weights the stand-in training step reads (None: bench.async_save's default)
    train_step_bytes: int | None = option(None, schema=SIZE_SCHEMA, read=parse_size, write=_size_out)
    expected: dict[str, list[float]] | None = option(None, layout=False, schema={
        "type": "object", "additionalProperties": False,
        "properties": {"save_pct": _RANGE_PCT, "load_pct": _RANGE_PCT, "size_pct": _RANGE_PCT}})
    # Set by the suite, not by a config entry:
    processes: int = 1  # worker processes that save and load the checkpoint together
    backend: str = "tensorstore"  # or a reference row's kind (spec.references)
    reference_settings: dict[str, Any] | None = None  # a reference row's settings (spec.references), defaults filled
    # Why this row's load_into is not the suite's (a row that cannot fill preallocated arrays, or cannot load
    # into new ones); None where it is
    load_into_note: str | None = None
    sweep: dict[str, Any] | None = None  # the swept settings of a sweep point, by field

    def chunk_budget_elements(self, itemsize: int) -> int:
        """Elements per chunk: given directly, or the byte budget divided by the item size."""
        if self.chunk_size_elements is not None:
            return self.chunk_size_elements
        if self.chunk_bytes is None:
            raise ValueError(f"{self.name} has no chunk size")
        return max(1, self.chunk_bytes // itemsize)

    @property
    def durable(self) -> bool:
        """Whether a save's time includes making the data durable (fsync'd to a disk or a server's store)."""
        return self.file_io_sync and self.kvstore != "memory"

    @property
    def is_reference(self) -> bool:
        return self.backend != "tensorstore"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OPTIONS: dict[str, Option] = {f.name: f.metadata[OPTION] for f in dataclasses.fields(TestSpec) if OPTION in f.metadata}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TestSpec) if f.name in OPTIONS}
SWEEP_FIELDS: dict[str, str] = {name: o.sweep for name, o in OPTIONS.items() if o.sweep}
LAYOUT_FIELDS: tuple[str, ...] = tuple(name for name, o in OPTIONS.items() if o.layout)


def sweepable(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A field that takes one value, or a list of values to sweep over."""
    return {"anyOf": [dict(schema), {"type": "array", "minItems": 1, "items": dict(schema)}]}


TEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [name for name, o in OPTIONS.items() if o.required],
    "properties": {name: sweepable(o.schema) if o.sweep else o.schema for name, o in OPTIONS.items()},
}


def read_test(raw: Mapping[str, Any], where: str) -> TestSpec:
    """A TestSpec from a config entry whose structure TEST_SCHEMA accepted (one sweep point).
    `where` ("config: test 'x'") starts the error messages of values that fail to read."""
    values = {name: (option.read(raw[name], f"{where} field {name}") if option.read else raw[name])
              for name, option in OPTIONS.items() if name in raw}
    return TestSpec(**values, sweep=raw.get("_sweep"))


def entry(test: TestSpec, *, name: str | None = None, description: str | None = None,
          every_field: bool = False) -> dict[str, Any]:
    """A test as a config entry (test_configurations in phase4_config.json) that `read_test` reads back to
    the same test: the settings that differ from their defaults (and those always written), or with
    `every_field` every setting that has a value (a canonical form: equal tests give equal entries)."""
    given = {"name": name, "description": description}
    out: dict[str, Any] = {}
    for key, option in OPTIONS.items():
        value = getattr(test, key) if given.get(key) is None else given[key]
        left_out = ((value is None and key != "compression") if every_field
                    else not option.always_written and value == DEFAULTS[key])
        if not left_out:
            out[key] = option.write(value) if option.write else value
    return out


def layout_settings(test: TestSpec) -> tuple[tuple[str, Any], ...]:
    """The settings that decide what a save writes, apart from the chunk and shard shapes."""
    return tuple((key, getattr(test, key)) for key in LAYOUT_FIELDS)
