"""The original harness's conditions, as data: what it did, and the test setting that reproduces it.

Two files beside this module hold the facts, read from the original's public code (google/tensorstore's
fork network, llama-work/, commit 5a62624): `original_harness.json` lists each condition with the words
explain's answers use, and what the original did that cannot move a figure here (and why);
`original_conditions.json` (sweeps/original_conditions.json links to it) holds the original's six tests
as a config, and is where `switch` reads "the original's setting" of each condition. Keeping the facts
as data means a correction to what the original did is an edit of a JSON file, not of the design.

This module also names the words explain.json uses for a condition's status and for what switching a
condition does to a claim, so that the design, the judgement and the sentences share one vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ckptbench.spec import compression

HARNESS_FILE = Path(__file__).with_name("original_harness.json")
ORIGINAL_CONFIG = Path(__file__).with_name("original_conditions.json")

# The two arms every design has: the user's config as given, and every condition switched at once.
TRUE, ORIGINAL = "true", "original"
# A condition's status in a design.
SWITCHED, SHARED, NOT_SWITCHABLE, LEFT_OUT = "switched", "shared", "not switchable", "left out"
# What switching one condition does to one claim.
INTO, OUT_OF, TOWARD, AWAY, NO_MOVE = "into", "out of", "toward", "away", "none"


@dataclass(frozen=True)
class Condition:
    """One way the original harness measured differently, and how explain's sentences speak of it."""

    name: str  # the arm's name and the word --conditions takes
    title: str  # in sentences: "reproduced only with warm loads"
    yours: str  # the measurement under the user's setting, in a few words ("cold")
    theirs: str  # the same under the original's ("warm")
    original: str  # what the original did
    consequence: str  # why switching it moves a figure
    requires: tuple[str, ...] = ()  # conditions it cannot be measured without
    default: bool = True  # measured unless --conditions leaves it out


_HARNESS = json.loads(HARNESS_FILE.read_text(encoding="utf-8"))
CONDITIONS: tuple[Condition, ...] = tuple(
    Condition(**{**c, "requires": tuple(c["requires"])}) for c in _HARNESS["conditions"])
BY_NAME: dict[str, Condition] = {c.name: c for c in CONDITIONS}
# What the original did that is not a setting, and why it cannot move a claim here.
NOT_MODELLED: tuple[dict[str, str], ...] = tuple(_HARNESS["not_modelled"])


def load_original(path: Path = ORIGINAL_CONFIG) -> dict[str, Any]:
    """The original's six tests and suite settings, as sweeps/original_conditions.json states them."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _original_test(original: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The original's test of that name, else its baseline (whose per-test habits every test shared)."""
    tests = {t["name"]: t for t in original["test_configurations"]}
    return tests.get(name, tests[original["baseline"]])


def is_raw(test: Mapping[str, Any]) -> bool:
    """Whether a config entry stores its tensors uncompressed."""
    return compression.normalize(test.get("compression")) is None


def switch(name: str, test: Mapping[str, Any], original: Mapping[str, Any]) -> dict[str, Any]:
    """A config entry with one condition switched to the original's setting (`original`: its config).

    "blocked" changes the suite's order, not a test, so it returns the entry unchanged: the design puts the
    arm's tests in a block of their own instead."""
    theirs = _original_test(original, test["name"])
    out = dict(test)
    if name == "blosc" and is_raw(test):
        out["compression"] = _original_test(original, original["baseline"])["compression"]
    elif name == "warm":
        out["cache_eviction"] = original["testing"]["cache_eviction"]
    elif name == "fp16":
        out["values"] = original["values"]
    elif name == "serial":
        out["in_flight"] = theirs["in_flight"]
    elif name == "conversions":
        out["timed_conversion"] = theirs["timed_conversion"]
    elif name == "chunks64" and test["name"] in {t["name"] for t in original["test_configurations"]}:
        out.pop("chunk_bytes", None)
        out["chunk_size_elements"] = theirs["chunk_size_elements"]
        out["chunk_strategy"] = theirs["chunk_strategy"]
    return out
