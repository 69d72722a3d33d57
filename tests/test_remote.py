"""Checkpoints on object storage: a real S3-compatible server (moto) on loopback.

The fixture starts `moto.server` bound to 127.0.0.1 on a free port and creates a
bucket; the harness then runs against it through TensorStore's s3 kvstore, reading
the endpoint and credentials from the standard AWS variables.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "ckpt-bench"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env():
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto server did not start")
            time.sleep(0.1)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    yield env, client
    server.terminate()
    server.wait(timeout=10)


def _run(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_phase4_streamlined.py"), "--no-progress", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _keys(client, prefix: str = "") -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


@pytest.mark.slow  # a suite on a real S3 server
def test_suite_runs_on_s3_and_removes_exactly_its_runs(s3_env, tmp_path: Path) -> None:
    env, client = s3_env
    client.put_object(Bucket=BUCKET, Key="bench/keep-me.txt", Body=b"not ours")
    config = tmp_path / "suite.json"
    config.write_text(json.dumps({
        "model": "tiny", "testing": {"num_runs": 1},
        "references": {"safetensors": True},
        "test_configurations": [
            {"name": "zarr2", "chunk_bytes": "64KB", "concurrency_limit": 16},
            {"name": "zarr2_gzip", "chunk_bytes": "1MB", "concurrency_limit": 16, "compression": "gzip"},
            {"name": "orbax", "chunk_bytes": "1MB", "concurrency_limit": 16, "format": "zarr3",
             "kvstore": "ocdbt", "compression": "zstd"},
        ]}))
    remote = _run(env, "--config", str(config), "--output-dir", str(tmp_path / "s3"), "--storage", f"s3://{BUCKET}/bench")
    assert remote.returncode == 0, remote.stderr
    local = _run(env, "--config", str(config), "--output-dir", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr

    document = json.loads((tmp_path / "s3" / "results.json").read_text())
    assert document["protocol"]["storage"] == {"kind": "s3", "url": f"s3://{BUCKET}/bench/",
                                               "endpoint": env["AWS_ENDPOINT_URL"]}
    assert document["protocol"]["load_cache"] == "remote"
    runs = [r for t in document["tests"] for r in t["runs"]]
    assert len(runs) == 3 and all(r["verified"] and r["load_cache"] == "remote" and r["eviction"] is None
                                  for r in runs)
    # Reference rows write local files: reported as skipped, not silently dropped.
    assert [s["name"] for s in document["skipped_tests"]] == ["safetensors"]

    # The sizes listed on the server equal the bytes of the same checkpoints on a local disk.
    local_document = json.loads((tmp_path / "local" / "results.json").read_text())
    for remote_test, local_test in zip(document["tests"], local_document["tests"]):
        if local_test["name"] == "orbax":  # OCDBT packs values into log files; its totals may differ by layout
            assert remote_test["runs"][0]["size_bytes"] > 0
            continue
        assert remote_test["runs"][0]["size_bytes"] == local_test["runs"][0]["size_bytes"]
        assert remote_test["runs"][0]["n_files"] == local_test["runs"][0]["n_files"]

    # Cleanup removed every run prefix and nothing else.
    assert _keys(client, "bench/") == ["bench/keep-me.txt"]


def test_missing_bucket_is_a_quick_one_line_error(s3_env, tmp_path: Path) -> None:
    env, _ = s3_env
    started = time.monotonic()
    result = _run(env, "--model", "tiny", "--runs", "1", "--output-dir", str(tmp_path / "out"),
                  "--storage", "s3://no-such-bucket/x", timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "create the bucket" in result.stderr
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - started < 60  # a hang would hit the subprocess timeout instead


def test_unreachable_endpoint_is_a_quick_one_line_error(s3_env, tmp_path: Path) -> None:
    env, _ = s3_env
    dead = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}
    result = _run(dead, "--model", "tiny", "--runs", "1", "--output-dir", str(tmp_path / "out"),
                  "--storage", f"s3://{BUCKET}/x", timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --storage:") and result.stderr.count("\n") == 1
    assert "endpoint" in result.stderr
    assert not (tmp_path / "out").exists()


def test_storage_url_errors(tmp_path: Path) -> None:
    for url, words in (("s3://", "names no bucket"), ("ftp://host/x", "unknown scheme")):
        result = _run(dict(os.environ), "--model", "tiny", "--output-dir", str(tmp_path / "out"), "--storage", url,
                      timeout=120)
        assert result.returncode == 2, url
        assert words in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_memory_storage_runs_every_test_in_memory(tmp_path: Path) -> None:
    result = _run(dict(os.environ), "--model", "tiny", "--runs", "1", "--tests", "baseline,t5x_full",
                  "--output-dir", str(tmp_path / "out"), "--storage", "memory://")
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {t["settings"]["kvstore"] for t in document["tests"]} == {"memory"}
    assert all(r["load_cache"] == "memory" and r["verified"] for t in document["tests"] for r in t["runs"])
    assert not (tmp_path / "out" / "runs").exists()
