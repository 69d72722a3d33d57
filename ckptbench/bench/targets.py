"""Where checkpoints are written: a local folder, S3 (or an S3-compatible server), GCS, or memory.

A target hands out one `RunLocation` per run: a TensorStore kvstore spec for the run's root (a folder, or an object
prefix) plus, for local targets, the folder itself. It measures a saved checkpoint's footprint and deletes exactly what
one run wrote: a local run folder carries a marker file, a remote run prefix a marker object, and nothing without its
marker is ever deleted.

Remote stores change the protocol, and results.json says so (PHASE4_GUIDE.md, section 4.8): there is no page cache to
drop, and sizes come from listing objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import urlparse

import tensorstore as ts

from ckptbench.bench import workspace
from ckptbench.core.errors import UserError

MARKER_KEY = workspace.RUN_MARKER  # the same name marks a local run folder and a remote run prefix
# TensorStore's HTTP transport reads these once; without them a silent server hangs a load forever.
CURL_TIMEOUTS = {"TENSORSTORE_CURL_CONNECT_TIMEOUT_SECONDS": "10", "TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS": "60"}
PREFLIGHT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RunLocation:
    """One run's root: a kvstore spec whose path ends in '/', and the local folder if there is one."""

    label: str
    base: dict[str, Any]
    local_dir: Path | None = None

    def child(self, suffix: str) -> dict[str, Any]:
        """The kvstore spec of a sub-path of the run root."""
        return {**self.base, "path": self.base["path"] + suffix}

    @classmethod
    def local(cls, directory: Path) -> RunLocation:
        directory = Path(directory)
        return cls(directory.name, {"driver": "file", "path": f"{directory}/"}, directory)


def as_location(where: RunLocation | Path | str) -> RunLocation:
    return where if isinstance(where, RunLocation) else RunLocation.local(Path(where))


@dataclass
class LocalTarget:
    """Run folders under OUTPUT_DIR/runs, each marked as the harness's own."""

    output_dir: Path
    kind: Literal["local", "memory"] = "local"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.output_dir / workspace.RUNS_DIR)}

    def check(self) -> None:
        workspace.check_output_dir(self.output_dir)

    def context_spec(self) -> dict[str, Any]:
        return {}

    def new_run(self, label: str) -> RunLocation:
        workspace.prepare_output_dir(self.output_dir)  # a no-op once the folder is ours
        return RunLocation.local(workspace.new_run_dir(self.output_dir, label))

    def remove(self, location: RunLocation, settle: bool = False) -> None:
        if location.local_dir is not None and location.local_dir.exists():
            workspace.remove_owned(location.local_dir, settle=settle)

    def discard(self, label: str) -> None:
        """Remove a run folder whose making was interrupted: ours if marked, or still empty."""
        folder = self.output_dir / workspace.RUNS_DIR / label
        if (folder / workspace.RUN_MARKER).is_file():
            workspace.remove_owned(folder)
        elif folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    def finish(self) -> None:
        workspace.remove_runs_dir_if_empty(self.output_dir)


