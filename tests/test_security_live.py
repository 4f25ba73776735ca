"""Keys and client addresses on a real uvicorn: hashed and named keys from the hash command,
their names in the logs and rate limits, key files rotated under load, and the allowlist."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import pytest

from tests.client_threads import ClientThreads
from tests.conftest import (
    ROOT,
    SERVE_PYTHON,
    TEST_API_KEY,
    LiveServer,
    free_port,
    start_server,
    stop_server,
)
from tests.model_edits import meta

POLL_S = 0.2
# A poll interval, plus room for a loaded two-core machine to get round to it.
ROTATION_WITHIN_S = POLL_S + 2.0
NO_PROXY_HEADERS = ("--no-proxy-headers",)  # uvicorn's own X-Forwarded-For rewriting off


def hash_key(name: str) -> tuple[str, str]:
    """(key file line, secret) from `python -m server.keys hash --name NAME`, as an operator
    would run it, in the serving environment."""
    result = subprocess.run(
        [str(SERVE_PYTHON), "-m", "server.keys", "hash", "--name", name],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Key file line") and lines[2].startswith("Secret key")
    return lines[1], lines[3]


def log_lines(server: LiveServer) -> list[dict[str, Any]]:
    lines = []
    for text in server.log.read_text().splitlines():
        if text.startswith("{"):
            lines.append(json.loads(text))
    return lines


def body_for(model_dir: Path) -> dict[str, Any]:
    return {"features": [0.0] * len(meta(model_dir, "feature_names"))}


@pytest.fixture
def named_keys_server(
    tiny_model_dir: Path, tmp_path: Path
) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    secrets: dict[str, str] = {}
    scoring, admin = [], []
    for name in ("alpha", "beta"):
        line, secrets[name] = hash_key(name)
        scoring.append(line)
    line, secrets["ops"] = hash_key("ops")
    admin.append(line)
    (tmp_path / "api-keys").write_text("# clients\n" + "\n".join(scoring) + "\n")
    (tmp_path / "admin-keys").write_text(admin[0] + "  # on call\n")
    env = {
        "FRAUD_API_KEYS": "",
        "FRAUD_API_KEY_FILE": str(tmp_path / "api-keys"),
        "FRAUD_ADMIN_KEY_FILE": str(tmp_path / "admin-keys"),
        "FRAUD_ACCESS_LOG": "true",
        "FRAUD_RATE_LIMIT_RPS": "0.001",
        "FRAUD_RATE_LIMIT_BURST": "2",
    }
    server = start_server(tiny_model_dir, tmp_path / "uvicorn.log", env)
    yield server, secrets
    stop_server(server)


def test_named_hashed_keys_serve_and_the_logs_and_buckets_go_by_name(
    named_keys_server: tuple[LiveServer, dict[str, str]], tiny_model_dir: Path
) -> None:
    server, secrets = named_keys_server
    body = body_for(tiny_model_dir)
    model = tiny_model_dir.parent.name
    with server.client() as client:

        def score(key: str | None) -> int:
            headers = {"X-API-Key": key} if key is not None else {}
            return client.post("/v1/score", json=body, headers=headers).status_code

        alpha = [score(secrets["alpha"]) for _ in range(3)]
        beta = [score(secrets["beta"]) for _ in range(3)]
        refused = [score(None), score(secrets["alpha"] + "x"), score(secrets["ops"])]
        load = f"/v2/repository/models/{model}/load"
        admin = {"X-API-Key": secrets["ops"]}
        loaded = client.post(load, headers=admin)
        unknown = client.post("/v2/repository/models/nothing-here/load", headers=admin)
        not_admin = client.post(load, headers={"X-API-Key": secrets["beta"]})
    # Separate buckets by name: each key's burst of 2, then 429.
    assert (alpha, beta, refused) == ([200, 200, 429], [200, 200, 429], [401, 403, 403])
    assert (loaded.status_code, unknown.status_code, not_admin.status_code) == (200, 404, 403)
    stop_server(server)
    lines = log_lines(server)
    access = [line for line in lines if line["logger"] == "uvicorn.error.fraud.access"]
    scored = [
        (line.get("key_name"), line["status"]) for line in access if line["route"] == "/v1/score"
    ]
    assert scored == [("alpha", 200)] * 2 + [("alpha", 429)] + [("beta", 200)] * 2 + [
        ("beta", 429),
        (None, 401),
        (None, 403),
        (None, 403),
    ]
    admin_lines = [line for line in lines if line["logger"] == "uvicorn.error.fraud.admin"]
    assert [(a["key_name"], a["action"], a["model"], a["status"]) for a in admin_lines] == [
        ("ops", "load", model, 200),
        ("ops", "load", "'nothing-here'", 404),
    ]
    assert admin_lines[0]["message"].startswith(f"admin key ops: load of model {model}: 200")
    text = server.log.read_text()
    for secret in secrets.values():
        assert secret not in text


# Rotation under load


class SteadyScoring(ClientThreads):
    """Clients scoring without pause with one key until stopped, every answer counted."""

    def __init__(self, server: LiveServer, key: str, body: dict[str, Any], threads: int = 3):
        super().__init__(threads, join_s=60.0)
        self.server, self.key, self.body = server, key, body
        self.answers: Counter[str] = Counter()

    def send(self, client_number: int) -> None:
        deadline = time.monotonic() + 60.0
        with self.server.client(headers={"X-API-Key": self.key}) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    outcome = str(client.post("/v1/score", json=self.body).status_code)
                except httpx.HTTPError as exc:
                    outcome = repr(exc)
                with self.lock:
                    self.answers[outcome] += 1


def replace_by_rename(folder: Path, text: str) -> Path:
    path = folder / "api-keys"
    temporary = folder / ".api-keys.new"
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def replace_like_kubernetes(folder: Path, text: str) -> Path:
    """What the kubelet does to a mounted Secret: a new timestamped folder, then the `..data`
    symlink swapped to it by a rename; `api-keys` is a symlink through `..data`."""
    stamp = folder / f"..{time.monotonic_ns()}"
    stamp.mkdir()
    (stamp / "api-keys").write_text(text)
    (folder / "..data_tmp").symlink_to(stamp.name)
    os.replace(folder / "..data_tmp", folder / "..data")
    if not (folder / "api-keys").is_symlink():
        (folder / "api-keys").symlink_to("..data/api-keys")
    return folder / "api-keys"


def status_of(server: LiveServer, key: str, body: dict[str, Any]) -> int:
    with server.client(headers={"X-API-Key": key}) as client:
        return client.post("/v1/score", json=body).status_code


def wait_until(check: Callable[[], bool], within_s: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within_s, f"not within {within_s} s"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize("replace", [replace_by_rename, replace_like_kubernetes])
def test_a_key_file_rotated_under_load_fails_no_request_of_a_key_that_stays(
    replace: Callable[[Path, str], Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "secret"
    folder.mkdir()
    stays, leaves, joins = "stays-key-0123456789", "leaves-key-0123456789", "joins-key-0123456789"
    path = replace(folder, f"stays:sha256:{digest(stays)}\nleaves:sha256:{digest(leaves)}\n")
    env = {"FRAUD_API_KEYS": "", "FRAUD_API_KEY_FILE": str(path), "FRAUD_KEY_POLL_S": str(POLL_S)}
    server = start_server(tiny_model_dir, tmp_path / "uvicorn.log", env)
    body = body_for(tiny_model_dir)
    try:
        assert status_of(server, joins, body) == 403
        with SteadyScoring(server, stays, body) as load:
            time.sleep(0.5)
            replace(folder, f"stays:sha256:{digest(stays)}\njoins:sha256:{digest(joins)}\n")
            wait_until(lambda: status_of(server, joins, body) == 200, ROTATION_WITHIN_S)
            wait_until(lambda: status_of(server, leaves, body) == 403, ROTATION_WITHIN_S)
            # A botched edit keeps the keys in use.
            replace(folder, "stays:sha256:not-a-digest\n")
            time.sleep(3 * POLL_S)
            assert status_of(server, joins, body) == 200
            time.sleep(0.3)
    finally:
        stop_server(server)
    assert set(load.answers) == {"200"} and load.answers["200"] > 50, load.answers
    reloads = [line for line in log_lines(server) if line["logger"] == "uvicorn.error.fraud.keys"]
    assert [line["level"] for line in reloads] == ["INFO", "ERROR"]
    assert reloads[0]["names_added"] == ["joins"] and reloads[0]["names_removed"] == ["leaves"]
    assert f"{path} line 1" in reloads[1]["message"]


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# The client allowlist


def port_of(server: LiveServer) -> int:
    port = urlsplit(server.base_url).port
    assert port is not None
    return port


def exchange(
    server: LiveServer, source: str, head: str, body: bytes = b"", timeout_s: float = 5.0
) -> tuple[int, bytes] | None:
    """One request from `source` (a loopback address) over a raw socket: (status, body) of
    the answer, or None if none came within the timeout."""
    with socket.create_connection(
        ("127.0.0.1", port_of(server)), timeout=timeout_s, source_address=(source, 0)
    ) as sock:
        sock.sendall(head.encode("latin-1") + body)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> tuple[int, bytes] | None:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            rest += sock.recv(65536)
    except TimeoutError:
        return None
    return int(head.split(b" ", 2)[1]), rest


def post(body: bytes, *headers: str, length: int | None = None) -> str:
    lines = [
        "POST /v1/score HTTP/1.1",
        "Host: fraud",
        "Content-Type: application/json",
        f"Content-Length: {len(body) if length is None else length}",
        *headers,
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def start_allowing_only_127_0_0_2(model_dir: Path, log: Path) -> LiveServer:
    """start_server's uvicorn, allowing 127.0.0.2 alone (and 127.0.0.3 as a trusted proxy),
    so its readiness is asked from 127.0.0.2."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FRAUD_")}
    env |= {
        "FRAUD_MODEL_REPOSITORY": str(model_dir.parent.parent),
        "FRAUD_MODEL_NAME": model_dir.parent.name,
        "FRAUD_API_KEYS": TEST_API_KEY,
        "FRAUD_ALLOWED_CLIENTS": "127.0.0.2/32",
        "FRAUD_TRUSTED_PROXIES": "127.0.0.3/32",
        # A body sent half a second after its head is still scored.
        "FRAUD_REQUEST_DEADLINE_MS": "0",
        "PYTHONPATH": str(ROOT),
    }
    command = [str(SERVE_PYTHON), "-m", "uvicorn", "--factory", "server.app:create_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", *NO_PROXY_HEADERS]
    command += ["--http", "server.protocol:DeadlineHttpToolsProtocol", "--no-access-log"]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        connection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=1.0, source_address=("127.0.0.2", 0)
        )
        try:
            connection.request("GET", "/v1/health/ready")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    stop_server(server)
    raise AssertionError(f"server not ready in 30 s: {log.read_text()}")


