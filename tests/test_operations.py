"""Operations on a real uvicorn: metrics over several workers, JSON logs, alert webhooks,
and SIGTERM draining under load."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_API_KEY, start_server, stop_server
from tests.model_edits import meta

KEY = {"X-API-Key": TEST_API_KEY}
WRONG_KEY = "wrong-key-that-must-not-be-logged-42"
MARKER = 987654.321  # a feature value that must never reach a log line


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def typical_row(model_dir: Path) -> list[float]:
    """The training means: a row well inside the training distribution."""
    return [float(v) for v in meta(model_dir, "feature_mean")]


Receiver = tuple[str, list[dict[str, object]], threading.Event]


def test_metrics_add_up_over_two_workers(tiny_model_dir: Path, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    typical = typical_row(tiny_model_dir)
    server = start_server(
        tiny_model_dir,
        tmp_path / "uvicorn.log",
        {"FRAUD_METRICS_DIR": str(metrics_dir)},
        extra_args=("--workers", "2"),
    )
    try:
        # A new connection per request, so that both workers take some.
        for i in range(120):
            answer = httpx.post(
                f"{server.base_url}/v1/score",
                json={"transaction_id": f"m{i}", "features": typical},
                headers=KEY,
                timeout=10,
            )
            assert answer.status_code == 200
        deadline = time.monotonic() + 15
        while True:
            text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
            counted = metric(text, "fraud_requests_total", route="/v1/score", status="200")
            if counted == 120 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        files = {p: json.loads(p.read_text()) for p in metrics_dir.glob("*.json")}
    finally:
        stop_server(server)
    assert counted == 120
    assert metric(text, "fraud_decisions_total") == 120
    assert metric(text, "fraud_stage_duration_seconds_count", stage="inference") >= 1
    # Both workers answered some: each file holds part of the total.
    scored = []
    for state in files.values():
        requests = state["counters"]["fraud_requests"]["values"]
        scored.append(sum(v for k, v in requests if k == ["/v1/score", "tiny", "200", "http"]))
    assert len(files) == 2 and all(n > 0 for n in scored), scored


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback that records JSON bodies; `hold` makes it hang."""
    received: list[dict[str, object]] = []
    hold = threading.Event()
    hold.set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hold.wait(30)
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received, hold
    hold.set()
    server.shutdown()
    server.server_close()


def test_declines_reach_the_webhook_without_features(
    tiny_model_dir: Path,
    tmp_path: Path,
    receiver: tuple[str, list[dict[str, object]], threading.Event],
) -> None:
    url, received, _ = receiver
    env = {
        "FRAUD_ALERT_URLS": url,
        "FRAUD_DECLINE_THRESHOLD": "0.0",
        "FRAUD_REVIEW_THRESHOLD": "0.0",
    }
    typical = typical_row(tiny_model_dir)
    server = start_server(tiny_model_dir, tmp_path / "uvicorn.log", env)
    try:
        with server.client(headers=KEY) as client:
            answers = [
                client.post("/v1/score", json={"transaction_id": f"a{i}", "features": typical})
                for i in range(5)
            ]
            deadline = time.monotonic() + 10
            while len(received) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            text = client.get("/metrics").text
    finally:
        stop_server(server)
    assert [a.json()["decision"] for a in answers] == ["DECLINE"] * 5
    assert sorted(r["transaction_id"] for r in received) == [f"a{i}" for i in range(5)]
    first = next(r for r in received if r["transaction_id"] == "a0")
    assert set(first) == {
        "transaction_id",
        "fraud_probability",
        "decision",
        "model",
        "model_version",
        "time",
    }
    assert first["model"] == "tiny"
    assert first["fraud_probability"] == answers[0].json()["fraud_probability"]
    assert metric(text, "fraud_alerts_total", result="sent") == 5


def test_a_hung_webhook_costs_scoring_nothing_but_dropped_alerts(
    tiny_model_dir: Path,
    tmp_path: Path,
    receiver: tuple[str, list[dict[str, object]], threading.Event],
) -> None:
    url, _, hold = receiver
    hold.clear()  # the receiver takes the first alert and never answers
    env = {
        "FRAUD_ALERT_URLS": url,
        "FRAUD_DECLINE_THRESHOLD": "0.0",
        "FRAUD_REVIEW_THRESHOLD": "0.0",
        "FRAUD_ALERT_QUEUE": "10",
        "FRAUD_ALERT_TIMEOUT_S": "30",
    }
    typical = typical_row(tiny_model_dir)
    server = start_server(tiny_model_dir, tmp_path / "uvicorn.log", env)
    try:
        with server.client(headers=KEY) as client:
            statuses = [
                client.post("/v1/score", json={"features": typical}).status_code for _ in range(300)
            ]
            text = client.get("/metrics").text
    finally:
        hold.set()
        stop_server(server)
    assert statuses == [200] * 300
    # One alert held by the receiver, ten queued behind it, the rest dropped and counted.
    assert metric(text, "fraud_alerts_total", result="dropped") == 300 - 1 - 10


