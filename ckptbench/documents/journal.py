"""The run journal: every finished run appended (and fsync'd) the moment it ends.

`journal.jsonl` in the output folder holds one header line (the suite's fingerprint: config, weight source, seed; a
document of kind "journal", documents.store.Kind) and then one line per finished run. A crash, Ctrl-C or SIGTERM loses
at most the run in progress, and `--resume` continues from it: it refuses when the config or the weights differ from the
header, then runs only what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

from ckptbench.core.errors import UserError
from ckptbench.core.records import RunRecord
from ckptbench.documents.store import Kind
from ckptbench.spec.fields import TestSpec
from ckptbench.spec.suite import SuiteConfig

JOURNAL_FILE = "journal.jsonl"


def _upgrade_1_to_2(header: dict[str, Any]) -> dict[str, Any]:
    """Version 1 named its format in `format`; the rest is unchanged."""
    return {k: v for k, v in header.items() if k != "format"}


# Version 1 (ckptbench 0.2.0): {"type": "suite", "format": "ckptbench-journal-1", ...}.
JOURNAL = Kind("journal", 2, "journal.schema.json", upgrades={1: _upgrade_1_to_2},
               legacy_version=lambda header: 1 if header.get("format") == "ckptbench-journal-1" else None)
# Settings that may change between an interrupted run and its resumption: where
# files go does not change what is measured, and the seed is the journal's own.
_NOT_FINGERPRINTED = ("output_dir", "config_path", "seed")


def fingerprint(config_json: Mapping[str, Any], weights_info: Mapping[str, Any]) -> dict[str, Any]:
    """What must be identical for runs to belong to one suite."""
    config = {k: v for k, v in config_json.items() if k not in _NOT_FINGERPRINTED}
    return json.loads(json.dumps({"config": config, "weights": dict(weights_info)}))  # as read back: tuples are lists


class Journal:
    """Append-only, fsync'd JSON lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self, suite_fingerprint: Mapping[str, Any], seed: int) -> None:
        """Begin a new journal (replacing one of an earlier suite in this folder)."""
        header = JOURNAL.stamp({"type": "suite", "seed": seed, **suite_fingerprint})  # each line says what it is
        JOURNAL.validate(header, str(self.path))
        self._write_line(header, mode="w")

    def append(self, record: RunRecord) -> None:
        self._write_line({"type": "run", **record.to_json()}, mode="a")

    def _write_line(self, entry: Mapping[str, Any], mode: str) -> None:
        text = json.dumps(entry, allow_nan=False) + "\n"  # fails before touching the file
        with open(self.path, mode, encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> tuple[dict[str, Any], list[RunRecord]]:
        """(header, finished runs). A torn last line (a crash mid-write) is ignored."""
        if not self.path.is_file():
            raise UserError(f"--resume: no {JOURNAL_FILE} in {self.path.parent}; there is nothing to resume there")
        lines = self.path.read_text(encoding="utf-8").splitlines()
        entries = []
        for number, line in enumerate(lines, 1):
            try:
                entries.append(json.loads(line))
            except ValueError:
                if number == len(lines):
                    break  # the run being written when the process died
                raise UserError(f"--resume: {self.path} line {number} is damaged; start afresh without "
                                "--resume") from None
        if not entries or not isinstance(entries[0], dict):
            raise UserError(f"--resume: {self.path} is not a journal this version wrote; start afresh without --resume")
        try:
            header = JOURNAL.upgrade(entries[0], f"--resume: {self.path}")
        except UserError as exc:
            raise UserError(f"{exc}; start afresh without --resume") from None
        runs = [RunRecord.from_json(e) for e in entries[1:] if e.get("type") == "run"]
        return header, runs


def _as_today(config_json: Mapping[str, Any]) -> dict[str, Any]:
    """A journal's config as today's code writes it: a setting added since the journal was written takes its
    default, so a suite interrupted before an upgrade resumes when it set none of the new settings. (A header
    without a config, as tune's weights-only check gives, stays empty.)"""
    if not config_json:
        return {}
    suite_defaults = {f.name: f.default for f in dataclasses.fields(SuiteConfig)
                      if f.default is not dataclasses.MISSING}
    test_defaults = json.loads(json.dumps(TestSpec(name="").to_json()))
    tests = [{**test_defaults, **test} if "load_into_note" in test and test.get("load_into") else
             _destination_then(test) for test in config_json.get("tests", [])]
    out = {**{k: v for k, v in suite_defaults.items() if k not in _NOT_FINGERPRINTED}, **config_json}
    return json.loads(json.dumps({**out, "tests": tests}, default=str))


def _destination_then(test: Mapping[str, Any]) -> dict[str, Any]:
    """A test of a journal written before every row's destination was resolved (spec.config.destined), with the
    destination it loaded into then: its own load_into or "new" (the only suite-wide destination there was), but torch
    DCP's, which loaded into preallocated tensors whatever it said, so that it resumes only where it would again."""
    from ckptbench.spec.config import destined

    names = {f.name for f in dataclasses.fields(TestSpec)}
    spec = TestSpec(**{key: value for key, value in test.items() if key in names})
    if spec.backend == "torch_dcp":
        spec = dataclasses.replace(spec, load_into="preallocated")
    return json.loads(json.dumps(destined(spec, SuiteConfig(tests=(), baseline="", output_dir=Path())).to_json()))


def differences(header: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable list of what differs between a journal's suite and the current one."""
    found = []
    for section in ("config", "weights"):
        old, new = header.get(section, {}), current.get(section, {})
        if section == "config":
            old = _as_today(old)
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                found.append(f"{section}.{key}: was {_short(old.get(key))}, now {_short(new.get(key))}")
    return found


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
