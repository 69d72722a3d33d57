"""Sweeps: a test whose settings hold lists is one test per combination, each named by its values.

A sweep's size is known before a single point is made (`count_points`), so a plan of tens of thousands of tests is
refused at once; its points are then made one at a time.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterator, Mapping

from ckptbench.core.errors import UserError
from ckptbench.core.units import parse_size, size_label
from ckptbench.spec import compression
from ckptbench.spec.fields import SWEEP_FIELDS


def swept_fields(raw: Mapping[str, Any]) -> list[str]:
    """The settings of a config entry that hold lists, in SWEEP_FIELDS order (the order of a point's name)."""
    return [f for f in SWEEP_FIELDS if isinstance(raw.get(f), list)]


def count_points(raw: Mapping[str, Any]) -> int:
    """How many tests a config entry expands to, without making any."""
    return math.prod(len(raw[f]) for f in swept_fields(raw))


def iter_sweep(raw: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """A test whose settings hold lists becomes one test per combination (the cross product), made one at a time."""
    swept = swept_fields(raw)
    if not swept:
        yield dict(raw)
        return
    for values in itertools.product(*(raw[f] for f in swept)):
        point = {**raw, **dict(zip(swept, values))}
        point["name"] = raw["name"] + "".join(f"_{SWEEP_FIELDS[f]}={_value_label(f, v)}" for f, v in zip(swept, values))
        point["_sweep"] = dict(zip(swept, values))
        yield point


def _value_label(field_name: str, value: Any) -> str:
    if field_name in ("chunk_bytes", "shard_bytes"):
        return size_label(parse_size(value, field_name))
    if field_name == "compression":
        try:
            return compression.label(compression.normalize(value))
        except UserError:
            return str(value.get("id") if isinstance(value, dict) else value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return "default" if value is None else str(value)
