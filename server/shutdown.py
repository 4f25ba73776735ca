"""Graceful shutdown on SIGTERM: not ready at once, drain, then uvicorn's own stop.

uvicorn stops on SIGTERM by closing its listening socket, letting requests in
flight finish, and running the lifespan's shutdown. Before handing the signal on,
this answers readiness with 503 for `drain_s` seconds while still serving, so a
load balancer stops sending new work before the socket closes; responses then
carry `Connection: close` so clients do not hold idle connections to a server
that is about to go. A watchdog ends the process `timeout_s` after the signal if
the rest has not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

logger = logging.getLogger("uvicorn.error").getChild("fraud")

Handler = Callable[[int, FrameType | None], object]


class GracefulShutdown:
    def __init__(self, drain_s: float, timeout_s: float) -> None:
        self.drain_s = drain_s
        self.timeout_s = timeout_s
        self.draining = False
        self.on_drain: Callable[[], None] = lambda: None
        self._passed_on: Handler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: threading.Timer | None = None

    def install(self) -> bool:
        """Take SIGTERM over from uvicorn (whose handler is kept and called after the
        drain). Only the main thread can; elsewhere (a test client) nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return False  # not run by uvicorn: leave the default behaviour alone
        self._passed_on = previous
        self._loop = asyncio.get_running_loop()
        # A plain handler, not the loop's: the watchdog must start even if the loop is stuck.
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return True

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._loop is None:  # never installed: nothing to drain
            return
        if self.draining:
            # A second SIGTERM: stop draining and stop now.
            self._loop.call_soon_threadsafe(self._stop)
            return
        self.draining = True
        self._watchdog = threading.Timer(self.timeout_s, self._give_up)
        self._watchdog.daemon = True
        self._watchdog.start()
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        if self._loop is None:
            return
        self.on_drain()
        logger.info(
            "SIGTERM: not ready; draining for %.1f s, then stopping (at most %.1f s)",
            self.drain_s,
            self.timeout_s,
        )
        self._loop.call_later(self.drain_s, self._stop)

    def _stop(self) -> None:
        if self._passed_on is None:
            return  # already handed on
        passed_on, self._passed_on = self._passed_on, None
        signal.signal(signal.SIGTERM, passed_on)
        passed_on(signal.SIGTERM, None)

    def finished(self) -> None:
        """The app has shut down: no watchdog must outlive it (an embedding program may)."""
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _give_up(self) -> None:
        logger.error("shutdown took over %.1f s; exiting now", self.timeout_s)
        for handler in logging.getLogger("uvicorn").handlers:
            handler.flush()
        os._exit(1)
