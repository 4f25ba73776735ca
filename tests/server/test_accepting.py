"""Accepting the connections that wait in the kernel's queue, in one go."""

from __future__ import annotations

import asyncio
import socket

from server.accepting import Acceptor, find_listener


def listening() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server


def test_the_listening_socket_is_found_by_its_address_and_left_open() -> None:
    server = listening()
    other = listening()
    try:
        found = find_listener(server.getsockname(), socket.AF_INET)
        assert found is not None
        assert found.getsockname() == server.getsockname() and found.fileno() != server.fileno()
        found.close()
        assert server.fileno() != -1  # the original is untouched
        assert find_listener(("127.0.0.1", 1), socket.AF_INET) is None
    finally:
        server.close()
        other.close()


class Counting(asyncio.Protocol):
    def __init__(self, made: list[asyncio.Transport]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)  # type: ignore[arg-type]


def test_waiting_connections_are_accepted_and_handed_to_the_loop() -> None:
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        server = listening()
        # Five connections complete in the kernel; nothing has accepted them yet.
        clients = [socket.create_connection(server.getsockname()) for _ in range(5)]
        first, _ = server.accept()
        made: list[asyncio.Transport] = []
        transport, _ = await loop.connect_accepted_socket(lambda: Counting(made), first)
        made.clear()
        acceptor = Acceptor(batch=3)
        acceptor.take_waiting(transport, lambda: Counting(made), loop)
        await asyncio.sleep(0.05)
        acceptor.close()
        taken = len(made)
        for one in [transport, *made]:
            one.close()
        for client in clients:
            client.close()
        server.close()
        await asyncio.sleep(0)
        return taken

    # Four wait; at most `batch` are taken per call.
    assert asyncio.run(scenario()) == 3
