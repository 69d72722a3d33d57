"""Checkpoints named by a Hugging Face Hub id (`org/name` or `org/name@revision`).

The benchmark reads weights from a local folder; this module only turns a hub id into
that folder: the snapshot folder of huggingface_hub's own cache
(`models--org--name/snapshots/<commit>/`), so a model fetched once by `hf download`,
transformers or a previous run is reused and never copied. Only the weight files, their
index and config.json are asked for (ALLOW_PATTERNS), never tokenizers or other formats.

Order of resolution, and why:

1. The local cache first (`local_files_only=True`). A benchmark should measure the same
   bytes every run and work on machines without a network, so a complete cached snapshot
   is used as is, with no request at all (a branch is resolved through `refs/<branch>`).
2. Only when the snapshot is missing or incomplete and the hub may be used, download it
   with huggingface_hub's progress bars. Before that, one `repo_info` call with a timeout
   checks the hub answers: `snapshot_download` makes that call with no timeout at all in
   this huggingface_hub (its shared httpx client has `timeout=None`), so an unreachable
   network could otherwise hang the run instead of failing.
3. Every failure a user can fix (offline and not cached, a shard missing from the cache,
   a gated, private or unknown repo, an unknown revision, a snapshot with no weights)
   becomes one `UserError` line that names the id and the fix.

huggingface_hub computes its settings (`HF_HUB_OFFLINE`, `HF_HUB_CACHE`, `HF_HOME`,
`HF_ENDPOINT`, `HF_HUB_ETAG_TIMEOUT`) once, when it is imported. This module reads the
environment when `resolve` is called instead, and passes cache folder, endpoint and
timeout explicitly, so a variable set after import (by a test or a wrapper) is honoured.
Nothing here touches the network at import; huggingface_hub itself is imported lazily.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptbench.core.errors import UserError, first_line
from ckptbench.spec.hub_id import DEFAULT_REVISION, looks_like_hub_id, parse

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
ALLOW_PATTERNS: tuple[str, ...] = ("*.safetensors", SAFETENSORS_INDEX, "pytorch_model*.bin", BIN_INDEX, "config.json")
DEFAULT_TIMEOUT = 10.0  # seconds; huggingface_hub's own default for metadata requests

_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's truthy environment values


@dataclass(frozen=True)
class HubCheckpoint:
    """A hub checkpoint resolved to a folder of the local cache, pinned to its commit."""

    repo_id: str
    revision: str  # as requested: branch, tag or commit
    commit: str  # the 40-hex commit the revision resolved to, so results name exact bytes
    path: Path  # the snapshot folder: weights.from_directory reads it


def resolve(spec: str) -> HubCheckpoint:
    """The cached snapshot of a hub checkpoint, downloaded first only if needed and allowed."""
    parsed = parse(spec) if looks_like_hub_id(spec) else None
    if parsed is None:
        raise UserError(f"--weights: {spec!r} is neither an existing folder nor a Hugging Face repo id"
                        " (org/name or org/name@revision); check the spelling")
    repo_id, revision = parsed
    cache_dir = hub_cache_dir()

    folder = _cached_snapshot(repo_id, revision, cache_dir)
    missing = _missing_files(folder) if folder is not None else None
    if folder is not None and missing == []:
        return _checkpoint(repo_id, revision, folder)

    offline = _offline_setting()
    reason = f"offline: {offline}" if offline else _hub_unreachable(repo_id, revision)
    if reason is not None:
        fix = f"unset {offline.split('=')[0]}" if offline else "check the network, proxy and HF_ENDPOINT"
        if folder is None:
            what = f"{_name(repo_id, revision)} is not in the Hugging Face cache (HF_HUB_CACHE={cache_dir})"
        elif missing:
            what = (f"the cached snapshot of {_name(repo_id, revision)} ({folder}) lacks {missing[0]},"
                    " which its index lists,")
        else:
            what = f"the cached snapshot of {_name(repo_id, revision)} ({folder}) holds no weight file"
        raise UserError(f"--weights: {what} and the hub cannot be reached ({reason}); fetch it on a machine with"
                        f" a network: `{fetch_command(repo_id, revision)}` and copy its cache here, or {fix}")

    folder = _download(repo_id, revision, cache_dir)
    missing = _missing_files(folder)
    if missing is None:
        raise UserError(f"--weights: {_name(repo_id, revision)} holds no weight file matching "
                        "*.safetensors or pytorch_model*.bin; give a repo with safetensors or PyTorch weights")
    if missing:
        raise UserError(f"--weights: the index of {_name(repo_id, revision)} lists {missing[0]}, which the repo"
                        " does not hold; give another revision or repo")
    return _checkpoint(repo_id, revision, folder)


def describe(checkpoint: HubCheckpoint) -> dict[str, Any]:
    """Where the weights came from, for results.json: enough to fetch the same bytes again."""
    return {"kind": "hub", "repo_id": checkpoint.repo_id, "revision": checkpoint.revision,
            "commit": checkpoint.commit, "path": str(checkpoint.path)}


def fetch_command(repo_id: str, revision: str = DEFAULT_REVISION) -> str:
    """The `hf download` line that fills the cache with what `resolve` needs."""
    includes = " ".join(f"--include {shlex.quote(p)}" for p in ALLOW_PATTERNS)
    return f"hf download {repo_id} --revision {shlex.quote(revision)} {includes}"


def hub_cache_dir() -> str:
    """huggingface_hub's cache folder, from the environment as it is now (the library reads it at import)."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                              "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return os.path.expandvars(os.path.expanduser(cache))


