"""Checkpoints named by a Hugging Face Hub id (`org/name` or `org/name@revision`), through huggingface_hub.

A hub id becomes the snapshot folder of huggingface_hub's own cache (`models--org--name/snapshots/<commit>/`), so a
model fetched once by `hf download`, transformers or an earlier run is reused, never copied; only the weight files,
their index and config.json are asked for (ALLOW_PATTERNS). A complete cached snapshot is used with no request (a
benchmark measures the same bytes every run, and works without a network); else, unless HF_HUB_OFFLINE, the library
downloads it, after one `repo_info` with a timeout (the library's own takes none, so a silent hub would hang the run).
Every failure a user can fix is one `UserError` line naming the id and the fix. huggingface_hub reads its own settings
(HF_HUB_CACHE, HF_ENDPOINT, ...) when imported: lazily, here.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ckptbench.core.errors import UserError, first_line
from ckptbench.spec.hub_id import DEFAULT_REVISION, looks_like_hub_id, parse

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
ALLOW_PATTERNS: tuple[str, ...] = (WEIGHT_PATTERNS[0], SAFETENSORS_INDEX, WEIGHT_PATTERNS[1], BIN_INDEX, "config.json")


@dataclass(frozen=True)
class HubCheckpoint:
    """A hub checkpoint resolved to a folder of the local cache, pinned to its commit."""

    repo_id: str
    revision: str  # as requested: branch, tag or commit
    commit: str  # the 40-hex commit the revision resolved to, so results name exact bytes
    path: Path  # the snapshot folder (snapshots/<commit>): weights.from_directory reads it


def resolve(spec: str) -> HubCheckpoint:
    """The cached snapshot of a hub checkpoint, downloaded first only if needed and allowed."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    parsed = parse(spec) if looks_like_hub_id(spec) else None
    if parsed is None:
        raise UserError(f"--weights: {spec!r} is neither an existing folder nor a Hugging Face repo id"
                        " (org/name or org/name@revision); check the spelling")
    repo_id, revision = parsed
    try:
        folder: Path | None = Path(snapshot_download(repo_id, revision=revision, local_files_only=True,
                                                     allow_patterns=list(ALLOW_PATTERNS)))
    except IncompleteSnapshotError as exc:  # the library's listing misses a file: maybe only config.json
        folder = Path(exc.snapshot_path)
    except LocalEntryNotFoundError:
        folder = None
    if folder is not None and _lacking(folder) is None:
        return HubCheckpoint(repo_id, revision, folder.name, folder)
    if constants.HF_HUB_OFFLINE:
        raise _unreachable(repo_id, revision, folder, "offline: HF_HUB_OFFLINE=1", "unset HF_HUB_OFFLINE")
    folder = _download(repo_id, revision, folder)
    lacking = _lacking(folder)
    if lacking is not None:
        raise UserError(f"--weights: {_name(repo_id, revision)} {lacking}; give a repo or revision with safetensors "
                        f"or PyTorch weights, or fetch them with `{fetch_command(repo_id, revision)}`")
    return HubCheckpoint(repo_id, revision, folder.name, folder)


def describe(checkpoint: HubCheckpoint) -> dict[str, Any]:
    """Where the weights came from, for results.json: enough to fetch the same bytes again."""
    return {"kind": "hub", **asdict(checkpoint), "path": str(checkpoint.path)}


def fetch_command(repo_id: str, revision: str = DEFAULT_REVISION) -> str:
    """The `hf download` line that fills the cache with what `resolve` needs."""
    includes = " ".join(f"--include {shlex.quote(p)}" for p in ALLOW_PATTERNS)
    return f"hf download {repo_id} --revision {shlex.quote(revision)} {includes}"


def _name(repo_id: str, revision: str) -> str:
    return repo_id if revision == DEFAULT_REVISION else f"{repo_id}@{revision}"


def _lacking(folder: Path) -> str | None:
    """What the snapshot folder lacks of its weights, in words; None when complete (a symlink into a blob an
    interrupted download never finished counts as missing)."""
    for index in (folder / SAFETENSORS_INDEX, folder / BIN_INDEX):
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                return None  # a broken index: weights.from_directory names it precisely
            missing = [s for s in shards if not (folder / s).is_file()]
            return f"lacks {missing[0]}, which its index lists" if missing else None
    if any(f.is_file() for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern)):
        return None
    return "holds no weight file matching " + " or ".join(WEIGHT_PATTERNS)


def _unreachable(repo_id: str, revision: str, folder: Path | None, reason: str, fix: str) -> UserError:
    from huggingface_hub import constants

    name = _name(repo_id, revision)
    what = (f"{name} is not in the Hugging Face cache (HF_HUB_CACHE={constants.HF_HUB_CACHE})" if folder is None
            else f"the cached snapshot of {name} ({folder}) {_lacking(folder)},")
    return UserError(f"--weights: {what} and the hub cannot be reached ({reason}); fetch it on a machine with a"
                     f" network: `{fetch_command(repo_id, revision)}` and copy its cache here, or {fix}")


def _download(repo_id: str, revision: str, cached: Path | None) -> Path:
    """Fetch the weight files into the cache with huggingface_hub's progress bars; each failure as one line."""
    import httpx2
    from huggingface_hub import HfApi, constants, errors, snapshot_download

    try:
        # snapshot_download asks for the repo's info with no timeout (its client has none): a hub that accepts the
        # connection and never answers would hang the run. This one waits HF_HUB_ETAG_TIMEOUT.
        HfApi().repo_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(ALLOW_PATTERNS)))
    except errors.GatedRepoError:
        raise UserError(f"--weights: {repo_id} is gated and this machine's token has no access; accept its terms at"
                        f" {constants.ENDPOINT}/{repo_id}, then `hf auth login` or set HF_TOKEN") from None
    except errors.RepositoryNotFoundError:
        raise UserError(f"--weights: {repo_id} is not on the hub or is private (no access with this machine's"
                        " token); check the id, or `hf auth login` / set HF_TOKEN") from None
    except errors.RevisionNotFoundError:
        raise UserError(f"--weights: {repo_id} has no revision {revision!r}; give an existing branch, tag or"
                        " 40-hex commit after '@'") from None
    except (errors.HfHubHTTPError, httpx2.TransportError, errors.LocalEntryNotFoundError) as exc:  # no good answer
        cause = exc.__cause__ if isinstance(exc, errors.LocalEntryNotFoundError) and exc.__cause__ else exc
        raise _unreachable(repo_id, revision, cached, f"{type(cause).__name__}: {first_line(cause)}",
                           "check the network, proxy and HF_ENDPOINT, and run again to resume") from None
    except OSError as exc:
        raise UserError(f"--weights: downloading {_name(repo_id, revision)} into {constants.HF_HUB_CACHE} failed"
                        f" ({type(exc).__name__}: {first_line(exc)}); run again to resume, or fetch it with"
                        f" `{fetch_command(repo_id, revision)}`") from None
