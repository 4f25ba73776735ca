"""Alert webhooks: DECLINE (and optionally REVIEW) decisions posted as JSON, off the event loop.

`offer` only puts a small record on a bounded queue; when the queue is full the alert is
dropped and counted rather than slow scoring down. Each URL has its own queue and worker
thread, so a slow or dead receiver delays only its own alerts. Delivery is at least once:
a retry after a lost response can repeat an alert.

Counters count deliveries, one per URL per alert: with two URLs one alert can add to both
`sent` and `failed`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import math
import queue
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from server.alert_messages import _Alert, encode_alert

logger = logging.getLogger("uvicorn.error").getChild("fraud")

# The decisions of server.service, not imported from there so that it can import this module.
DECLINE, REVIEW = "DECLINE", "REVIEW"
MAX_BACKOFF_S = 5.0
LOG_EVERY = 100  # after the first failure in a row, one warning per this many
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class AlertConfig:
    urls: tuple[str, ...]
    on_review: bool = False
    slack: bool = False
    queue_size: int = 1000
    timeout_s: float = 2.0
    retries: int = 3
    backoff_s: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.urls, tuple) or not self.urls:
            raise ValueError("alert urls must be a non-empty tuple of http:// or https:// URLs")
        for number, url in enumerate(self.urls, 1):
            _check_url(number, url)
        if self.queue_size < 1:
            raise ValueError(f"alert queue_size must be at least 1, not {self.queue_size}")
        if not self.timeout_s > 0:
            raise ValueError(f"alert timeout_s must be positive, not {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"alert retries must be 0 or more, not {self.retries}")
        if not self.backoff_s >= 0:
            raise ValueError(f"alert backoff_s must be 0 or more, not {self.backoff_s}")


def _check_url(number: int, url: object) -> None:
    # Messages name the URL by position: it may carry a token.
    what = f"alert URL #{number}"
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"{what} is empty")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"{what} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"{what} is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{what} must start with http:// or https://, not {parts.scheme or '?'}")
    if not parts.hostname:
        raise ValueError(f"{what} has no host")


class _Shutdown:
    def __init__(self) -> None:
        self.started = threading.Event()
        self.deadline = math.inf  # time.monotonic()

    def begin(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.started.set()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class _Channel:
    """One URL: its queue, worker thread, connection and counts."""

    def __init__(self, url: str, config: AlertConfig, shutdown: _Shutdown, name: str) -> None:
        parts = urlsplit(url)
        self.host = parts.netloc.rpartition("@")[2]  # what logs may show: no credentials or query
        self._https = parts.scheme == "https"
        self._hostname = parts.hostname or ""
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/json", "User-Agent": "fraud-scoring-alerts"}
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            token = base64.b64encode(credentials.encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._config = config
        self._shutdown = shutdown
        self._connection: http.client.HTTPConnection | None = None
        self._ssl: ssl.SSLContext | None = None
        self._failures_in_a_row = 0
        self._dropped_lock = threading.Lock()  # the only count with two writers
        self.queue: queue.Queue[_Alert | None] = queue.Queue(maxsize=config.queue_size)
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.sent = 0
        self.failed = 0
        self.retried = 0
        self.dropped = 0

    def count_dropped(self, n: int = 1) -> None:
        with self._dropped_lock:
            self.dropped += n

    def offer(self, alert: _Alert) -> bool:
        try:
            self.queue.put_nowait(alert)
        except queue.Full:
            self.count_dropped()
            return False
        return True

    def wake(self) -> None:
        # A full queue needs no wake-up: the worker is busy and checks for shutdown per alert.
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)

    def abandon_queued(self) -> int:
        left = 0
        while True:
            try:
                left += self.queue.get_nowait() is not None
            except queue.Empty:
                break
        if left:
            self.count_dropped(left)
            logger.warning(
                "alert webhook %s: %d alerts not delivered before shutdown", self.host, left
            )
        return left

    def _work(self) -> None:
        try:
            while (alert := self._next()) is not None:
                try:
                    self._deliver(alert)
                except Exception:  # the thread must outlive any one alert
                    self.failed += 1
                    logger.exception("alert webhook %s: unexpected error", self.host)
        finally:
            self._disconnect()

    def _next(self) -> _Alert | None:
        if self._shutdown.started.is_set():
            try:
                alert = self.queue.get_nowait()
            except queue.Empty:
                return None
        else:
            alert = self.queue.get()  # close() puts None to end this wait
        if alert is None:
            return None
        if self._shutdown.remaining() <= 0:
            self.count_dropped()
            self.abandon_queued()
            return None
        return alert

    def _deliver(self, alert: _Alert) -> None:
        body = encode_alert(alert, self._config.slack)
        problem = "shutdown came first"
        for attempt in range(self._config.retries + 1):
            if attempt:
                delay = min(self._config.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                if not self._pause(delay):
                    break
                self.retried += 1
            timeout = min(self._config.timeout_s, self._shutdown.remaining())
            if timeout <= 0:
                break
            outcome, retry = self._post(body, timeout)
            if outcome is None:
                self.sent += 1
                if self._failures_in_a_row:
                    logger.info(
                        "alert webhook %s: delivering again after %d failed alerts",
                        self.host,
                        self._failures_in_a_row,
                    )
                    self._failures_in_a_row = 0
                return
            problem = outcome
            if not retry:
                break
        self.failed += 1
        self._failures_in_a_row += 1
        if (self._failures_in_a_row - 1) % LOG_EVERY == 0:
            logger.warning(
                "alert webhook %s: gave up on an alert (%s); %d failed in a row",
                self.host,
                problem,
                self._failures_in_a_row,
            )

    def _pause(self, delay: float) -> bool:
        """Sleep before a retry; False when shutdown would end before the retry could start."""
        end = time.monotonic() + delay
        if self._shutdown.started.wait(delay) and end >= self._shutdown.deadline:
            return False
        time.sleep(max(0.0, end - time.monotonic()))
        return True

    def _post(self, body: bytes, timeout: float) -> tuple[str | None, bool]:
        """One attempt: (None, _) on 2xx, else (what went wrong, whether to retry)."""
        reused = self._connection is not None and self._connection.sock is not None
        try:
            try:
                status = self._exchange(body, timeout)
            except (ConnectionError, http.client.BadStatusLine):
                if not reused:
                    raise
                # The receiver closed the idle keep-alive connection: a fresh one is no retry.
                self._disconnect()
                status = self._exchange(body, timeout)
        except (OSError, http.client.HTTPException) as exc:
            self._disconnect()
            return f"{type(exc).__name__}: {exc}", True
        if 200 <= status < 300:
            return None, False
        return f"HTTP {status}", status == 429 or status >= 500

    def _exchange(self, body: bytes, timeout: float) -> int:
        if self._connection is None:
            if self._https:
                self._ssl = self._ssl or ssl.create_default_context()
                self._connection = http.client.HTTPSConnection(
                    self._hostname, self._port, timeout=timeout, context=self._ssl
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self._hostname, self._port, timeout=timeout
                )
        connection = self._connection
        # A socket timeout bounds each connect, send and receive, not their sum.
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        connection.request("POST", self._target, body, self._headers)
        response = connection.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        if not response.isclosed():  # too big a body to drain: do not reuse the connection
            response.close()
            self._disconnect()
        return response.status

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class AlertSender:
    def __init__(self, config: AlertConfig, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._shutdown = _Shutdown()
        self._channels = [
            _Channel(url, config, self._shutdown, name=f"alerts-{number}")
            for number, url in enumerate(config.urls, 1)
        ]
        self._started = False
        self._warned_bad_offer = False

    @property
    def sent(self) -> int:
        return sum(channel.sent for channel in self._channels)

    @property
    def dropped(self) -> int:
        return sum(channel.dropped for channel in self._channels)

    @property
    def failed(self) -> int:
        return sum(channel.failed for channel in self._channels)

    @property
    def retried(self) -> int:
        return sum(channel.retried for channel in self._channels)

    def queue_depth(self) -> int:
        """The longest backlog of any URL, to compare with queue_size."""
        return max(channel.queue.qsize() for channel in self._channels)

    def start(self) -> None:
        if self._started or self._shutdown.started.is_set():
            return
        self._started = True
        for channel in self._channels:
            channel.thread.start()

    def offer(
        self,
        transaction_id: str | None,
        probability: float,
        decision: str,
        model_version: str,
        model: str = "",
        reasons: Sequence[Mapping[str, Any]] | None = None,
    ) -> bool:
        """Queue an alert for every URL if the decision calls for one; never blocks or raises.
        The reasons go with it as features and contributions (never the values sent).

        False when the decision does not alert or any URL's queue dropped it."""
        if decision != DECLINE and not (decision == REVIEW and self._config.on_review):
            return False
        if self._shutdown.started.is_set():
            self._count_dropped()
            return False
        try:
            alert = _Alert(
                transaction_id,
                float(probability),
                decision,
                str(model_version),
                self._clock(),
                str(model),
                tuple((str(r["feature"]), float(r["contribution"])) for r in reasons or ()),
            )
        except Exception:  # scoring goes on whatever the caller or the clock hand us
            if not self._warned_bad_offer:
                self._warned_bad_offer = True
                logger.exception("could not build an alert; such alerts are dropped")
            self._count_dropped()
            return False
        accepted = True
        for channel in self._channels:
            accepted = channel.offer(alert) and accepted
        return accepted

    def notify(self, event: str, model: str, model_version: str, detail: str) -> bool:
        """Queue a policy event (a canary rolled back) for every URL, whatever on_review
        says; never blocks or raises. False when any URL's queue dropped it."""
        if self._shutdown.started.is_set():
            self._count_dropped()
            return False
        alert = _Alert(None, 0.0, "", model_version, self._clock(), model, (), event, detail)
        accepted = True
        for channel in self._channels:
            accepted = channel.offer(alert) and accepted
        return accepted

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued within timeout_s, then stop; later alerts are dropped.

        A worker still inside an HTTP exchange at the deadline is left behind (it is a
        daemon thread): it finishes that attempt, counts the rest as dropped and ends."""
        if not self._shutdown.started.is_set():
            self._shutdown.begin(timeout_s)
        for channel in self._channels:
            if not self._started:
                channel.abandon_queued()
                continue
            channel.wake()
        for channel in self._channels:
            if not self._started:
                continue
            channel.thread.join(max(0.0, self._shutdown.remaining()))
            if channel.thread.is_alive():
                logger.warning("alert webhook %s: still busy at shutdown", channel.host)

    def _count_dropped(self) -> None:
        for channel in self._channels:
            channel.count_dropped()
