"""Alert webhooks against real loopback receivers: payloads, fan-out, retries, back-pressure."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from server.alerts import AlertConfig, AlertSender
from tests.conftest import free_port

OFFERED_AT = datetime(2024, 5, 1, 12, 30, 45, 123000, tzinfo=UTC).timestamp()
WAIT_S = 5.0


def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the condition")
        time.sleep(0.005)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int

    def json(self) -> object:
        return orjson.loads(self.body)


class Receiver:
    """A webhook on 127.0.0.1 that records every POST.

    It answers from `statuses` in turn, then 200. With `hold`, each request waits for
    `release` before the answer; with `forget_connections`, it closes every connection after
    answering without saying so, as a server dropping idle keep-alive connections does.
    """

    def __init__(
        self,
        port: int = 0,
        statuses: Iterable[int] = (),
        hold: bool = False,
        forget_connections: bool = False,
    ) -> None:
        self.requests: list[Received] = []
        self.release = threading.Event()
        self._statuses = deque(statuses)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.path, dict(self.headers), body, self.client_address[1])
                    )
                    status = receiver._statuses.popleft() if receiver._statuses else 200
                if hold:
                    receiver.release.wait(timeout=WAIT_S)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if forget_connections:
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def bodies(self) -> list[object]:
        with self._lock:
            return [request.json() for request in self.requests]

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=WAIT_S)


class Webhooks:
    """Receivers and senders for one test, torn down in an order that never hangs."""

    def __init__(self) -> None:
        self.receivers: list[Receiver] = []
        self.senders: list[AlertSender] = []

    def receiver(self, **options: object) -> Receiver:
        receiver = Receiver(**options)  # type: ignore[arg-type]
        self.receivers.append(receiver)
        return receiver

    def sender(self, *urls: str, start: bool = True, **options: object) -> AlertSender:
        options = {"backoff_s": 0.01, "timeout_s": 2.0, **options}
        sender = AlertSender(AlertConfig(urls=urls, **options), clock=lambda: OFFERED_AT)  # type: ignore[arg-type]
        if start:
            sender.start()
        self.senders.append(sender)
        return sender

    def close(self) -> None:
        for receiver in self.receivers:
            receiver.release.set()
        for sender in self.senders:
            sender.close(timeout_s=WAIT_S)
        for receiver in self.receivers:
            receiver.stop()


@pytest.fixture
def hooks() -> Iterator[Webhooks]:
    webhooks = Webhooks()
    yield webhooks
    webhooks.close()


def down_url() -> str:
    return f"http://127.0.0.1:{free_port()}/hook"


def test_a_decline_is_posted_with_exactly_the_alert_fields(hooks: Webhooks) -> None:
    receiver = hooks.receiver()
    sender = hooks.sender(receiver.url + "?token=abc")
    assert sender.offer("tx-1", 0.9912, "DECLINE", "3", "cards") is True
    wait_until(lambda: sender.sent == 1)
    assert receiver.bodies() == [
        {
            "transaction_id": "tx-1",
            "fraud_probability": 0.9912,
            "decision": "DECLINE",
            "model": "cards",
            "model_version": "3",
            "time": "2024-05-01T12:30:45.123Z",
        }
    ]
    request = receiver.requests[0]
    assert request.path == "/hook?token=abc"
    assert request.headers["Content-Type"] == "application/json"
    assert (sender.dropped, sender.failed, sender.retried) == (0, 0, 0)


def test_review_alerts_only_when_asked_and_approve_never(hooks: Webhooks) -> None:
    plain, with_review = hooks.receiver(), hooks.receiver()
    default = hooks.sender(plain.url)
    reviewing = hooks.sender(with_review.url, on_review=True)
    for sender in (default, reviewing):
        assert sender.offer("approved", 0.01, "APPROVE", "1") is False
    assert default.offer("reviewed", 0.6, "REVIEW", "1") is False
    assert reviewing.offer("reviewed", 0.6, "REVIEW", "1") is True
    for sender in (default, reviewing):
        assert sender.offer("declined", 0.99, "DECLINE", "1") is True
    # One queue per URL is first in, first out: once the DECLINE is in, nothing else is coming.
    wait_until(lambda: default.sent == 1 and reviewing.sent == 2)
    assert [body["transaction_id"] for body in plain.bodies()] == ["declined"]  # type: ignore[index]
    assert [(b["transaction_id"], b["decision"]) for b in with_review.bodies()] == [  # type: ignore[index]
        ("reviewed", "REVIEW"),
        ("declined", "DECLINE"),
    ]
    assert default.dropped == reviewing.dropped == 0


def test_slack_form_is_a_text_message(hooks: Webhooks) -> None:
    receiver = hooks.receiver()
    sender = hooks.sender(receiver.url, slack=True)
    sender.offer("tx-1", 0.99123, "DECLINE", "1", "cards")
    sender.offer("<!channel>", 0.5, "DECLINE", "1", "<!here>")
    wait_until(lambda: sender.sent == 2)
    first, second = receiver.bodies()
    assert first == {
        "text": "DECLINE: transaction tx-1 scored 0.9912 (model cards version 1)"
        " at 2024-05-01T12:30:45.123Z"
    }
    assert isinstance(second, dict)
    assert "<!channel>" not in second["text"] and "<!here>" not in second["text"]
    assert "&lt;!channel&gt;" in second["text"] and "&lt;!here&gt;" in second["text"]


def test_one_connection_is_kept_per_url(hooks: Webhooks) -> None:
    receiver = hooks.receiver()
    sender = hooks.sender(receiver.url)
    for i in range(5):
        sender.offer(f"tx-{i}", 0.99, "DECLINE", "1")
    wait_until(lambda: sender.sent == 5)
    assert len({request.client_port for request in receiver.requests}) == 1


def test_a_connection_closed_by_the_receiver_is_reopened_without_a_retry(
    hooks: Webhooks,
) -> None:
    receiver = hooks.receiver(forget_connections=True)
    sender = hooks.sender(receiver.url, retries=0)
    for i in range(3):
        sender.offer(f"tx-{i}", 0.99, "DECLINE", "1")
        wait_until(lambda i=i: sender.sent + sender.failed == i + 1)  # type: ignore[misc]
    assert (sender.sent, sender.failed) == (3, 0)
    assert receiver.count() == 3


def test_every_url_gets_every_alert(hooks: Webhooks) -> None:
    first, second = hooks.receiver(), hooks.receiver()
    sender = hooks.sender(first.url, second.url)
    for i in range(5):
        assert sender.offer(f"tx-{i}", 0.99, "DECLINE", "1") is True
    wait_until(lambda: sender.sent == 10)
    expected = [f"tx-{i}" for i in range(5)]
    for receiver in (first, second):
        assert [b["transaction_id"] for b in receiver.bodies()] == expected  # type: ignore[index]


def test_a_down_url_does_not_stop_the_others(hooks: Webhooks) -> None:
    good = hooks.receiver()
    sender = hooks.sender(down_url(), good.url, retries=1)
    for i in range(5):
        sender.offer(f"tx-{i}", 0.99, "DECLINE", "1")
    wait_until(lambda: sender.sent == 5 and sender.failed == 5)
    assert [b["transaction_id"] for b in good.bodies()] == [f"tx-{i}" for i in range(5)]  # type: ignore[index]
    assert sender.retried == 5


def test_server_errors_are_retried_and_the_alert_delivered_once(hooks: Webhooks) -> None:
    receiver = hooks.receiver(statuses=(500, 503, 429))
    sender = hooks.sender(receiver.url, retries=3)
    sender.offer("tx-1", 0.99, "DECLINE", "1")
    wait_until(lambda: sender.sent == 1)
    assert (sender.retried, sender.failed) == (3, 0)
    assert receiver.count() == 4
    assert len({request.body for request in receiver.requests}) == 1


def test_retries_run_out(hooks: Webhooks) -> None:
    receiver = hooks.receiver(statuses=(500,) * 10)
    sender = hooks.sender(receiver.url, retries=2)
    sender.offer("tx-1", 0.99, "DECLINE", "1")
    wait_until(lambda: sender.failed == 1)
    assert (sender.sent, sender.retried, receiver.count()) == (0, 2, 3)


def test_a_client_error_is_not_retried(hooks: Webhooks) -> None:
    receiver = hooks.receiver(statuses=(400, 404))
    sender = hooks.sender(receiver.url, retries=3)
    sender.offer("tx-1", 0.99, "DECLINE", "1")
    wait_until(lambda: sender.failed == 1)
    assert (sender.sent, sender.retried, receiver.count()) == (0, 0, 1)


def test_a_receiver_down_is_given_up_on_and_delivery_resumes_when_it_is_back(
    hooks: Webhooks,
) -> None:
    port = free_port()
    sender = hooks.sender(f"http://127.0.0.1:{port}/hook", retries=2)
    sender.offer("lost", 0.99, "DECLINE", "1")
    wait_until(lambda: sender.failed == 1)
    assert sender.retried == 2
    receiver = hooks.receiver(port=port)
    sender.offer("later", 0.99, "DECLINE", "1")
    wait_until(lambda: sender.sent == 1)
    assert [b["transaction_id"] for b in receiver.bodies()] == ["later"]  # type: ignore[index]


def test_failures_are_logged_sparingly_and_without_the_query(hooks: Webhooks) -> None:
    records: list[logging.LogRecord] = []
    collect = logging.Handler(logging.WARNING)
    collect.emit = records.append  # type: ignore[method-assign]
    fraud_logger = logging.getLogger("uvicorn.error.fraud")
    fraud_logger.addHandler(collect)
    try:
        url = down_url() + "?token=s3cret"
        sender = hooks.sender(url, retries=0)
        for i in range(150):
            assert sender.offer(f"tx-{i}", 0.99, "DECLINE", "1") is True
        wait_until(lambda: sender.failed == 150)
    finally:
        fraud_logger.removeHandler(collect)
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # the first failure and the 101st
    host = url.split("/")[2]
    for record in warnings:
        message = record.getMessage()
        assert host in message
        assert "s3cret" not in message
        assert "/hook" not in message


def test_a_slow_receiver_never_blocks_offer_and_overflow_is_dropped(hooks: Webhooks) -> None:
    receiver = hooks.receiver(hold=True)
    size = 5
    sender = hooks.sender(receiver.url, queue_size=size, timeout_s=WAIT_S)
    assert sender.offer("tx-held", 0.99, "DECLINE", "1") is True
    wait_until(lambda: receiver.count() == 1)  # the worker is now stuck in that request

    results: list[bool] = []
    offering = threading.Thread(
        target=lambda: results.extend(
            sender.offer(f"tx-{i}", 0.99, "DECLINE", "1") for i in range(size + 10)
        )
    )
    offering.start()
    offering.join(timeout=WAIT_S)
    assert not offering.is_alive(), "offer blocked while the receiver was slow"
    assert results == [True] * size + [False] * 10
    assert sender.dropped == 10
    assert sender.queue_depth() == size
    assert receiver.count() == 1

    receiver.release.set()
    wait_until(lambda: sender.sent == size + 1)
    assert [b["transaction_id"] for b in receiver.bodies()] == ["tx-held"] + [  # type: ignore[index]
        f"tx-{i}" for i in range(size)
    ]
    assert sender.queue_depth() == 0


def test_close_delivers_what_is_queued_and_refuses_later_alerts(hooks: Webhooks) -> None:
    receiver = hooks.receiver(hold=True)
    sender = hooks.sender(receiver.url)
    for i in range(5):
        sender.offer(f"tx-{i}", 0.99, "DECLINE", "1")
    wait_until(lambda: receiver.count() == 1)
    assert sender.queue_depth() == 4
    releasing = threading.Timer(0.05, receiver.release.set)
    releasing.start()
    try:
        sender.close(timeout_s=WAIT_S)
    finally:
        releasing.cancel()
        releasing.join(timeout=WAIT_S)
    assert sender.sent == 5
    assert [b["transaction_id"] for b in receiver.bodies()] == [f"tx-{i}" for i in range(5)]  # type: ignore[index]
    assert sender.offer("tx-late", 0.99, "DECLINE", "1") is False
    assert sender.dropped == 1


def test_close_gives_up_at_its_timeout(hooks: Webhooks) -> None:
    receiver = hooks.receiver(hold=True)
    sender = hooks.sender(receiver.url, timeout_s=WAIT_S)
    for i in range(5):
        sender.offer(f"tx-{i}", 0.99, "DECLINE", "1")
    wait_until(lambda: receiver.count() == 1)
    started = time.monotonic()
    sender.close(timeout_s=0.2)
    assert time.monotonic() - started < WAIT_S / 2  # well short of the receiver's hold
    assert sender.offer("tx-late", 0.99, "DECLINE", "1") is False

    receiver.release.set()
    # The request in flight completes; the four behind it are past the deadline.
    wait_until(lambda: sender.dropped == 5)
    assert sender.sent == 1
    assert receiver.count() == 1


def test_close_before_start_drops_the_queue(hooks: Webhooks) -> None:
    receiver = hooks.receiver()
    sender = hooks.sender(receiver.url, start=False)
    assert sender.offer("tx-1", 0.99, "DECLINE", "1") is True
    sender.close(timeout_s=1)
    assert (sender.dropped, sender.sent, sender.queue_depth()) == (1, 0, 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"urls": ("ftp://example.com/hook",)}, "http:// or https://"),
        ({"urls": ("",)}, "empty"),
        ({"urls": ()}, "non-empty"),
        ({"urls": "https://example.com/hook"}, "tuple"),
        ({"urls": ("example.com/hook",)}, "http:// or https://"),
        ({"urls": ("https:///hook",)}, "no host"),
        ({"urls": ("https://example.com:99999/hook",)}, "malformed"),
        ({"urls": ("https://example.com/a hook",)}, "whitespace"),
        ({"queue_size": 0}, "queue_size"),
        ({"retries": -1}, "retries"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"backoff_s": -0.1}, "backoff_s"),
    ],
)
def test_invalid_config_is_refused(options: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"urls": ("https://example.com/hook",), **options}
    with pytest.raises(ValueError, match=message):
        AlertConfig(**fields)  # type: ignore[arg-type]


def test_a_refused_url_is_not_echoed() -> None:
    with pytest.raises(ValueError) as refused:
        AlertConfig(urls=("https://ok.example/hook", "ftp://example.com/hook?token=s3cret"))
    assert "#2" in str(refused.value)
    assert "s3cret" not in str(refused.value)
