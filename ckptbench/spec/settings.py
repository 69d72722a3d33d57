"""The per-test settings a sweep can vary, with the short names sweep points are named by.

A leaf module: the config validates them, and the figures label axes with them without
importing the config (and what it imports).
"""

SWEEP_FIELDS: dict[str, str] = {
    "chunk_size_elements": "elems",
    "chunk_bytes": "chunk",
    "chunk_strategy": "strategy",
    "concurrency_limit": "conc",
    "compression": "comp",
    "format": "fmt",
    "kvstore": "kv",
    "shard_bytes": "shard",
    "data_copy_concurrency": "copy",
    "file_io_sync": "sync",
    "file_io_mode": "io",
    "in_flight": "inflight",
    "timed_conversion": "conv",
    "cache_eviction": "evict",
    "values": "values",
}