@pytest.fixture(scope="module")
def allowlist_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("allowlist") / "uvicorn.log"
    server = start_allowing_only_127_0_0_2(tiny_model_dir, log)
    yield server
    stop_server(server)


def test_a_client_outside_the_allowlist_gets_403_before_its_body_is_read(
    allowlist_server: LiveServer, tiny_model_dir: Path
) -> None:
    body = json.dumps(body_for(tiny_model_dir)).encode()
    key = f"X-API-Key: {TEST_API_KEY}"
    # Headers promising a body that never comes, and no key: the allowlist answers at once.
    started = time.monotonic()
    refused = exchange(allowlist_server, "127.0.0.1", post(body, length=len(body)))
    assert refused is not None and time.monotonic() - started < 2.0
    assert refused[0] == 403
    assert json.loads(refused[1])["error"]["code"] == "client_not_allowed"
    # The allowed client with the same headers (and a key) is waited for: its body is read.
    with socket.create_connection(
        ("127.0.0.1", port_of(allowlist_server)), timeout=0.5, source_address=("127.0.0.2", 0)
    ) as sock:
        sock.sendall(post(body, key).encode())
        assert read_answer(sock) is None  # nothing yet: the server waits for the body
        sock.settimeout(5.0)
        sock.sendall(body)
        answer = read_answer(sock)
    assert answer is not None and answer[0] == 200


