"""Hub ids resolved through a real-layout Hugging Face cache built in a tmp folder; never the network.

huggingface_hub reads HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT and HF_HUB_ETAG_TIMEOUT once, when it is
imported (conftest made it offline then); the tests set those settings in `huggingface_hub.constants` as the
import would have read them (`hub_settings`), and one test sets the environment of a fresh process. Every test
is offline with its cache in tmp_path, except the ones that need the hub "online": those point the endpoint at
127.0.0.1 (a closed port, or a tiny local server answering with the hub's error headers), so no request can
leave the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import assert_same_bits, reference_state

from ckptbench.core.errors import UserError
from ckptbench.sources import hub, weights

REPO_ID = "org/name"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def hub_settings(monkeypatch: pytest.MonkeyPatch, cache: Path | None = None, offline: bool | None = None,
                 endpoint: str | None = None, etag_timeout: int | None = None) -> None:
    """Set huggingface_hub's settings as its import reads them from HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT and
    HF_HUB_ETAG_TIMEOUT."""
    from huggingface_hub import constants

    if cache is not None:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    if offline is not None:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    if endpoint is not None:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    if etag_timeout is not None:
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", etag_timeout)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in tmp_path, offline, as huggingface_hub's cache folder."""
    folder = tmp_path / "hf-cache"
    folder.mkdir()
    hub_settings(monkeypatch, cache=folder, offline=True)
    return folder


