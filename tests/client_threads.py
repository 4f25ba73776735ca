"""Client threads for the tests that hold a server under load while they change it: started
on entering, told to stop and joined on leaving."""

from __future__ import annotations

import threading
from typing import Self


class ClientThreads:
    """Subclasses give `send(client)`, which runs until `self.stop` is set."""

    def __init__(self, clients: int, join_s: float = 30.0) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.join_s = join_s
        self.threads = [
            threading.Thread(target=self.send, args=(n,), daemon=True) for n in range(clients)
        ]

    def send(self, client: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(self.join_s)
