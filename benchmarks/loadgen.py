"""An open-loop HTTP/1.1 load generator for the overload and soak runs.

Closed-loop tools (wrk, Locust) send the next request only when the last one is answered, so
a slow server lowers the load it is offered and hides its own stall. Here requests are due at
a fixed rate whatever the server does, as payment traffic is. Like a real caller, the
generator keeps a bounded pool of keep-alive connections (one request in flight on each) and
gives up on a request that has waited `client_timeout_s` for a free connection; those are
counted apart ("abandoned"), they never reached the server.

Each request records when it was due, sent and answered, and the status; latency is measured
from when it was due (what the caller waited, the pool's queue included) and from when it was
sent (what the server took). Runs on asyncio with uvloop, on raw sockets, so that one Python
process can offer a few times what one server process can answer.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
CONNECTION_CLOSE = re.compile(rb"\r\nconnection: *close", re.IGNORECASE)
# A status no HTTP answer has: the request failed on the client side (reset, timeout).
TRANSPORT_ERROR = 0


@dataclass(frozen=True)
class Phase:
    name: str
    rate: float  # requests due per second
    duration_s: float


@dataclass
class Results:
    """One row per request that reached a connection; times in seconds from the start."""

    phases: list[Phase]
    due: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    payload: list[int] = field(default_factory=list)  # index into the requests sent
    abandoned_at: list[float] = field(default_factory=list)  # due times, never sent
    tick_lateness: list[float] = field(default_factory=list)
    connections_opened: int = 0

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "due": np.array(self.due),
            "sent": np.array(self.sent),
            "done": np.array(self.done),
            "status": np.array(self.status, dtype=np.int32),
            "payload": np.array(self.payload, dtype=np.int32),
        }

    def phase_bounds(self) -> dict[str, tuple[float, float]]:
        bounds, start = {}, 0.0
        for phase in self.phases:
            bounds[phase.name] = (start, start + phase.duration_s)
            start += phase.duration_s
        return bounds


class _Connection(asyncio.Protocol):
    def __init__(self, generator: LoadGenerator) -> None:
        self.generator = generator
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.request: tuple[float, float, int] | None = None  # (due, sent, payload)
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, payload: int, due: float, now: float) -> None:
        assert self.transport is not None
        self.request = (due, now, payload)
        self.transport.write(self.generator.requests[payload])

    def data_received(self, data: bytes) -> None:
        if self.request is None:  # nothing asked: the server is closing this connection
            self.close()
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[: end + 4])
        length = CONTENT_LENGTH.search(head)
        body = int(length.group(1)) if length else 0
        if len(self.buffer) < end + 4 + body:
            return
        del self.buffer[: end + 4 + body]
        status = int(head[9:12])
        keep = CONNECTION_CLOSE.search(head) is None
        self.generator.answered(self, status, keep)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.generator.lost(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class LoadGenerator:
    def __init__(
        self,
        host: str,
        port: int,
        requests: Sequence[bytes],
        *,
        max_connections: int,
        client_timeout_s: float = 1.0,
        answer_timeout_s: float = 10.0,
        max_idle_s: float = 2.0,
    ) -> None:
        self.host, self.port = host, port
        self.requests = list(requests)
        self.max_connections = max_connections
        self.client_timeout_s = client_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self.max_idle_s = max_idle_s
        self.idle: collections.deque[_Connection] = collections.deque()
        self.busy: set[_Connection] = set()
        self.opening = 0
        self._openers: set[asyncio.Task[None]] = set()
        self.waiting: collections.deque[float] = collections.deque()  # due times
        self.next_request = 0
        self.results: Results | None = None
        self.start = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.start

    def _payload(self) -> int:
        payload = self.next_request
        self.next_request = (self.next_request + 1) % len(self.requests)
        return payload

    def _record(self, request: tuple[float, float, int], status: int) -> None:
        assert self.results is not None
        self.results.due.append(request[0])
        self.results.sent.append(request[1])
        self.results.done.append(self.now())
        self.results.status.append(status)
        self.results.payload.append(request[2])

    def answered(self, conn: _Connection, status: int, keep: bool) -> None:
        assert conn.request is not None
        self._record(conn.request, status)
        conn.request = None
        self.busy.discard(conn)
        if keep and not conn.closed:
            conn.idle_since = self.now()
            self.idle.append(conn)
        else:
            conn.close()
        self._dispatch()

    def lost(self, conn: _Connection) -> None:
        if conn.request is not None:
            self._record(conn.request, TRANSPORT_ERROR)
            conn.request = None
        self.busy.discard(conn)  # if idle, _dispatch skips it as closed

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self.opening += 1
        try:
            _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError:
            assert self.results is not None
            if self.waiting:  # the request that asked for this connection fails
                due = self.waiting.popleft()
                self._record((due, self.now(), self._payload()), TRANSPORT_ERROR)
            return
        finally:
            self.opening -= 1
        assert self.results is not None
        self.results.connections_opened += 1
        conn.idle_since = self.now()
        self.idle.append(conn)
        self._dispatch()

    def _dispatch(self) -> None:
        now = self.now()
        while self.waiting and self.waiting[0] < now - self.client_timeout_s:
            assert self.results is not None
            self.results.abandoned_at.append(self.waiting.popleft())
        while self.waiting and self.idle:
            conn = self.idle.popleft()
            if conn.closed:
                continue
            self.busy.add(conn)
            conn.send(self._payload(), self.waiting.popleft(), now)
        missing = len(self.waiting) - self.opening
        room = self.max_connections - len(self.busy) - len(self.idle) - self.opening
        for _ in range(max(0, min(missing, room))):
            task = asyncio.ensure_future(self._open())
            self._openers.add(task)
            task.add_done_callback(self._openers.discard)

    def _expire(self) -> None:
        """A request unanswered for answer_timeout_s is a failure; its connection is dropped.
        A connection idle for max_idle_s is closed before the server's keep-alive timeout
        could close it under a request being sent."""
        now = self.now()
        for conn in list(self.busy):
            if conn.request is not None and conn.request[1] < now - self.answer_timeout_s:
                self._record(conn.request, TRANSPORT_ERROR)
                conn.request = None
                self.busy.discard(conn)
                conn.close()
        while self.idle and (
            self.idle[0].closed or self.idle[0].idle_since < now - self.max_idle_s
        ):
            self.idle.popleft().close()

    async def run(self, phases: Sequence[Phase]) -> Results:
        results = self.results = Results(list(phases))
        self.start = time.perf_counter()
        phase_start, expired = 0.0, 0.0
        for phase in phases:
            interval = 1.0 / phase.rate
            phase_end = phase_start + phase.duration_s
            due = phase_start
            while (now := self.now()) < phase_end:
                # How long the oldest request not yet queued has been due: the
                # generator's own delay (about a millisecond from its tick when idle).
                results.tick_lateness.append(max(0.0, now - due))
                while due <= now and due < phase_end:
                    self.waiting.append(due)
                    due += interval
                self._dispatch()
                if now - expired >= 0.1:
                    self._expire()
                    expired = now
                # uvloop's timers count whole milliseconds: a shorter sleep would spin.
                await asyncio.sleep(0.001)
            phase_start = phase_end
        # Let what is in flight finish, then close everything.
        deadline = self.now() + self.answer_timeout_s
        while (self.busy or self.waiting) and self.now() < deadline:
            self._dispatch()
            self._expire()
            await asyncio.sleep(0.005)
        for task in self._openers:
            task.cancel()
        for conn in list(self.busy):  # unanswered by the deadline: failed
            if conn.request is not None:
                self._record(conn.request, TRANSPORT_ERROR)
                conn.request = None
        for conn in [*self.idle, *self.busy]:
            conn.close()
        return results


def post_request(host: str, port: int, path: str, body: bytes, api_key: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {api_key}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def transaction_bodies(model_dir: Path, count: int = 64) -> list[bytes]:
    """Real test-period rows from the model card's samples, as /v1/score bodies."""
    samples = json.loads((model_dir / "samples.json").read_text())
    names = samples["feature_names"]
    bodies = []
    for i in range(count):
        row = samples["rows"][i % len(samples["rows"])]
        features = dict(zip(names, row["features"], strict=True))
        bodies.append(json.dumps({"transaction_id": f"t{i}", "features": features}).encode())
    return bodies