@dataclass
class ObjectStoreTarget:
    """Run prefixes under s3://bucket/prefix or gs://bucket/prefix."""

    kind: Literal["s3", "gcs"]
    bucket: str
    prefix: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{'s3' if self.kind == 's3' else 'gs'}://{self.bucket}/{self.prefix}"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url,
                **({"endpoint": self._endpoint()} if self.kind == "s3" and self._endpoint() else {})}

    def _endpoint(self) -> str | None:
        return (self.options.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL"))

    def kvstore(self, path: str) -> dict[str, Any]:
        if self.kind == "gcs":
            return {"driver": "gcs", "bucket": self.bucket, "path": path}
        region = (self.options.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                  or "us-east-1")
        spec: dict[str, Any] = {"driver": "s3", "bucket": self.bucket, "path": path, "aws_region": region}
        if self._endpoint():
            spec["endpoint"] = self._endpoint()
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            spec["aws_credentials"] = {"type": "environment"}
        return spec

    def context_spec(self, max_retries: int | None = None) -> dict[str, Any]:
        # TensorStore retries 32 times with exponential back-off by default: ~15 minutes
        # before a wrong endpoint is reported. A benchmark should fail within seconds.
        retries = {"max_retries": max_retries if max_retries is not None else self.options.get("max_retries", 4),
                   "initial_delay": "100ms", "max_delay": "2s"}
        return {f"{self.kind}_request_retries": retries}

    def check(self) -> None:
        """Fail fast on a wrong endpoint, missing credentials or a missing bucket. Creating an array in a bucket that
        does not exist makes TensorStore retry forever, so the bucket is listed first, where that error comes at
        once."""
        store = ts.KvStore.open(self.kvstore(self.prefix), context=ts.Context(self.context_spec(max_retries=1)))
        try:
            store.result(timeout=PREFLIGHT_TIMEOUT_S).list().result(timeout=PREFLIGHT_TIMEOUT_S)
        except TimeoutError:
            raise UserError(f"--storage: {self.url} did not answer within {PREFLIGHT_TIMEOUT_S:.0f} s; "
                            "check the endpoint (AWS_ENDPOINT_URL) and the network") from None
        except Exception as exc:  # TensorStore reports every remote failure as ValueError or similar
            reason = str(exc).splitlines()[0].split(" [http_response_body")[0]
            hint = ("create the bucket or fix the URL" if "NoSuchBucket" in reason or "NOT_FOUND" in reason
                    else "check the endpoint, region and credentials (AWS_* variables or storage_options)")
            raise UserError(f"--storage: cannot list {self.url} ({reason[:200]}); {hint}") from None

    def new_run(self, label: str) -> RunLocation:
        location = RunLocation(label, self.kvstore(f"{self.prefix}{label}/"))
        store = ts.KvStore.open(location.base, context=ts.Context(self.context_spec())).result()
        store.write(MARKER_KEY, b"written by ckptbench; this prefix holds one benchmark run\n").result()
        return location

    def remove(self, location: RunLocation, settle: bool = False) -> None:
        """Delete exactly the run's prefix, and only if it carries the marker."""
        store = ts.KvStore.open(location.base, context=ts.Context(self.context_spec())).result()
        if store.read(MARKER_KEY).result().state != "value":
            raise RuntimeError(f"refusing to delete {location.base['path']}: it carries no {MARKER_KEY} marker")
        store.delete_range(ts.KvStore.KeyRange()).result()

    def discard(self, label: str) -> None:
        """Remove a run prefix whose making was interrupted, if its marker made it to the store."""
        location = RunLocation(label, self.kvstore(f"{self.prefix}{label}/"))
        try:
            self.remove(location)
        except RuntimeError:  # no marker: nothing of the run was written
            pass

    def finish(self) -> None:
        pass


Target = LocalTarget | ObjectStoreTarget  # where a suite writes its runs


def footprint_of_store(location_spec: Mapping[str, Any], context: ts.Context) -> tuple[int, int, int]:
    """(bytes, bytes, objects) under a kvstore prefix, from a listing and each object's length. TensorStore's listing
    carries no sizes, so each object's length is read; this is outside every timed region."""
    store = ts.KvStore.open(dict(location_spec), context=context).result()
    keys = [k for k in store.list().result() if k != MARKER_KEY.encode()]
    sizes = [len(read.result().value) for read in [store.read(k) for k in keys]]
    return sum(sizes), sum(sizes), len(sizes)


def parse(url: str | None, output_dir: Path,
          options: Mapping[str, Any] | None = None) -> Target:
    """The target a --storage URL names (None or a plain path: local)."""
    if not url:
        return LocalTarget(output_dir)
    parsed = urlparse(url)
    if parsed.scheme in ("s3", "gs"):
        if not parsed.netloc:
            raise UserError(f"--storage: {url!r} names no bucket; use {parsed.scheme}://BUCKET/PREFIX")
        prefix = parsed.path.lstrip("/")
        prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        return ObjectStoreTarget("s3" if parsed.scheme == "s3" else "gcs", parsed.netloc, prefix, dict(options or {}))
    if parsed.scheme == "memory":  # every TensorStore test then uses the memory kvstore (see config)
        return LocalTarget(output_dir, kind="memory")
    if parsed.scheme in ("", "file"):
        return LocalTarget(Path(parsed.path if parsed.scheme == "file" else url).resolve())
    raise UserError(f"--storage: unknown scheme in {url!r}; use a folder, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX "
                    "or memory://")


def set_http_timeouts() -> None:
    """Default timeouts for TensorStore's HTTP transport, unless the user set their own."""
    for name, value in CURL_TIMEOUTS.items():
        os.environ.setdefault(name, value)
