"""The JSON documents the harness writes and reads back (results, tuning, explanation, state).

One way to do each: written atomically and durably (a reader, or a resume after a crash,
never sees half a file), read with one-line errors, checked against a JSON Schema that
ships beside the code, with the first broken field named.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ckptbench.core.errors import UserError


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
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
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


@lru_cache(maxsize=None)
def _validator(schema_file: Path) -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(schema_file.read_text(encoding="utf-8")))


def schema_error(document: Any, schema: Path | Any) -> str | None:
    """'field/path: what is wrong' for the first error against a schema (a file, or a validator), else None."""
    from jsonschema.exceptions import best_match

    validator = _validator(Path(schema)) if isinstance(schema, (str, Path)) else schema
    error = best_match(validator.iter_errors(document))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "top level"
    return f"{where}: {first_line(error.message)[:200]}"


def validate(document: Any, schema: Path | Any, source: str, what: str) -> None:
    """Raise one line naming the first field of document that breaks the schema."""
    problem = schema_error(document, schema)
    if problem is not None:
        raise UserError(f"{source}: not a valid ckptbench {what} file: {problem}")


def first_line(exc: Any) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