def score_requests(model_dir: Path, port: int, api_key: str) -> list[bytes]:
    return [
        post_request("127.0.0.1", port, "/v1/score", body, api_key)
        for body in transaction_bodies(model_dir)
    ]


def run_load(
    host: str,
    port: int,
    requests: Sequence[bytes],
    phases: Sequence[Phase],
    *,
    max_connections: int,
    client_timeout_s: float = 1.0,
) -> Results:
    import uvloop

    generator = LoadGenerator(
        host, port, requests, max_connections=max_connections, client_timeout_s=client_timeout_s
    )
    return uvloop.run(generator.run(phases))


async def _closed_loop(
    host: str, port: int, requests: Sequence[bytes], connections: int, duration_s: float
) -> int:
    """Answers per connection with no pause: the most this server answers per second."""
    count = 0
    stop = time.perf_counter() + duration_s

    async def worker(offset: int) -> None:
        nonlocal count
        i = offset
        while time.perf_counter() < stop:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                while time.perf_counter() < stop:
                    writer.write(requests[i % len(requests)])
                    i += 1
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = CONTENT_LENGTH.search(head)
                    await reader.readexactly(int(length.group(1)) if length else 0)
                    if head[9:12] == b"200":
                        count += 1
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # closed by the server: open another
            finally:
                writer.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return count


def capacity(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int = 32,
    duration_s: float = 5.0,
) -> float:
    """200s per second with `connections` busy connections (closed loop)."""
    import uvloop

    answered = uvloop.run(_closed_loop(host, port, requests, connections, duration_s))
    return answered / duration_s


def report(summary: dict[str, Any], out: Path | None) -> int:
    """Print a run's figures (and write them to `out`); 1 if any check failed."""
    print(json.dumps(summary, indent=2))
    if out:
        out.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    for failure in summary["failures"]:
        print("FAIL:", failure)
    return 1 if summary["failures"] else 0