@pytest.mark.parametrize(
    ("source", "forwarded", "status"),
    [
        ("127.0.0.2", None, 200),
        ("127.0.0.1", None, 403),
        # From the trusted proxy: the address it appended is the client.
        ("127.0.0.3", "127.0.0.2", 200),
        ("127.0.0.3", "127.0.0.1", 403),
        ("127.0.0.3", "127.0.0.2, 127.0.0.3", 200),
        ("127.0.0.3", "127.0.0.2, 127.0.0.1", 403),  # a client's own header is no proof
        ("127.0.0.3", None, 403),  # the proxy itself is not an allowed client
        # From anyone else the header is not believed.
        ("127.0.0.1", "127.0.0.2", 403),
        ("127.0.0.4", "127.0.0.2", 403),
    ],
)
def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(
    allowlist_server: LiveServer,
    tiny_model_dir: Path,
    source: str,
    forwarded: str | None,
    status: int,
) -> None:
    body = json.dumps(body_for(tiny_model_dir)).encode()
    headers = [f"X-API-Key: {TEST_API_KEY}"]
    if forwarded is not None:
        headers.append(f"X-Forwarded-For: {forwarded}")
    answer = exchange(allowlist_server, source, post(body, *headers), body)
    assert answer is not None and answer[0] == status


def test_a_whole_network_allowed_lets_the_client_in(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {"FRAUD_ALLOWED_CLIENTS": "127.0.0.0/8,::1/128"}
    server = start_server(
        tiny_model_dir, tmp_path / "uvicorn.log", env, extra_args=NO_PROXY_HEADERS
    )
    try:
        with server.client() as client:
            assert client.get("/v1/health/ready").status_code == 200
    finally:
        stop_server(server)
