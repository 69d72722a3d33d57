"""What the numbers were measured on: software versions, machine and filesystem."""

from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from .capacity import free_bytes

PACKAGES = ("tensorstore", "numpy", "torch", "transformers", "safetensors", "scipy", "matplotlib")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _meminfo_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
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
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": _meminfo_bytes("MemTotal"),
        "root": hasattr(os, "geteuid") and os.geteuid() == 0,
        "filesystem": filesystem_of(output_dir),
    }
