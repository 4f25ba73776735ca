"""Faults against a real uvicorn on loopback: a worker killed, the model file broken under a
served version, and slow clients."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from benchmarks.loadgen import TRANSPORT_ERROR, Phase, run_load, score_requests
from benchmarks.serving import shipped_model_dir
from tests.conftest import TEST_API_KEY, LiveServer, start_server, stop_server

ADMIN_KEY = "faults-admin-key-0123"


def workers_of(parent: int) -> set[int]:
    """uvicorn's worker processes: the children started through multiprocessing's spawn."""
    workers = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            workers.add(int(entry.name))
    return workers


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


def test_a_killed_worker_is_replaced_and_only_its_requests_fail(tmp_path: Path) -> None:
    """Both original workers are killed in turn, the second once the first one's replacement
    runs, so that by the end the replacements alone are serving."""
    model_dir = shipped_model_dir()
    server = start_server(model_dir, tmp_path / "uvicorn.log", extra_args=("--workers", "2"))
    try:
        wait_for(lambda: len(workers_of(server.process.pid)) == 2, 30, "two workers")
        first = workers_of(server.process.pid)
        port = int(server.base_url.rsplit(":", 1)[1])
        connections = 16
        kills: list[float] = []
        started = time.monotonic()

        def kill_both() -> None:
            for victim in sorted(first):
                time.sleep(2.5)
                os.kill(victim, signal.SIGKILL)
                kills.append(time.monotonic() - started)
                # uvicorn's supervisor looks every 0.5 s and starts a new worker.
                wait_for(
                    lambda v=victim: (
                        v not in workers_of(server.process.pid)
                        and len(workers_of(server.process.pid)) == 2
                    ),
                    30,
                    "a replacement worker",
                )

        killer = threading.Thread(target=kill_both)
        killer.start()
        results = run_load(
            "127.0.0.1",
            port,
            score_requests(model_dir, port, TEST_API_KEY),
            [Phase("load", 800, 12.0)],
            max_connections=connections,
            client_timeout_s=2.0,
        )
        killer.join()
        now = workers_of(server.process.pid)
    finally:
        stop_server(server)
    assert len(kills) == 2 and len(now) == 2 and not now & first
    rows = results.arrays()
    statuses = Counter(rows["status"].tolist())
    # Only requests in flight on a dead worker's connections can fail: one per connection.
    assert set(statuses) <= {200, TRANSPORT_ERROR}, statuses
    assert statuses[TRANSPORT_ERROR] <= 2 * connections
    assert not results.abandoned_at
    # After the second kill, only the replacements serve: everything succeeds.
    late = rows["due"] > kills[1] + 2.0
    assert late.sum() > 1000 and (rows["status"][late] == 200).all()
    print(f"requests {len(rows['status'])}, failed {statuses[TRANSPORT_ERROR]}")


class Scorer(threading.Thread):
    """Scores one transaction after another until stopped, keeping every (status, version)."""

    def __init__(self, server: LiveServer, body: dict[str, object]) -> None:
        super().__init__(daemon=True)
        self.client = server.client(headers={"X-API-Key": TEST_API_KEY})
        self.body = body
        self.answers: Counter[tuple[int, str]] = Counter()
        self.stopped = threading.Event()

    def run(self) -> None:
        with self.client:
            while not self.stopped.is_set():
                answer = self.client.post("/v1/score", json=self.body)
                ok = answer.status_code == 200
                self.answers[
                    (answer.status_code, answer.json()["model_version"] if ok else "")
                ] += 1

    def count(self) -> int:
        return sum(self.answers.values())


def test_a_broken_model_file_under_a_served_version_keeps_serving_from_memory(
    tmp_path: Path,
) -> None:
    shipped = shipped_model_dir()
    version = shipped.name  # the artifact's own version must match its folder
    served = tmp_path / "models" / "creditcard" / version
    shutil.copytree(shipped, served)
    sample = json.loads((shipped / "samples.json").read_text())
    body = {
        "features": dict(zip(sample["feature_names"], sample["rows"][0]["features"], strict=True))
    }
    log = tmp_path / "uvicorn.log"
    server = start_server(
        served, log, {"FRAUD_POLL_INTERVAL_S": "0.2", "FRAUD_ADMIN_KEYS": ADMIN_KEY}
    )
    admin = server.client(headers={"X-API-Key": ADMIN_KEY})
    scorer = Scorer(server, body)
    scorer.start()
    try:
        model = served / "model.onnx"
        steps = {
            "corrupted": lambda: model.write_bytes(os.urandom(model.stat().st_size)),
            "deleted": model.unlink,
            "folder removed": lambda: shutil.rmtree(served),
        }
        for step, breaks in steps.items():
            breaks()
            before = scorer.count()
            time.sleep(1.0)  # five polls
            assert scorer.count() > before + 20, step
            load = admin.post("/v2/repository/models/creditcard/load")
            if step == "folder removed":  # nothing on disk to refuse: nothing loaded
                assert load.status_code == 200 and load.json()["loaded"] == [], load.text
                assert load.json()["versions"] == [version]
            else:
                assert load.status_code == 400, (step, load.status_code, load.text)
                assert f"version {version}" in load.text or f'"{version}"' in load.text, load.text
            assert admin.get("/v2/models/creditcard/ready").status_code == 200, step
        # Put back, the version is served from disk again.
        shutil.copytree(shipped, served)
        assert admin.post("/v2/repository/models/creditcard/load").status_code == 200
    finally:
        scorer.stopped.set()
        scorer.join()
        admin.close()
        stop_server(server)
    assert set(scorer.answers) == {(200, version)}, scorer.answers
    text = log.read_text()
    assert f"refused model creditcard version {version}" in text
    assert "the loaded copy keeps serving" in text
    assert "no servable version of model creditcard" in text
    assert "Traceback" not in text


async def exchange(port: int, request: bytes) -> tuple[float, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(request)
    answer = await reader.read(65536)
    writer.close()
    return time.perf_counter() - started, answer


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


# How each slow client behaves, and what the server must send before closing on it.
SLOW_KINDS = {
    "head": b"408",  # a new connection sends its request head a byte every 0.1 s
    "body": b"408",  # sends all but the last bytes of its body, then nothing
    "silent": b"",  # connects and sends nothing: closed without a word
    "second head": b"408",  # one request answered, then the next head a byte at a time
    "after early answer": b"408",  # a wrong key answered 403 before the body; the rest dribbles
}


async def slow_client(
    port: int, request: bytes, wrong_key: bytes, kind: str, limit_s: float
) -> tuple[str, float, bytes]:
    """Behaves as SLOW_KINDS[kind] says; returns what the server sent at last and how long
    after the connection opened or was last answered (b"" if it only closed, or at limit_s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    dribbled = request
    if kind == "second head":
        writer.write(request)
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 200")
    elif kind == "after early answer":
        writer.write(wrong_key[:-10])
        assert (await read_answer(reader)).startswith(b"HTTP/1.1 403")
        dribbled = wrong_key[-10:]
    elif kind == "body":
        writer.write(request[:-10])
    started = time.perf_counter()

    async def dribble() -> None:
        if kind in ("head", "second head", "after early answer"):
            for byte in dribbled:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.1)

    dribbling = asyncio.ensure_future(dribble())
    try:
        answer = await asyncio.wait_for(reader.read(65536), limit_s)
    except TimeoutError:
        answer = b""
    finally:
        dribbling.cancel()
        writer.close()
    return kind, time.perf_counter() - started, answer


