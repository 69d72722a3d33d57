"""The files the harness writes and reads back, all by one convention (results, tuning, the run journal, a tune's
state).

Every file is of a `Kind`: its first two keys name the kind and its `schema_version`; a JSON Schema shipped in
documents/schemas/ is its contract; and an upgrade chain brings every older version this tool wrote to the current one
(files written before kinds were named are recognised by each kind's `legacy_version`). One way to do each step: written
atomically and durably (a reader, or a resume after a crash, never sees half a file), read with one-line errors, checked
against the schema with the first broken field named.

A schema does not restate a dataclass the document holds (a results file's runs are `RunRecord`s): the kind names it
(`Kind.derived`), and the properties of that part of the schema are the dataclass's fields, each typed by its annotation
(`field_schemas`); the file keeps only what an annotation cannot say (which fields every version wrote, enums, an inner
object's keys, what a field means), added to the derived property.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable, Mapping

from ckptbench.core.errors import UserError, first_line
from ckptbench.core.system import fsync_path

SCHEMAS = Path(__file__).with_name("schemas")


class Document:
    """A document the harness wrote, and where it lies."""

    def __init__(self, document: dict[str, Any], path: Path | None = None) -> None:
        self.document = document
        self.path = path

    @property
    def complete(self) -> bool:
        return bool(self.document["complete"])


def weights_name(weights: Mapping[str, Any]) -> str:
    """What a document's weights are called: the hub id, the preset, or the checkpoint's folder."""
    return str(weights.get("repo_id") or weights.get("name") or weights.get("path") or "?")


def write_json(path: Path, document: Any, indent: int = 2) -> Path:
    """Write document to path atomically and durably (fsync'd, the folder entry too)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(document, indent=indent, allow_nan=False) + "\n"  # fails before touching the file
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
    return path


def read_json(path: Path | str, what: str) -> Any:
    """The parsed file; one line naming the file and what is wrong where it cannot be read."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; give the {what} file in it") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable {what} file ({first_line(exc)})") from None


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def type_schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of a value of an annotated type: bool, int, float, str, list[T], dict[str, T], or one of
    them | None; Any is any value."""
    if annotation is Any:
        return {}
    args = typing.get_args(annotation)
    if type(None) in args:
        (inner,) = (arg for arg in args if arg is not type(None))
        schema = type_schema(inner)
        return {**schema, "type": [schema["type"], "null"]}
    origin = typing.get_origin(annotation) or annotation
    schema = {"type": _JSON_TYPES[origin]}
    if origin is list:
        schema["items"] = type_schema(args[0])
    elif origin is dict:
        schema["additionalProperties"] = type_schema(args[1])
    return schema


def field_schemas(cls: type) -> dict[str, dict[str, Any]]:
    """A dataclass's fields as JSON Schema properties, each typed by its annotation."""
    hints = typing.get_type_hints(cls)
    return {f.name: type_schema(hints[f.name]) for f in dataclasses.fields(cls)}


@cache
def _validator(schema_file: Path, derived: tuple[tuple[str, type], ...] = ()) -> Any:
    import jsonschema

    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    for name, cls in derived:
        part, fields = schema["$defs"][name], field_schemas(cls)
        part["properties"] = {**fields, **{key: {**fields.get(key, {}), **refined}
                                           for key, refined in part.get("properties", {}).items()}}
    return jsonschema.Draft202012Validator(schema)


def schema_error(document: Any, validator: Any) -> str | None:
    """'field/path: what is wrong' for the first error against a schema's validator, else None."""
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(document))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "top level"
    return f"{where}: {first_line(error.message)[:200]}"


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


Upgrade = Callable[[dict[str, Any]], dict[str, Any]]  # a document of version v, as version v + 1


@dataclass(frozen=True)
class Kind:
    """One kind of file: its name, the version this tool writes, its schema and its upgrade chain."""

    name: str  # "results", "tuning", "explanation", "journal", "tune state"
    version: int
    schema: str | None  # a file in documents/schemas/ (None: the kind checks itself)
    upgrades: Mapping[int, Upgrade] = field(default_factory=dict)  # v -> v + 1
    # files written before kinds had names: their version (None: not one of this kind)
    legacy_version: Callable[[Mapping[str, Any]], int | None] = lambda _document: None
    derived: tuple[tuple[str, type], ...] = ()  # (part of the schema's $defs, the dataclass its properties are)

    def stamp(self, document: Mapping[str, Any]) -> dict[str, Any]:
        rest = {k: v for k, v in document.items() if k not in ("kind", "schema_version")}
        return {"kind": self.name, "schema_version": self.version, **rest}

    def version_of(self, document: Any, source: str) -> int:
        if not isinstance(document, dict):
            raise UserError(f"{source}: not a ckptbench {self.name} file: its top level is no object with a kind and "
                            "a schema_version")
        found = document.get("kind")
        if found is None:
            version = self.legacy_version(document)
        elif found == self.name:
            version = document.get("schema_version")
        else:
            what = f"{_a(found)} ckptbench {found} file" if isinstance(found, str) else "not a ckptbench file"
            raise UserError(f"{source}: {what}, not {_a(self.name)} {self.name} file; give {_a(self.name)} "
                            f"{self.name} file")
        known = [*self.upgrades, self.version]
        if version not in known:
            raise UserError(f"{source}: {self.name} schema_version {version!r} is not one this tool reads "
                            f"({', '.join(map(str, known))}); a newer ckptbench may read it")
        return version

    def upgrade(self, document: Any, source: str | None = None) -> dict[str, Any]:
        """Bring a document of any version this tool wrote to the current one, then validate it."""
        source = source or self.name
        version = self.version_of(document, source)
        while version != self.version:
            try:
                document = self.upgrades[version](json.loads(json.dumps(document)))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise UserError(f"{source}: a damaged version-{version} {self.name} file ({type(exc).__name__}: "
                                f"{first_line(exc)[:120]}); it cannot be upgraded") from None
            version += 1
            document = {**document, "kind": self.name, "schema_version": version}
        self.validate(document, source)
        return document

    def validate(self, document: Any, source: str | None = None) -> None:
        """Raise one line naming the first field of document that breaks the schema."""
        problem = None if self.schema is None else schema_error(document, _validator(SCHEMAS / self.schema,
                                                                                      self.derived))
        if problem is not None:
            raise UserError(f"{source or self.name}: not a valid ckptbench {self.name} file: {problem}")

    def read(self, path: Path | str) -> dict[str, Any]:
        return self.upgrade(read_json(path, self.name), str(path))

    def write(self, path: Path, document: Mapping[str, Any]) -> Path:
        stamped = self.stamp(document)
        self.validate(stamped, str(path))
        return write_json(path, stamped)
