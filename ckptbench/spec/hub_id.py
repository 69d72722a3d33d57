"""Hugging Face Hub ids as a user writes them: `org/name` or `org/name@revision`.

Only the grammar: whether text names a hub checkpoint or a local folder, decided without any I/O but a look at whether
the path exists. Resolving an id to files is sources.hub.
"""

from __future__ import annotations

import re
from pathlib import Path

DEFAULT_REVISION = "main"
# Hub repo-id rules: two names of letters, digits, '-', '_', '.', neither starting nor
# ending with '-' or '.', no '--' or '..', at most 96 characters in all. A revision is a
# branch, tag, commit or ref such as refs/pr/3 (so it alone may hold '/').
_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_SPEC = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[A-Za-z0-9_][A-Za-z0-9_./-]*))?")


def looks_like_hub_id(text: str) -> bool:
    """True when text reads as `org/name[@revision]` and is not a local path. A path that exists always wins, so a
    folder `org/name` under the working directory is read as that folder; text shaped like a path (absolute, `./`,
    `../`, `~`, a backslash, more than one '/' before '@') is never a hub id."""
    if not text or text.startswith((".", "/", "~")) or "\\" in text:
        return False
    if parse(text) is None:
        return False
    try:
        return not Path(text).expanduser().exists()
    except OSError:  # a name the file system refuses (too long, ...) is no local path
        return True


def parse(text: str) -> tuple[str, str] | None:
    match = _SPEC.fullmatch(text)
    if match is None:
        return None
    repo_id, revision = match["repo"], match["revision"] or DEFAULT_REVISION
    if len(repo_id) > 96 or "--" in repo_id or ".." in repo_id or ".." in revision or revision.endswith("/"):
        return None
    return repo_id, revision