def add_snapshot(cache: Path, files: dict[str, bytes], commit: str = COMMIT, refs: tuple[str, ...] = ("main",),
                 repo_id: str = REPO_ID) -> Path:
    """Write files as huggingface_hub does: blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/<ref>."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / sha).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", sha))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def safetensors_bytes(state: dict, scratch: Path) -> bytes:
    from safetensors.torch import save_file

    scratch.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(scratch), metadata={"format": "pt"})
    return scratch.read_bytes()


@pytest.fixture
def single_files(hf_model, tmp_path: Path) -> dict[str, bytes]:
    """model.safetensors + config.json of the tiny LLaMA."""
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    return {"model.safetensors": safetensors_bytes(state, tmp_path / "scratch" / "model.safetensors"),
            "config.json": hf_model.config.to_json_string().encode()}


@pytest.fixture
def sharded_files(hf_model, tmp_path: Path) -> dict[str, bytes]:
    """Two shards + model.safetensors.index.json + config.json of the tiny LLaMA."""
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    names = sorted(state)
    halves = (names[: len(names) // 2], names[len(names) // 2:])
    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    for shard, keys in zip(SHARDS, halves):
        files[shard] = safetensors_bytes({k: state[k] for k in keys}, tmp_path / "scratch" / shard)
        weight_map.update({k: shard for k in keys})
    total = sum(t.numel() * t.element_size() for t in state.values())
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}).encode()
    files["config.json"] = hf_model.config.to_json_string().encode()
    return files


def one_line_error(spec: str) -> str:
    with pytest.raises(UserError) as caught:
        hub.resolve(spec)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("--weights: ")
    return message


def test_resolve_main_reads_snapshot_and_commit(cache, single_files, hf_model):
    snapshot = add_snapshot(cache, single_files)
    checkpoint = hub.resolve(REPO_ID)
    assert checkpoint == hub.HubCheckpoint(REPO_ID, "main", COMMIT, checkpoint.path)
    assert checkpoint.path.resolve() == snapshot.resolve()
    assert hub.describe(checkpoint) == {"kind": "hub", "repo_id": REPO_ID, "revision": "main", "commit": COMMIT,
                                        "path": str(checkpoint.path)}
    loaded = weights.from_directory(checkpoint.path)
    assert_same_bits(reference_state(hf_model), loaded.tensors)
    with pytest.raises(AttributeError):  # frozen: a resolved checkpoint cannot drift
        checkpoint.commit = OTHER_COMMIT  # type: ignore[misc]


def test_resolve_commit_and_tag(cache, single_files, sharded_files):
    add_snapshot(cache, single_files, COMMIT, refs=("main",))
    tagged = add_snapshot(cache, sharded_files, OTHER_COMMIT, refs=("v1.0",))

    by_commit = hub.resolve(f"{REPO_ID}@{OTHER_COMMIT}")
    assert (by_commit.revision, by_commit.commit) == (OTHER_COMMIT, OTHER_COMMIT)
    assert by_commit.path.resolve() == tagged.resolve()

    by_tag = hub.resolve(f"{REPO_ID}@v1.0")
    assert (by_tag.revision, by_tag.commit) == ("v1.0", OTHER_COMMIT)
    assert by_tag.path.resolve() == tagged.resolve()

    assert hub.resolve(REPO_ID).commit == COMMIT  # main still points at the other snapshot


def test_sharded_snapshot_reads_bit_for_bit(cache, sharded_files, hf_model):
    add_snapshot(cache, sharded_files)
    checkpoint = hub.resolve(REPO_ID)
    loaded = weights.from_directory(checkpoint.path)
    assert loaded.source["files"] == list(SHARDS)
    assert_same_bits(reference_state(hf_model), loaded.tensors)


def test_environment_of_a_fresh_process_decides(tmp_path, single_files):
    """As a user runs it: HF_HOME and HF_HUB_OFFLINE in the environment the process starts with."""
    add_snapshot(tmp_path / "home" / "hub", single_files)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")]))
    script = ("import sys\nfrom ckptbench.core.errors import UserError\nfrom ckptbench.sources import hub\n"
              "try:\n    print(hub.resolve(sys.argv[1]).path)\nexcept UserError as e:\n    print(e)\n")
    run = [subprocess.run([sys.executable, "-c", script, spec], env=env, capture_output=True, text=True, check=True)
           for spec in (REPO_ID, "org/absent")]
    assert Path(run[0].stdout.strip()).resolve() == (tmp_path / "home" / "hub" / "models--org--name" / "snapshots"
                                                     / COMMIT).resolve()
    assert run[1].stdout.startswith("--weights: org/absent is not in the Hugging Face cache (HF_HUB_CACHE="
                                     f"{tmp_path / 'home' / 'hub'})")
    assert "offline: HF_HUB_OFFLINE=1" in run[1].stdout


def test_not_cached_offline_says_how_to_fetch(cache):
    message = one_line_error(REPO_ID)
    assert f"{REPO_ID} is not in the Hugging Face cache (HF_HUB_CACHE={cache})" in message
    assert "offline: HF_HUB_OFFLINE=1" in message
    assert f"hf download {REPO_ID} --revision main --include '*.safetensors'" in message
    assert "--include model.safetensors.index.json" in message
    assert "unset HF_HUB_OFFLINE" in message


def test_revision_not_cached_offline_names_it(cache, single_files):
    add_snapshot(cache, single_files)
    message = one_line_error(f"{REPO_ID}@v2")
    assert f"{REPO_ID}@v2 is not in the Hugging Face cache" in message
    assert "--revision v2" in message


@pytest.mark.parametrize("dangling", [False, True], ids=["never-linked", "blob-missing"])
def test_missing_shard_offline_names_it(cache, sharded_files, dangling):
    files = dict(sharded_files)
    second = files.pop(SHARDS[1])
    snapshot = add_snapshot(cache, files)
    if dangling:  # an interrupted download: the link is there, its blob is not
        (snapshot / SHARDS[1]).symlink_to(Path("..", "..", "blobs", hashlib.sha256(second).hexdigest()))
    message = one_line_error(REPO_ID)
    assert f"lacks {SHARDS[1]}, which its index lists" in message
    assert REPO_ID in message and "hf download" in message


def test_snapshot_without_weights_offline(cache, single_files):
    add_snapshot(cache, {"config.json": single_files["config.json"]})
    message = one_line_error(REPO_ID)
    assert "holds no weight file" in message and REPO_ID in message


@pytest.mark.parametrize("text", [
    "org/name", "org/name@main", "Org-1/name_2.5@v1.0", "a/b", "org/name@refs/pr/3", f"org/name@{COMMIT}",
])
def test_looks_like_hub_id_true(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.looks_like_hub_id(text)


@pytest.mark.parametrize("text", [
    "", "name", "/abs/org/name", "./org/name", "../org/name", "~/org/name", "org/name/sub", "org/", "/name",
    "org//name", "org/-name", "org/name.", "org--x/name", "org/na..me", "org/name@", "org/name@a..b",
    "org/name@v1/", "org\\name", ".hidden/name", "org name/x", "org/name ", "org/name@@v1", "C:/models",
])
def test_looks_like_hub_id_false(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not hub.looks_like_hub_id(text)


def test_existing_local_folder_wins(cache, tmp_path, monkeypatch, single_files):
    add_snapshot(cache, single_files, repo_id="a/b")
    monkeypatch.chdir(tmp_path)
    assert hub.looks_like_hub_id("a/b")
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert not hub.looks_like_hub_id("a/b")
    assert hub.looks_like_hub_id("a/c")
    with pytest.raises(UserError, match="neither an existing folder nor a Hugging Face repo id"):
        hub.resolve("a/b")
    with pytest.raises(UserError, match="neither"):
        hub.resolve("./x/y")


# --- "online": the hub is 127.0.0.1, never the internet ------------------------------------------


@pytest.fixture
def online(cache, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Not offline, short timeouts, no proxy, a fresh HTTP client; the test points the endpoint at 127.0.0.1."""
    import huggingface_hub
    from huggingface_hub import constants

    hub_settings(monkeypatch, offline=False, etag_timeout=2)  # its client refuses every request while offline
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 2)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")  # no saved token is read or sent
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    huggingface_hub.close_session()  # its shared client read the proxy environment when made
    yield
    huggingface_hub.close_session()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_hub_fails_cleanly_and_fast(online, monkeypatch):
    hub_settings(monkeypatch, endpoint=f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    message = one_line_error(REPO_ID)
    assert time.monotonic() - start < 15
    assert f"{REPO_ID} is not in the Hugging Face cache" in message
    assert "the hub cannot be reached (ConnectError" in message
    assert "hf download org/name" in message and "HF_ENDPOINT" in message


def test_cached_snapshot_needs_no_hub(online, monkeypatch, cache, single_files):
    hub_settings(monkeypatch, endpoint=f"http://127.0.0.1:{closed_port()}")
    add_snapshot(cache, single_files)
    assert hub.resolve(REPO_ID).commit == COMMIT


class FakeHub:
    """A local stand-in for the hub's HTTP API: serves one repo at one commit, or answers every request with an error.

    Enough of the protocol for snapshot_download: repo info, the tree listing, HEAD and GET of
    /resolve/<commit>/<file> with X-Repo-Commit and ETag. `requests` records every path asked for.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.error: tuple[int, str] | None = None
        self.requests: list[str] = []

    def answer(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        from urllib.parse import unquote, urlsplit

        path = unquote(urlsplit(path).path)
        self.requests.append(f"{method} {path}")
        if self.error is not None:
            status, code = self.error
            return status, {"X-Error-Code": code}, json.dumps({"error": code}).encode()
        if path.startswith(f"/api/models/{REPO_ID}/revision/"):
            return 200, {}, json.dumps({"id": REPO_ID, "sha": COMMIT, "private": False}).encode()
        if path == f"/api/models/{REPO_ID}/tree/{COMMIT}":
            listing = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                       for name, data in self.files.items()]
            return 200, {}, json.dumps(listing).encode()
        prefix = f"/{REPO_ID}/resolve/{COMMIT}/"
        if path.startswith(prefix) and path[len(prefix):] in self.files:
            data = self.files[path[len(prefix):]]
            return 200, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, data
        return 404, {"X-Error-Code": "EntryNotFound"}, b"{}"


@pytest.fixture
def fake_hub(online, monkeypatch) -> Iterator[FakeHub]:
    """A FakeHub served on 127.0.0.1 as HF_ENDPOINT."""
    fake = FakeHub()

    class Handler(BaseHTTPRequestHandler):
        def reply(self, body_too: bool) -> None:
            status, headers, body = fake.answer(self.command, self.path)
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body_too:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self.reply(body_too=True)

        def do_HEAD(self) -> None:
            self.reply(body_too=False)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    hub_settings(monkeypatch, endpoint=f"http://127.0.0.1:{server.server_address[1]}")
    yield fake
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status, code, expected", [
    (401, "RepoNotFound", "org/name is not on the hub or is private"),
    (403, "GatedRepo", "org/name is gated"),
    (404, "RevisionNotFound", "org/name has no revision 'v9'"),
    (503, "", "the hub cannot be reached (HfHubHTTPError"),
])
def test_hub_answers_become_one_line_errors(fake_hub, status, code, expected):
    fake_hub.error = (status, code)
    message = one_line_error(f"{REPO_ID}@v9")
    assert expected in message


def test_download_fetches_only_weights_then_works_offline(fake_hub, cache, sharded_files, hf_model, monkeypatch):
    fake_hub.files = {**sharded_files, "tokenizer.json": b"{}", "README.md": b"# card", "model.onnx": b"onnx"}
    checkpoint = hub.resolve(REPO_ID)
    assert (checkpoint.revision, checkpoint.commit) == ("main", COMMIT)
    assert sorted(p.name for p in checkpoint.path.iterdir()) == sorted(sharded_files)
    assert all((checkpoint.path / name).is_symlink() for name in sharded_files)  # the library's own cache layout
    assert (cache / "models--org--name" / "refs" / "main").read_text() == COMMIT
    assert_same_bits(reference_state(hf_model), weights.from_directory(checkpoint.path).tensors)

    fake_hub.requests.clear()
    hub_settings(monkeypatch, offline=True)
    assert hub.resolve(REPO_ID) == checkpoint
    hub_settings(monkeypatch, offline=False)
    assert hub.resolve(REPO_ID) == checkpoint  # complete in cache: online, still no request
    assert fake_hub.requests == []


def test_download_completes_a_partial_snapshot(fake_hub, cache, sharded_files, hf_model):
    fake_hub.files = dict(sharded_files)
    add_snapshot(cache, {k: v for k, v in sharded_files.items() if k != SHARDS[1]})
    checkpoint = hub.resolve(REPO_ID)
    assert f"GET /{REPO_ID}/resolve/{COMMIT}/{SHARDS[1]}" in fake_hub.requests
    assert f"GET /{REPO_ID}/resolve/{COMMIT}/{SHARDS[0]}" not in fake_hub.requests
    assert_same_bits(reference_state(hf_model), weights.from_directory(checkpoint.path).tensors)


def test_repo_without_weights_is_a_user_error(fake_hub, single_files):
    fake_hub.files = {"config.json": single_files["config.json"], "model.onnx": b"onnx"}
    message = one_line_error(REPO_ID)
    assert "org/name holds no weight file matching" in message


def test_silent_hub_times_out(online, monkeypatch):
    """A hub that accepts the connection and never answers: the library's client alone would wait forever."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nothing ever reads or replies
        hub_settings(monkeypatch, endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}", etag_timeout=1)
        start = time.monotonic()
        message = one_line_error(REPO_ID)
        assert time.monotonic() - start < 10
    assert "the hub cannot be reached (ReadTimeout" in message
