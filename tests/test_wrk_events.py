"""benchmarks/wrk_events.lua under a real wrk, two threads, against a loopback server that
keeps every body: each is benchmarks.eventload.event_body of its number, a valid event, with
an id of its own, and each account's clock goes forward."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import orjson
import pytest

from benchmarks.eventload import LUA, EventStream, event_body
from server.events import parse_event

ACCOUNTS = 7
THREADS = 2


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    disable_nagle_algorithm = True  # headers and body go out in two writes
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[int, list[bytes]]]:
    bodies: ClassVar[list[bytes]] = []
    handler = type("Handler", (Recorder,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], bodies
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="make bench installs wrk")
def test_wrk_sends_the_reference_events_each_id_once(recorder: tuple[int, list[bytes]]) -> None:
    port, bodies = recorder
    stream = EventStream(accounts=ACCOUNTS, start_s=1_767_225_600.5)
    args = stream.wrk_args("a-key", THREADS)
    command = ["wrk", f"-t{THREADS}", "-c2", "-d1s", "-s", str(LUA), f"http://127.0.0.1:{port}/"]
    done = subprocess.run([*command, "--", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert len(bodies) > 100, done.stdout

    prefix, start, step = args[1], float(args[2]), float(args[3])
    events = [orjson.loads(body) for body in bodies]
    numbers = [int(re.fullmatch(rf"{prefix}-(\d+)", e["event_id"])[1]) for e in events]  # type: ignore[index]
    assert len(set(numbers)) == len(numbers)
    # Both threads sent: the even numbers and the odd.
    assert {n % THREADS for n in numbers} == set(range(THREADS))
    for n, body in zip(numbers, bodies, strict=True):
        assert body.decode() == event_body(n, prefix, start, step, ACCOUNTS)
    parsed = [parse_event(events[i]) for i in sorted(range(len(events)), key=numbers.__getitem__)]
    assert {e.account_id for e in parsed} == {f"acct-{a}" for a in range(ACCOUNTS)}
    for account in range(ACCOUNTS):
        times = [e.timestamp for e in parsed if e.account_id == f"acct-{account}"]
        assert times == sorted(times) and len(set(times)) == len(times)
    assert {e.type for e in parsed} == {"transfer", "cash_out"}
    assert len({e.amount for e in parsed}) > 50


def test_each_run_starts_after_everything_the_last_one_sent() -> None:
    stream = EventStream(accounts=ACCOUNTS)
    first = stream.wrk_args("k", 1)
    stream.sent(40)
    primed = [orjson.loads(b) for b in stream.bodies(10)]
    second = stream.wrk_args("k", 1)
    prefixes = {first[1], second[1], primed[0]["event_id"].split("-")[0]}
    assert len(prefixes) == 3
    assert float(first[2]) + 39 * stream.step_s < primed[0]["timestamp"]
    assert primed[-1]["timestamp"] < float(second[2])
