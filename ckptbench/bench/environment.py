"""What the numbers were measured on: software versions, machine and filesystem, and the harness itself."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from ckptbench.bench.references.ceiling import fio_version
from ckptbench.core.system import free_bytes, meminfo_bytes

PACKAGES = ("tensorstore", "numpy", "torch", "transformers", "safetensors", "scipy", "matplotlib",
            "runai-model-streamer", "fastsafetensors")  # the last two: the peer reference rows


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def filesystem_of(path: Path) -> dict[str, Any]:
    """Mount point, filesystem type and device holding path (from /proc/mounts)."""
    path = Path(path).resolve()
    best: dict[str, Any] = {}
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            if (path == Path(mount) or Path(mount) in path.parents) and len(mount) >= len(best.get("mount", "")):
                best = {"mount": mount, "type": fstype, "device": device}
    except OSError:
        pass
    best["free_bytes"] = free_bytes(path)
    return best


def capture(output_dir: Path) -> dict[str, Any]:
    return {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": meminfo_bytes("MemTotal"),
        "root": hasattr(os, "geteuid") and os.geteuid() == 0,
        "filesystem": filesystem_of(output_dir),
        "fio": fio_version(),  # None: not on PATH, so the device ceiling ran its own patterns only
    }


CHECKOUT = Path(__file__).resolve().parents[2]


def tool_version() -> str | None:
    """The harness's version: from pyproject.toml in a checkout, else the installed package's metadata."""
    pyproject = CHECKOUT / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, ValueError, KeyError):
            pass
    return _version("ckptbench")


def git_commit() -> str | None:
    """The commit of the checkout the harness runs from, with '+dirty' for uncommitted changes; None elsewhere."""
    if not (CHECKOUT / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(CHECKOUT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def tool_info() -> dict[str, Any]:
    return {"name": "ckptbench", "version": tool_version(), "commit": git_commit()}
