"""uvicorn's httptools protocol with a deadline on every request, against slow clients.

uvicorn times out a keep-alive connection only while it sends nothing at all: a client that
opens a connection and never writes, or writes a request a byte at a time (slowloris), or
stops halfway through a body, holds a connection, a descriptor and, for a body, a request in
hand for as long as it likes. Here each connection has `--timeout-keep-alive` seconds, from
when it opens or from its previous answer, to deliver a whole request, head and body. If it
has sent part of one, it gets 408 and is closed; if it has sent nothing, it is closed without
a word (uvicorn's own keep-alive timer, of the same length, usually gets there first), since
a client may be sending a request at that very moment and would take a 408 for its answer.

It also stamps each request with the time its head arrived, from which the request's
deadline runs (server/deadlines.py), and applies the per-worker caps on requests in hand
and on connections (server/admission.py): a request beyond them is answered 503 and its
connection closed before the app sees it.

Chosen on the command line, in place of `--http httptools`:

    uvicorn --factory server.app:create_app --http server.protocol:DeadlineHttpToolsProtocol
"""

from __future__ import annotations

import asyncio
from time import perf_counter

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server import admission, deadlines
from server.errors import RequestTimeout


def timeout_answer() -> bytes:
    """The whole 408 answer, written straight to the socket: there is no request to route."""
    body = orjson.dumps(RequestTimeout("the request did not arrive in time").to_body())
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


REQUEST_TIMEOUT = timeout_answer()


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    # One timer per connection, moved lazily: a request re-arms by setting `_due`, and the
    # timer, when it fires early, sleeps again until then. A new timer and a cancel for
    # every request cost more than the rest of this class together.
    _timer: asyncio.TimerHandle | None = None
    _due: float | None = None  # loop time by which a whole request must have arrived
    _heard = False  # bytes arrived since the connection opened or was last answered
    _admission: admission.Admission | None = None
    _excess = False  # opened beyond the connection cap: its first request is refused
    _refused = False  # answered 503 and closing: whatever else it sends is ignored

    def _arm(self) -> None:
        self._heard = False
        self._due = self.loop.time() + self.timeout_keep_alive
        if self._timer is None:
            self._timer = self.loop.call_at(self._due, self._check)

    def _disarm(self) -> None:
        self._due = None

    def _check(self) -> None:
        self._timer = None
        if self._due is None:
            return  # disarmed; the next _arm starts a timer again
        # uvloop keeps timers in whole milliseconds, so a timer may fire up to one early; a
        # re-arm for less than that would run at once, again and again, until the time came.
        if self._due - self.loop.time() >= 0.001:
            self._timer = self.loop.call_at(self._due, self._check)
            return
        self._due = None
        self._expired()

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _expired(self) -> None:
        # Armed only while a request is awaited, so a request in hand here is one whose
        # body has not all arrived; its app is waiting for the rest.
        if self.transport.is_closing():
            return
        started = self._answering() and self.cycle.response_started
        if self._heard and not started:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.app_state.get(admission.KEY)
        if isinstance(limits, admission.Admission):
            self._admission = limits
            self._excess = limits.over_connections(len(self.connections))
            # Only while there is room: under overload, uvloop's one accept a turn and the
            # kernel's short queue are what hold new connections back.
            if limits.acceptor is not None and not limits.over_in_hand(2 * len(self.tasks)):
                limits.acceptor.take_waiting(transport, self._sibling, self.loop, self.config.ssl)
        self._arm()

    def _sibling(self) -> DeadlineHttpToolsProtocol:
        """A protocol object like this one, for a connection accepted here."""
        return type(self)(
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._heard = True
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[deadlines.ARRIVED] = perf_counter()  # type: ignore[literal-required]

    def on_headers_complete(self) -> None:
        if self._refused:
            return  # a request pipelined behind a refused one: it goes unanswered with it
        limits = self._admission
        if limits is not None:
            if self._excess:
                limits.refused_connections += 1
                self._refuse()
                return
            if limits.over_in_hand(len(self.tasks)):
                limits.refused_in_hand += 1
                self._refuse()
                return
        super().on_headers_complete()

    def _refuse(self) -> None:
        """503 and close, with no task, no app and no body read: the cheapest answer there
        is. The parser may still call back for the rest of what arrived with the head;
        those callbacks see `_refused` and do nothing."""
        self._refused = True
        self._disarm()
        self.transport.write(admission.REFUSAL)
        self.transport.close()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        # A body that ends after its request was answered (say a 403 sent before the body
        # came) starts nothing: the clock set at that answer keeps running.
        if self._answering():
            self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        waiting = len(self.pipeline)
        super().on_response_complete()
        # A pipelined request that arrived whole is now being answered: the clock starts
        # after its answer, not during it.
        if not self.transport.is_closing() and len(self.pipeline) == waiting:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)
