"""The config file's structure as a JSON Schema, and its errors in one line that names the field.

Structure is checked by the schema (so types, ranges and unknown keys are data, not code); `describe_error` turns
jsonschema's first error into words a user can act on.
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Any, Mapping, Sequence

import jsonschema
from jsonschema.exceptions import best_match

from ckptbench.core.errors import UserError
from ckptbench.core.records import ORDERS
from ckptbench.spec.fields import CACHE_EVICTION, LOAD_INTO, TEST_SCHEMA, sweepable
from ckptbench.spec.presets import PRESETS, VALUES
from ckptbench.spec.references import REFERENCES, config_schema
from ckptbench.spec.suite import CONFIRM_OBJECTIVES, DTYPES, MAX_PROCESSES

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["test_configurations"],
    "properties": {
        "description": {"type": "string"},
        "model": {"enum": sorted(PRESETS)},
        "weights": {"type": ["string", "null"]},
        "dtype": {"enum": list(DTYPES)},
        "values": {"enum": list(VALUES)},
        "output_dir": {"type": "string", "minLength": 1},
        "baseline": {"type": "string"},
        "storage": {"type": ["string", "null"]},
        "storage_options": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"endpoint": {"type": "string"}, "region": {"type": "string"},
                           "max_retries": {"type": "integer", "minimum": 0, "maximum": 100}},
        },
        "processes": sweepable({"type": "integer", "minimum": 1, "maximum": MAX_PROCESSES}),
        # --tp's config form: every test and reference row loaded by each of these tensor-parallel rank counts
        "tp": sweepable({"type": "integer", "minimum": 1, "maximum": MAX_PROCESSES}),
        "references": {
            "type": "object",
            "additionalProperties": False,
            "properties": {name: config_schema(name) for name in REFERENCES},
        },
        "testing": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "num_runs": {"type": "integer", "minimum": 1, "maximum": 1000},
                "warmup_rounds": {"type": "integer", "minimum": 0, "maximum": 100},
                "seed": {"type": ["integer", "null"], "minimum": 0},
                "cache_eviction": {"enum": list(CACHE_EVICTION)},
                "load_into": {"enum": list(LOAD_INTO)},
                "order": {"enum": list(ORDERS)},
                "max_inflight_bytes": {"type": "integer", "minimum": 2**20},
                "noise_pct": {"type": "number", "minimum": 0, "maximum": 100},
                "confirm_rounds": {"type": "integer", "minimum": 0, "maximum": 100},
                "confirm_blocks": {"type": "integer", "minimum": 1, "maximum": 10},
                "confirm_pause_s": {"type": "number", "minimum": 0, "maximum": 86400},
                "confirm_objectives": {"type": "array", "minItems": 1, "uniqueItems": True,
                                       "items": {"enum": list(CONFIRM_OBJECTIVES)}},
            },
        },
        "test_configurations": {"type": "array", "minItems": 1, "items": TEST_SCHEMA},
    },
}


_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many({
    # JSON Schema counts 2.0 as an integer; a count or a size must be written as a whole number
    "integer": lambda _checker, value: isinstance(value, int) and not isinstance(value, bool),
    "number": lambda _checker, value: (isinstance(value, (int, float)) and not isinstance(value, bool)
                                       and math.isfinite(value))})
Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)


def validate_structure(data: Any, source: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{source}: the top level must be a JSON object {{...}}, got {type(data).__name__}")
    error = best_match(Validator(SCHEMA).iter_errors(data))
    if error is not None:
        raise UserError(f"{source}: {_where(data, list(error.absolute_path))}: {describe_error(error)}")


def _where(data: Mapping[str, Any], path: Sequence[Any]) -> str:
    """'test "chunks_1mb" field concurrency_limit' style location of a schema error."""
    if len(path) >= 2 and path[0] == "test_configurations":
        test = data["test_configurations"][path[1]]
        name = test.get("name") if isinstance(test, dict) else None
        who = f"test {name!r}" if isinstance(name, str) else f"test_configurations[{path[1]}]"
        rest = ".".join(str(p) for p in path[2:])
        return f"{who} field {rest}" if rest else who
    return "field " + ".".join(str(p) for p in path) if path else "top level"


_JSON_TYPES = {"integer": "a whole number", "number": "a number", "string": "a string", "object": "an object",
               "array": "a list", "null": "null", "boolean": "true or false"}


# Messages for schema errors whose wording depends only on the limit and the value shown.
_SIMPLE_MESSAGES = {
    "minimum": "must be at least {limit}, got {shown}",
    "maximum": "must be at most {limit}, got {shown}; that is beyond any sensible setting",
    "minLength": "must not be empty",
}


def describe_error(error: jsonschema.ValidationError) -> str:
    value, kind = error.instance, error.validator
    shown = json.dumps(value) if not isinstance(value, (dict, list)) else type(value).__name__
    if kind in _SIMPLE_MESSAGES:
        return _SIMPLE_MESSAGES[kind].format(limit=error.validator_value, shown=shown)
    if kind == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        unknown = sorted(set(value) - set(allowed))[0]
        return f"unknown key {unknown!r}{suggest(unknown, allowed)}"
    if kind == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"expected {' or '.join(_JSON_TYPES[t] for t in types)}, got {shown}"
    if kind == "enum":
        return f"{shown} is not allowed; use one of {', '.join(json.dumps(v) for v in error.validator_value)}"
    if kind == "required":
        return f"missing required field {error.message.split(chr(39))[1]!r}"
    if kind in ("minItems", "maxItems"):
        if not value:
            return "is empty; list at least one test" if list(error.absolute_path) == ["test_configurations"] \
                else "is empty; list at least one value"
        return f"expected a [low, high] pair of numbers, got {json.dumps(value)}"
    if kind == "pattern":
        if error.absolute_path and error.absolute_path[-1] == "name":
            return f"{shown} is not a valid test name; use letters, digits, '_', '-', '.' or '=' (at most 200)"
        return f"{shown} is not a size; use a number of bytes or a string like \"64KB\", \"1MB\" or \"t5x\""
    if kind == "anyOf":
        branches = error.validator_value
        if not (len(branches) == 2 and branches[1].get("type") == "array"):  # not a sweepable field (fields.sweepable)
            return f"expected {' or '.join(_expected(branch) for branch in branches)}, got {shown}"
        return f"expected {_expected(branches[0])} (or a list of them, to sweep), got {shown}"
    return error.message


def _expected(schema: Mapping[str, Any]) -> str:
    """What a (sub)schema accepts, in words."""
    if "anyOf" in schema:
        return " or ".join(_expected(branch) for branch in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    types = schema.get("type", [])
    words = " or ".join(_JSON_TYPES[t] for t in (types if isinstance(types, list) else [types]))
    if schema.get("properties"):
        words += " of " + ", ".join(schema["properties"])
    if schema.get("pattern"):
        words += " like \"64KB\""
    if "minimum" in schema and "maximum" in schema:
        words += f" from {schema['minimum']} to {schema['maximum']}"
    return words


def suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(choices)}"