def is_offline() -> bool:
    """Whether the hub must not be contacted, judged now (huggingface_hub judges once, at import)."""
    return _offline_setting() is not None


def _offline_setting() -> str | None:
    """The setting that makes us offline, e.g. "HF_HUB_OFFLINE=1", or None when the hub may be used.

    The variables as set now decide; when neither is set, huggingface_hub's import-time
    value does, since its HTTP client refuses every request when that is true.
    """
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # the two huggingface_hub honours, in its order
        value = os.environ.get(name)
        if value:
            return f"{name}={value}" if value.upper() in _TRUE else None
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE=1 (when huggingface_hub was imported)" if constants.HF_HUB_OFFLINE else None


def _name(repo_id: str, revision: str) -> str:
    return repo_id if revision == DEFAULT_REVISION else f"{repo_id}@{revision}"


def _checkpoint(repo_id: str, revision: str, folder: Path) -> HubCheckpoint:
    commit = folder.name  # snapshots/<commit>: the cache names each snapshot by its commit
    if not _COMMIT.fullmatch(commit):
        raise UserError(f"--weights: {folder} is not a snapshot of the Hugging Face cache (no commit in its name);"
                        " clear that cache entry and fetch it again")
    return HubCheckpoint(repo_id, revision, commit, folder)


def _cached_snapshot(repo_id: str, revision: str, cache_dir: str) -> Path | None:
    """The snapshot folder the cache holds for this revision, complete or not; None if there is none."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                      allow_patterns=list(ALLOW_PATTERNS)))
    except IncompleteSnapshotError as exc:
        # The cached file listing says a requested file is absent; maybe only config.json,
        # which the benchmark does not need, so _missing_files decides.
        return Path(exc.snapshot_path)
    except LocalEntryNotFoundError:
        return None


def _missing_files(folder: Path) -> list[str] | None:
    """Weight files the folder's index lists but the folder lacks ([] if complete); None if it holds no weights.

    A symlink into a blob an interrupted download never finished counts as missing.
    """
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                return []  # a broken index: weights.from_directory names it precisely
            return [s for s in shards if not (folder / s).is_file()]
    weights = [f for pattern in ("*.safetensors", "pytorch_model*.bin") for f in folder.glob(pattern) if f.is_file()]
    return [] if weights else None


def _hub_unreachable(repo_id: str, revision: str) -> str | None:
    """Ask the hub about the repo with a timeout: why it cannot be reached, or None if it answered.

    Answers that a retry cannot fix (unknown, gated or private repo, unknown revision)
    raise a UserError here, before any download starts.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        HfApi(endpoint=_endpoint()).repo_info(repo_id, revision=revision, timeout=_timeout())
    except GatedRepoError:
        raise _gated(repo_id) from None
    except RepositoryNotFoundError:
        raise UserError(f"--weights: {repo_id} is not on the hub or is private (no access with this machine's"
                        " token); check the id, or `hf auth login` / set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise UserError(f"--weights: {repo_id} has no revision {revision!r}; give an existing branch, tag or"
                        " 40-hex commit after '@'") from None
    except HfHubHTTPError as exc:
        if exc.response is not None and exc.response.status_code == 401:
            raise UserError(f"--weights: the hub refused the token for {repo_id} (401); `hf auth login` again"
                            " or fix HF_TOKEN") from None
        return f"{type(exc).__name__}: {first_line(exc)}"
    except _unreachable_errors() as exc:
        return f"{type(exc).__name__}: {first_line(exc)}"
    return None


def _download(repo_id: str, revision: str, cache_dir: str) -> Path:
    """Fetch the weight files into the cache, with huggingface_hub's progress bars."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, endpoint=_endpoint(),
                                      etag_timeout=_timeout(), allow_patterns=list(ALLOW_PATTERNS)))
    except GatedRepoError:
        raise _gated(repo_id) from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, *_unreachable_errors()) as exc:
        raise UserError(f"--weights: downloading {_name(repo_id, revision)} into {cache_dir} failed"
                        f" ({type(exc).__name__}: {first_line(exc)}); run again to resume, or fetch it with"
                        f" {fetch_command(repo_id, revision)}") from None


def _gated(repo_id: str) -> UserError:
    from huggingface_hub import constants

    page = f"{_endpoint() or constants.ENDPOINT}/{repo_id}"
    return UserError(f"--weights: {repo_id} is gated and this machine's token has no access; accept its terms at"
                     f" {page}, then `hf auth login` or set HF_TOKEN")


def _endpoint() -> str | None:
    """HF_ENDPOINT as set now (huggingface_hub reads it at import); None keeps the library's."""
    return (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None


def _timeout() -> float:
    """Seconds to wait for hub metadata: HF_HUB_ETAG_TIMEOUT as set now, else huggingface_hub's default."""
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        raise UserError("HF_HUB_ETAG_TIMEOUT: not a number of seconds; set it to e.g. 10 or unset it") from None


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning "no answer from the hub": offline mode, refused, timed out, DNS, proxy."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    types: list[type[BaseException]] = [OfflineModeIsEnabled]
    for module in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2, 1.x httpx
        try:
            types.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(types)