def test_logs_are_json_lines_without_keys_or_features(tiny_model_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "uvicorn.log"
    typical = typical_row(tiny_model_dir)
    server = start_server(tiny_model_dir, log, {"FRAUD_ACCESS_LOG": "true"})
    odd = [MARKER, *typical[1:]]
    try:
        with server.client() as client:
            ok = client.post("/v1/score", json={"features": odd}, headers=KEY)
            mine = client.post(
                "/v1/score", json={"features": typical}, headers=KEY | {"X-Request-ID": "trace-42"}
            )
            client.post("/v1/score", json={"features": odd}, headers={"X-API-Key": WRONG_KEY})
            client.post("/v1/score", json={"features": [str(MARKER)] * len(odd)}, headers=KEY)
            client.post(
                "/v1/score/batch", json={"transactions": [{"features": odd}] * 3}, headers=KEY
            )
            client.get("/no/such/route")
    finally:
        stop_server(server)
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(r["message"].startswith("Application startup complete") for r in records)
    access = [
        r
        for r in records
        if r["logger"].endswith("fraud.access") and r["route"] != "/v1/health/ready"
    ]
    assert [(r["route"], r["status"]) for r in access] == [
        ("/v1/score", 200),
        ("/v1/score", 200),
        ("/v1/score", 403),
        ("/v1/score", 422),
        ("/v1/score/batch", 200),
        ("other", 404),
    ]
    assert access[0]["request_id"] == ok.headers["x-request-id"]
    assert access[1]["request_id"] == "trace-42" == mine.headers["x-request-id"]
    text = log.read_text()
    for secret in (TEST_API_KEY, WRONG_KEY, str(MARKER), "987654"):
        assert secret not in text


def test_sigterm_drains_under_load_without_failing_an_accepted_request(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Requests wait up to 0.4 s for company in the batch queue, so some are always in
    # flight; clients behave like a load balancer's: they stop sending new work once a
    # readiness poll (every 50 ms) says 503.
    env = {
        "FRAUD_SHUTDOWN_DRAIN_S": "2.0",
        "FRAUD_SHUTDOWN_TIMEOUT_S": "20",
        "FRAUD_MAX_QUEUE_DELAY_US": "400000",
        "FRAUD_REQUEST_DEADLINE_MS": "5000",  # longer than the wait for company
    }
    typical = typical_row(tiny_model_dir)
    server = start_server(tiny_model_dir, tmp_path / "uvicorn.log", env)
    not_ready = threading.Event()
    lock = threading.Lock()
    statuses: dict[int, int] = {}
    failures: list[str] = []

    def poll_readiness() -> None:
        with httpx.Client(base_url=server.base_url, timeout=5) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if client.get("/v1/health/ready").status_code == 503:
                    not_ready.set()
                    return
                time.sleep(0.05)

    def load() -> None:
        with server.client(headers=KEY) as client:
            deadline = time.monotonic() + 30
            while not not_ready.is_set() and time.monotonic() < deadline:
                try:
                    status = client.post("/v1/score", json={"features": typical}).status_code
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=load) for _ in range(6)]
    threads.append(threading.Thread(target=poll_readiness))
    for thread in threads:
        thread.start()
    late = server.client(headers=KEY)  # a kept-alive connection for a request at the very end
    assert late.post("/v1/score", json={"features": typical}).status_code == 200
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    time.sleep(0.3)
    with httpx.Client(base_url=server.base_url, timeout=5) as probe:
        ready = probe.get("/v1/health/ready")
        v2_ready = probe.get("/v2/health/ready")
        during = probe.post("/v1/score", json={"features": typical}, headers=KEY)
    # Sent 0.2 s before the drain ends, it waits up to 0.4 s in the batch queue: it is in
    # flight when uvicorn stops taking connections, and must still be answered.
    time.sleep(max(0.0, signalled + 1.8 - time.monotonic()))
    last = late.post("/v1/score", json={"features": typical})
    late.close()
    exit_code = server.process.wait(timeout=20)
    exited_after = time.monotonic() - signalled
    for thread in threads:
        thread.join(timeout=30)
    assert ready.status_code == 503 and v2_ready.status_code == 503
    assert during.status_code == 200 and during.headers["connection"] == "close"
    assert last.status_code == 200
    assert failures == [] and set(statuses) == {200}, (failures, statuses)
    assert statuses[200] >= 12  # six clients, each request up to 0.4 s in the queue
    assert 2.0 <= exited_after < 20, exited_after
    assert exit_code in (0, -signal.SIGTERM)
    log = server.log.read_text()
    assert "draining" in log and "Traceback" not in log


def test_a_second_sigterm_cuts_the_drain_short(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {"FRAUD_SHUTDOWN_DRAIN_S": "30", "FRAUD_SHUTDOWN_TIMEOUT_S": "60"}
    server = start_server(tiny_model_dir, tmp_path / "uvicorn.log", env)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert httpx.get(f"{server.base_url}/v1/health/ready", timeout=5).status_code == 503
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=20)
    assert time.monotonic() - signalled < 10  # not the 30 s drain, nor the 60 s watchdog
    assert "Traceback" not in server.log.read_text()