def post(port: int, body: bytes, key: str = TEST_API_KEY) -> bytes:
    return (
        f"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize("timeout_s", [2])
def test_slow_clients_are_timed_out_with_408_and_do_not_stall_others(
    tmp_path: Path, timeout_s: int
) -> None:
    server = start_server(
        shipped_model_dir(),
        tmp_path / "uvicorn.log",
        extra_args=("--timeout-keep-alive", str(timeout_s)),
    )
    port = int(server.base_url.rsplit(":", 1)[1])
    body = score_requests(shipped_model_dir(), port, TEST_API_KEY)[0].split(b"\r\n\r\n", 1)[1]
    request, wrong_key = post(port, body), post(port, body, "not-the-key")

    async def scenario() -> tuple[list[float], list[float], list[tuple[str, float, bytes]]]:
        alone = [(await exchange(port, request))[0] for _ in range(200)]
        slow = [
            asyncio.ensure_future(slow_client(port, request, wrong_key, kind, timeout_s + 3.0))
            for kind in SLOW_KINDS
            for _ in range(30)
        ]
        await asyncio.sleep(0.2)
        beside = []
        # Bounded by the slow clients, which give up at timeout_s + 3 s.
        while not all(task.done() for task in slow) and len(beside) < 50_000:
            elapsed, answer = await exchange(port, request)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
            beside.append(elapsed)
        return alone, beside, list(await asyncio.gather(*slow))

    try:
        alone, beside, slow = asyncio.run(scenario())
    finally:
        stop_server(server)
    assert len(beside) > 100
    p99_alone, p99_beside = np.percentile(alone, 99), np.percentile(beside, 99)
    print(
        f"p99 alone {p99_alone * 1e3:.2f} ms, "
        f"beside {len(slow)} slow clients {p99_beside * 1e3:.2f} ms"
    )
    assert p99_beside <= max(3 * p99_alone, 0.02)
    for kind, waited, answer in slow:
        if SLOW_KINDS[kind]:
            assert answer.startswith(b"HTTP/1.1 408 "), (kind, answer[:100])
            assert b'"request_timeout"' in answer
        else:
            assert answer == b"", (kind, answer[:100])
        assert timeout_s - 0.1 <= waited <= timeout_s + 1.0, (kind, waited)
