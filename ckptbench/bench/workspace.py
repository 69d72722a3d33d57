"""Folders the harness owns, and the rule that it deletes nothing else.

The output folder and every run folder get a marker file when the harness creates (or adopts an empty) folder. Deletion
goes through `remove_owned`, which refuses a folder without the marker, so a wrong path can never cost a user their
files.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ckptbench.core.errors import UserError

OUTPUT_MARKER = ".ckptbench-output"
RUN_MARKER = ".ckptbench-run"
RUNS_DIR = "runs"


def check_output_dir(path: Path) -> Path:
    """Refuse an output folder the harness may not use, writing nothing."""
    path = Path(path).resolve()
    if path == Path(path.anchor) or path == Path.home().resolve():
        raise UserError(f"output_dir: {path} is the root or home folder; choose a dedicated folder")
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir: {path} is a file; choose a folder path")
    if path.is_dir() and any(path.iterdir()) and not (path / OUTPUT_MARKER).exists():
        raise UserError(
            f"output_dir: {path} is not empty and was not made by this harness; choose a new or empty folder"
        )
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output_dir: {existing} is not writable; choose a folder you can write to")
    return path


def prepare_output_dir(path: Path) -> Path:
    """Create (or adopt an empty, or reuse our own) output folder; refuse anything else."""
    path = check_output_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / OUTPUT_MARKER).touch()
    except OSError as exc:
        raise UserError(f"output_dir: cannot write to {path} ({exc.strerror}); choose a writable folder") from None
    return path


def new_run_dir(output_dir: Path, name: str) -> Path:
    """A fresh run folder under output_dir/runs, marked as ours."""
    runs = output_dir / RUNS_DIR
    runs.mkdir(exist_ok=True)
    (runs / RUN_MARKER).touch()
    return new_owned_dir(runs, name)


def new_owned_dir(parent: Path, name: str) -> Path:
    """A fresh folder parent/name, marked as ours (one of ours already there is replaced)."""
    folder = parent / name
    if folder.exists():
        remove_owned(folder)
    folder.mkdir()
    (folder / RUN_MARKER).touch()
    return folder


_SETTLE_S = 0.2
_REMOVE_WITHIN_S = 60.0


def remove_owned(path: Path, settle: bool = False) -> None:
    """Delete a folder the harness made; refuse (loudly) one it did not. After an interrupted save, I/O already handed
    to TensorStore's threads can still create files for a while (a cancelled write goes on with the chunks it has
    begun): with `settle`, removal repeats, a moment apart, until the folder stays gone."""
    if not (path / RUN_MARKER).is_file():
        raise RuntimeError(f"refusing to delete {path}: it carries no {RUN_MARKER} marker")
    deadline = time.monotonic() + _REMOVE_WITHIN_S
    while True:
        _remove_tree(path)
        if not path.exists():
            if settle:
                time.sleep(_SETTLE_S)
            if not path.exists():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not remove {path}: files keep appearing in it")
        time.sleep(_SETTLE_S)


_REMOVE_THREADS = 16


def _remove_tree(path: Path) -> None:
    """rmtree, with the top-level subfolders (one per array) removed by parallel threads first: a checkpoint of 10,000
    small files goes in half a second instead of one to one and a half."""
    try:
        subfolders = [entry.path for entry in os.scandir(path) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        subfolders = []
    if len(subfolders) > 1:
        with ThreadPoolExecutor(min(_REMOVE_THREADS, len(subfolders))) as pool:
            list(pool.map(lambda folder: shutil.rmtree(folder, ignore_errors=True), subfolders))
    shutil.rmtree(path, ignore_errors=True)


def remove_runs_dir_if_empty(output_dir: Path) -> None:
    runs = output_dir / RUNS_DIR
    if runs.is_dir() and {p.name for p in runs.iterdir()} <= {RUN_MARKER}:
        (runs / RUN_MARKER).unlink(missing_ok=True)
        os.rmdir(runs)
