"""A closed-loop HTTP/1.1 client over many connections that keeps a record per connection.

wrk reports the latency of every answer but not which connection waited: it cannot show a
connection that starves while the others are served, nor whether the slow answers are the
first ones on new connections. Here each of `connections` connections sends a request,
waits for its answer, and sends the next, as wrk does; a connection the server closes is
opened again at once (wrk does that too). Every answer is recorded with its connection,
when it was sent and answered, its status, and whether it was the connection's first.

Connect time is not counted in a request's latency (as in wrk): the clock starts when the
request is written. A request with no answer after `timeout_s` is a timeout, and its
connection is closed and opened again.

Raw asyncio protocols on uvloop, so that one process keeps thousands of connections busy
on a fraction of a core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from benchmarks.loadgen import CONNECTION_CLOSE, CONTENT_LENGTH


@dataclass
class Record:
    """One row per request answered or failed; times in seconds from the run's start."""

    connection: list[int] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)  # 0: no answer (timeout, reset)
    first: list[bool] = field(default_factory=list)  # the first request on its connection
    connects: int = 0
    connect_errors: int = 0

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "connection": np.array(self.connection, dtype=np.int32),
            "sent": np.array(self.sent),
            "done": np.array(self.done),
            "status": np.array(self.status, dtype=np.int32),
            "first": np.array(self.first, dtype=bool),
        }


class _Conn(asyncio.Protocol):
    def __init__(self, client: ClosedLoop, index: int) -> None:
        self.client, self.index = client, index
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at: float | None = None
        self.first = True
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        if self.client.stopping:
            self.transport.close()
            return
        self.sent_at = self.client.now()
        self.transport.write(self.client.next_request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.sent_at is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[: end + 4])
            length = CONTENT_LENGTH.search(head)
            size = end + 4 + (int(length.group(1)) if length else 0)
            if len(self.buffer) < size:
                return
            del self.buffer[:size]
            self.client.record(self, int(head[9:12]))
            if CONNECTION_CLOSE.search(head) is not None:
                assert self.transport is not None
                self.transport.close()
                return
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sent_at is not None:  # closed with a request unanswered
            self.client.record(self, 0)
        if not self.lost.done():
            self.lost.set_result(None)


class ClosedLoop:
    def __init__(
        self,
        host: str,
        port: int,
        requests: Sequence[bytes],
        connections: int,
        timeout_s: float = 5.0,
    ) -> None:
        self.host, self.port = host, port
        self.requests = list(requests)
        self.connections = connections
        self.timeout_s = timeout_s
        self.result = Record()
        self.stopping = False
        self.start = 0.0
        self._next = 0
        self._open: set[_Conn] = set()

    def now(self) -> float:
        return time.perf_counter() - self.start

    def next_request(self) -> bytes:
        request = self.requests[self._next]
        self._next = (self._next + 1) % len(self.requests)
        return request

    def record(self, conn: _Conn, status: int) -> None:
        assert conn.sent_at is not None
        result = self.result
        result.connection.append(conn.index)
        result.sent.append(conn.sent_at)
        result.done.append(self.now())
        result.status.append(status)
        result.first.append(conn.first)
        conn.first = False
        conn.sent_at = None

    async def _keep(self, index: int, stop_at: float) -> None:
        """Connection `index`: open, run, and open again when closed, until `stop_at`."""
        loop = asyncio.get_running_loop()
        while self.now() < stop_at:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, index), self.host, self.port
                )
            except OSError:
                self.result.connect_errors += 1
                await asyncio.sleep(0.01)
                continue
            self.result.connects += 1
            self._open.add(conn)
            await conn.lost
            self._open.discard(conn)

    def _expire(self) -> None:
        now = self.now()
        for conn in list(self._open):
            if conn.sent_at is not None and conn.sent_at < now - self.timeout_s:
                self.record(conn, 0)
                if conn.transport is not None:
                    conn.transport.close()

    async def run(self, duration_s: float) -> Record:
        self.start = time.perf_counter()
        stop_at = duration_s
        keepers = [asyncio.ensure_future(self._keep(i, stop_at)) for i in range(self.connections)]
        while self.now() < stop_at:
            await asyncio.sleep(0.05)
            self._expire()
        # The run is over: let what is in flight be answered (or time out), then close.
        self.stopping = True
        grace = self.now() + self.timeout_s
        while any(c.sent_at is not None for c in self._open) and self.now() < grace:
            await asyncio.sleep(0.02)
            self._expire()
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.gather(*keepers, return_exceptions=True)
        return self.result


def run_closed_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    connections: int,
    duration_s: float,
    timeout_s: float = 5.0,
) -> Record:
    import uvloop

    client = ClosedLoop(host, port, requests, connections, timeout_s)
    return uvloop.run(client.run(duration_s))
