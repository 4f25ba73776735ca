"""Take the connections waiting to be accepted in one go, not one per turn of the loop.

uvloop's libuv accepts one connection each time the listening socket is reported ready,
that is one per turn of the event loop. Under load a turn lasts tens of milliseconds, so
a storm of new connections waits in the kernel's accept queue for seconds, and each of
them has already sent its request: the caller's clock is running. Here, whenever the
protocol class sees a new connection, it accepts up to `batch` more from the same listening
socket itself and hands them to the loop as already-accepted sockets, so that a new
connection waits about one turn, whatever the storm.

The listening socket is found once, among the process's descriptors, by its address: the
app is not given uvicorn's server sockets. Where it cannot be found (no /proc), nothing
changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable

logger = logging.getLogger("uvicorn.error").getChild("fraud")


def find_listener(address: object, family: int) -> socket.socket | None:
    """A non-blocking duplicate of this process's listening socket bound to `address`."""
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for name in descriptors:
        fd = int(name)
        try:
            probe = socket.socket(fileno=fd)
        except OSError:  # not a socket
            continue
        try:
            if (
                probe.family == family
                and probe.type == socket.SOCK_STREAM
                and probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                and probe.getsockname() == address
            ):
                listener = socket.socket(fileno=os.dup(fd))
                listener.setblocking(False)
                return listener
        except OSError:
            continue
        finally:
            probe.detach()  # the descriptor is uvicorn's: never close it
    return None


class Acceptor:
    """Accepts waiting connections for the protocol class (see the module's docstring)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self._listeners: dict[object, socket.socket | None] = {}  # by local address

    def take_waiting(
        self,
        transport: asyncio.Transport,
        factory: Callable[[], asyncio.Protocol],
        loop: asyncio.AbstractEventLoop,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Accept up to `batch` connections waiting on the socket `transport` came through;
        `tls`: the server's TLS context, which they must be served with too."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        address = transport.get_extra_info("sockname")
        if address not in self._listeners:
            self._listeners[address] = find_listener(address, sock.family)
            if self._listeners[address] is None:
                logger.info("the listening socket for %s was not found: one accept a turn", address)
        listener = self._listeners[address]
        if listener is None:
            return
        for _ in range(self.batch):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of descriptors: leave the rest to uvloop
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(loop.connect_accepted_socket(factory, conn, ssl=tls))
            task.add_done_callback(_log_failure)

    def close(self) -> None:
        """Close the duplicates of the listening sockets (uvicorn closes its own)."""
        listeners, self._listeners = self._listeners, {}
        for listener in listeners.values():
            if listener is not None:
                listener.close()


def _log_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("an accepted connection could not be set up: %s", task.exception())
