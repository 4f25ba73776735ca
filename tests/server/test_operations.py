"""Operating the server with a fake scorer: request ids, JSON and access logs that keep
secrets out, readiness while draining, and the operational settings."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient

from server import logs
from server.app import create_app
from server.endpoints import ServerState
from server.errors import SettingsError
from server.logs import JsonFormatter
from server.middleware import MAX_REQUEST_ID, valid_request_id
from server.settings import Settings
from tests.server.fakes import FakeScorer, fake_info

KEY = "ops-test-key-0123456789"
HEADERS = {"X-API-Key": KEY}
ACCESS_LOGGER = "uvicorn.error.fraud.access"
WRONG_KEY = "sekrit-wrong-key-42"
MARKER = 987654.321  # a feature value that must never reach a log
MARKER_DIGITS = "987654"  # as float32 it prints 987654.3125: look for the digits


def make_client(scorer: FakeScorer | None = None, **settings: Any) -> TestClient:
    app = create_app(Settings(api_keys=(KEY,), **settings), scorer=scorer or FakeScorer())
    return TestClient(app, raise_server_exceptions=False)


def infer_body(rows: list[list[float]]) -> dict[str, Any]:
    tensor = {"name": "features", "datatype": "FP32", "shape": [len(rows), 3], "data": rows}
    return {"inputs": [tensor]}


def a_bit_of_everything(client: TestClient) -> list[httpx.Response]:
    return [
        client.post("/v1/score", json={"features": [0.2, 0, 0]}, headers=HEADERS),
        client.post("/v1/score", json={"features": [1, 2]}, headers=HEADERS),
        client.post("/v1/score", json={"features": [0.2, 0, 0]}),
        client.post(
            "/v1/score/batch", json={"transactions": [{"features": [0.2, 0, 0]}]}, headers=HEADERS
        ),
        client.get("/v1/score", headers=HEADERS),
        client.get("/v1/health/live"),
        client.get("/v1/health/ready"),
        client.get("/v2/health/ready"),
        client.get("/no/such/path"),
        client.post("/v2/models/fake/infer", json=infer_body([[0.2, 0, 0]]), headers=HEADERS),
        client.post("/v2/models/other/infer", json=infer_body([[0.2, 0, 0]]), headers=HEADERS),
        client.get("/metrics"),
        client.get("/openapi.json"),
    ]


# X-Request-ID


def test_every_answer_carries_a_request_id() -> None:
    with make_client() as client:
        responses = a_bit_of_everything(client)
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 422, 401, 200, 405, 200, 200, 200, 404, 200, 404, 200, 200]
    for response in responses:
        request_id = response.headers.get("x-request-id")
        assert request_id is not None, response.request.url
        assert valid_request_id(request_id.encode()), request_id


@pytest.mark.parametrize(
    "request_id",
    ["abc-123", "req_42:tenant/7=x~!", "x" * MAX_REQUEST_ID, "0"],
)
def test_a_valid_incoming_id_is_echoed(request_id: str) -> None:
    with make_client() as client:
        responses = [
            client.post(
                "/v1/score",
                json={"features": [0.2, 0, 0]},
                headers={**HEADERS, "X-Request-ID": request_id},
            ),
            client.post("/v1/score", json={}, headers={**HEADERS, "X-Request-ID": request_id}),
            client.get("/v1/health/ready", headers={"X-Request-ID": request_id}),
            client.get("/nowhere", headers={"X-Request-ID": request_id}),
        ]
    assert [r.headers["x-request-id"] for r in responses] == [request_id] * len(responses)


@pytest.mark.parametrize(
    "request_id",
    ["has space", "x" * (MAX_REQUEST_ID + 1), b"caf\xc3\xa9", b"\xff\xfe", "tab\there", ""],
)
def test_an_invalid_incoming_id_is_replaced(request_id: str | bytes) -> None:
    with make_client() as client:
        raw = request_id if isinstance(request_id, bytes) else request_id.encode()
        response = client.get("/v1/health/live", headers={b"X-Request-ID": raw})
        scored = client.post(
            "/v1/score", json={"features": [0.2, 0, 0]}, headers={**HEADERS, "X-Request-ID": "ok"}
        )
    given = request_id.decode("latin-1") if isinstance(request_id, bytes) else request_id
    assert response.headers["x-request-id"] != given
    assert valid_request_id(response.headers["x-request-id"].encode())
    assert scored.headers["x-request-id"] == "ok"


def test_generated_ids_are_unique() -> None:
    with make_client() as client:
        ids = [client.get("/v1/health/live").headers["x-request-id"] for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(valid_request_id(i.encode()) for i in ids)


def test_two_apps_do_not_hand_out_the_same_ids() -> None:
    with make_client() as first, make_client() as second:
        ids = {first.get("/v1/health/live").headers["x-request-id"] for _ in range(5)}
        ids |= {second.get("/v1/health/live").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 10


class UnencodableInfo(FakeScorer):
    """/v1/model fails unexpectedly: its metadata holds something JSON cannot encode."""

    def __init__(self) -> None:
        super().__init__()
        self.info = fake_info(metrics={"auc": object()})


def test_an_unexpected_500_carries_the_request_id() -> None:
    with make_client(UnencodableInfo()) as client:
        response = client.get("/v1/model", headers={**HEADERS, "X-Request-ID": "trace-500"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers.get("x-request-id") == "trace-500"


# JSON logs


def make_record(**extra: Any) -> logging.LogRecord:
    record = logging.getLogger("tests.json").makeRecord(
        "tests.json",
        logging.WARNING,
        __file__,
        1,
        "scored %d rows for %s",
        (3, "x"),
        None,
        None,
        extra,
    )
    record.created = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC).timestamp()
    return record


def test_a_record_is_one_json_line() -> None:
    record = make_record(route="/v1/score", status=200, where=Path("/srv/x"), _private=1)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2026-01-02T03:04:05.678+00:00",
        "level": "WARNING",
        "logger": "tests.json",
        "message": "scored 3 rows for x",
        "route": "/v1/score",
        "status": 200,
        "where": "/srv/x",
    }


def test_an_exception_stays_on_the_line() -> None:
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        exc_info = sys.exc_info()
    record = make_record()
    record.exc_info = exc_info
    line = JsonFormatter().format(record)
    assert "\n" not in line
    exception = json.loads(line)["exception"]
    assert exception.startswith("Traceback (most recent call last):")
    assert exception.rstrip().endswith("ValueError: first line\nsecond line")


def test_the_request_id_of_the_context_is_added() -> None:
    token = logs.request_id.set("req-77")
    try:
        inside = json.loads(JsonFormatter().format(make_record()))
    finally:
        logs.request_id.reset(token)
    outside = json.loads(JsonFormatter().format(make_record()))
    assert inside["request_id"] == "req-77"
    assert "request_id" not in outside


@pytest.fixture
def uvicorn_handler() -> Iterator[io.StringIO]:
    """A handler on uvicorn's error logger, as uvicorn installs one, writing to a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("uvicorn.error")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_json_format_reaches_uvicorns_handlers(uvicorn_handler: io.StringIO) -> None:
    handler = logging.getLogger("uvicorn.error").handlers[-1]
    create_app(Settings(api_keys=(KEY,), log_format="text"), scorer=FakeScorer())
    assert not isinstance(handler.formatter, JsonFormatter)
    with make_client(access_log=True, log_format="json") as client:
        assert isinstance(handler.formatter, JsonFormatter)
        response = client.get("/v1/health/ready", headers={"X-Request-ID": "line-1"})
    lines = [json.loads(line) for line in uvicorn_handler.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == ACCESS_LOGGER]
    assert len(access) == 1
    assert access[0]["request_id"] == response.headers["x-request-id"] == "line-1"
    assert (access[0]["route"], access[0]["status"], access[0]["level"]) == (
        "/v1/health/ready",
        200,
        "INFO",
    )


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS_LOGGER]


def test_the_access_log_has_one_record_per_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    with make_client(access_log=True) as client:
        responses = a_bit_of_everything(client)
    records = access_records(caplog)
    assert len(records) == len(responses)
    routes = [
        "/v1/score",
        "/v1/score",
        "/v1/score",
        "/v1/score/batch",
        "/v1/score",
        "/v1/health/live",
        "/v1/health/ready",
        "/v2/health/ready",
        "other",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/infer",
        "/metrics",
        "/openapi.json",
    ]
    for record, response, route in zip(records, responses, routes, strict=True):
        fields = record.__dict__
        assert fields["route"] == route
        assert fields["status"] == response.status_code
        assert fields["method"] == response.request.method
        assert fields["request_id"] == response.headers["x-request-id"]
        assert isinstance(fields["duration_ms"], float) and fields["duration_ms"] >= 0
        assert record.getMessage() == f"{response.request.method} {route} {response.status_code}"


def test_no_access_log_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with make_client() as client:
        a_bit_of_everything(client)
    assert access_records(caplog) == []


class Unruly(FakeScorer):
    """Fails on a negative amount, and answers the amount itself unclipped: out of [0, 1]."""

    def predict(self, features: np.ndarray) -> np.ndarray:
        self.calls.append(features)
        if (features[:, 0] < 0).any():
            raise RuntimeError("boom")
        return features[:, 0].astype(np.float32)


def test_logs_never_hold_keys_or_feature_values(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bad_rows = [
        {"features": [MARKER, "x", 0]},
        {"features": [MARKER, 1, 2, 3]},
        {"features": {"amount": MARKER, "hour": 1, "distance": 2, "colour": MARKER}},
        {"transaction_id": MARKER, "features": [0.1, 0, 0]},
    ]
    with make_client(Unruly(), access_log=True) as client:
        statuses = [
            client.post("/v1/score", json=row, headers={"X-API-Key": WRONG_KEY}).status_code
            for row in bad_rows
        ]
        statuses += [
            client.post("/v1/score", json=row, headers=HEADERS).status_code for row in bad_rows
        ]
        batch = {"transactions": [{"features": [0.1, 0, 0]}, *bad_rows]}
        statuses.append(client.post("/v1/score/batch", json=batch, headers=HEADERS).status_code)
        bad_tensor = infer_body([[MARKER, 0]])
        statuses.append(
            client.post("/v2/models/fake/infer", json=bad_tensor, headers=HEADERS).status_code
        )
        statuses.append(
            client.post(
                "/v2/models/fake/infer", json=bad_tensor, headers={"X-API-Key": WRONG_KEY}
            ).status_code
        )
        # The model fails on these: one raises, one answers a value that is no probability.
        for amount in (-MARKER, MARKER):
            body = {"features": [amount, 0, 0]}
            statuses.append(client.post("/v1/score", json=body, headers=HEADERS).status_code)
        rows = infer_body([[-MARKER, 0, 0]])
        statuses.append(
            client.post("/v2/models/fake/infer", json=rows, headers=HEADERS).status_code
        )
    assert statuses == [403] * 4 + [422] * 4 + [422, 400, 403, 500, 500, 500]

    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert len(access_records(caplog)) == len(statuses)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) >= 3 and any(r.exc_info for r in errors)  # the failures were logged
    for line in lines:
        for secret in (KEY, WRONG_KEY, MARKER_DIGITS):
            assert secret not in line, line


# Draining


def server_state(app: Starlette) -> ServerState:
    state = app.state.serving
    assert isinstance(state, ServerState)
    return state


def draining_gauge(client: TestClient) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "fraud_draining":
                return sample.value
    raise AssertionError("no fraud_draining gauge")


def test_draining_says_not_ready_but_keeps_scoring() -> None:
    app = create_app(Settings(api_keys=(KEY,)), scorer=FakeScorer())
    with TestClient(app) as client:
        before = client.get("/v1/health/ready")
        assert draining_gauge(client) == 0
        server_state(app).start_draining()
        v1_ready = client.get("/v1/health/ready")
        v2_ready = client.get("/v2/health/ready")
        live = client.get("/v1/health/live")
        scored = client.post("/v1/score", json={"features": [0.95, 0, 0]}, headers=HEADERS)
        inferred = client.post(
            "/v2/models/fake/infer", json=infer_body([[0.2, 0, 0]]), headers=HEADERS
        )
        drained = draining_gauge(client)
    assert before.status_code == 200 and "connection" not in before.headers
    assert v1_ready.status_code == 503
    assert v1_ready.json()["error"]["code"] == "not_ready"
    assert v1_ready.headers["retry-after"] == "1"
    assert v2_ready.status_code == 503 and isinstance(v2_ready.json()["error"], str)
    assert live.status_code == 200
    assert scored.status_code == 200 and scored.json()["decision"] == "DECLINE"
    assert inferred.status_code == 200
    for response in (v1_ready, v2_ready, live, scored, inferred):
        assert response.headers["connection"] == "close"
        assert "x-request-id" in response.headers
    assert drained == 1


# Settings


def test_every_operations_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "FRAUD_API_KEYS": KEY,
            "FRAUD_OOD_Z": "4.5",
            "FRAUD_METRICS": "off",
            "FRAUD_METRICS_DIR": "/run/fraud-metrics",
            "FRAUD_DRIFT_WINDOW": "5000",
            "FRAUD_RATE_LIMIT_RPS": "12.5",
            "FRAUD_RATE_LIMIT_BURST": "30",
            "FRAUD_LOG_FORMAT": "Text",
            "FRAUD_ACCESS_LOG": "yes",
            "FRAUD_SHUTDOWN_DRAIN_S": "5",
            "FRAUD_SHUTDOWN_TIMEOUT_S": "20.5",
            "FRAUD_ALERT_URLS": " https://hooks.example/a?token=s3cret , http://10.0.0.1:8080/b ,",
            "FRAUD_ALERT_ON_REVIEW": "true",
            "FRAUD_ALERT_SLACK": "1",
            "FRAUD_ALERT_QUEUE": "50",
            "FRAUD_ALERT_TIMEOUT_S": "0.5",
            "FRAUD_ALERT_RETRIES": "0",
            "FRAUD_GRPC_PORT": "0",
            "FRAUD_REASONS": "5",
        }
    )
    assert settings == Settings(
        api_keys=(KEY,),
        ood_z=4.5,
        reasons=5,
        metrics=False,
        metrics_dir=Path("/run/fraud-metrics"),
        drift_window=5000,
        rate_limit_rps=12.5,
        rate_limit_burst=30,
        log_format="text",
        access_log=True,
        shutdown_drain_s=5.0,
        shutdown_timeout_s=20.5,
        alert_urls=("https://hooks.example/a?token=s3cret", "http://10.0.0.1:8080/b"),
        alert_on_review=True,
        alert_slack=True,
        alert_queue=50,
        alert_timeout_s=0.5,
        alert_retries=0,
    )
    config = settings.alert_config()
    assert config is not None
    assert (config.urls, config.on_review, config.slack) == (settings.alert_urls, True, True)
    assert (config.queue_size, config.timeout_s, config.retries) == (50, 0.5, 0)


def test_unset_operations_variables_keep_the_defaults() -> None:
    settings = Settings.from_env({"FRAUD_METRICS_DIR": "", "FRAUD_ALERT_URLS": " , "})
    assert (settings.metrics, settings.metrics_dir, settings.access_log) == (True, None, False)
    assert (settings.log_format, settings.rate_limit_rps, settings.alert_urls) == ("json", 0, ())
    assert settings.alert_config() is None


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("OOD_Z", "0"),
        ("OOD_Z", "-2"),
        ("OOD_Z", "nan"),
        ("OOD_Z", "wide"),
        ("METRICS", "maybe"),
        ("DRIFT_WINDOW", "99"),
        ("DRIFT_WINDOW", "1e4"),
        ("RATE_LIMIT_RPS", "-1"),
        ("RATE_LIMIT_RPS", "fast"),
        ("RATE_LIMIT_BURST", "-1"),
        ("RATE_LIMIT_BURST", "2.5"),
        ("RATE_LIMIT_RPS", "nan"),
        ("RATE_LIMIT_RPS", "inf"),
        ("ALERT_QUEUE", "0"),
        ("ALERT_TIMEOUT_S", "0"),
        ("ALERT_TIMEOUT_S", "nan"),
        ("ALERT_RETRIES", "-1"),
        ("LOG_FORMAT", "xml"),
        ("ACCESS_LOG", "sometimes"),
        ("SHUTDOWN_DRAIN_S", "-1"),
        ("SHUTDOWN_DRAIN_S", "30"),  # not below the default timeout
        ("SHUTDOWN_DRAIN_S", "soon"),
        ("SHUTDOWN_TIMEOUT_S", "0"),
        ("SHUTDOWN_TIMEOUT_S", "3601"),
        ("SHUTDOWN_TIMEOUT_S", "never"),
        ("ALERT_ON_REVIEW", "perhaps"),
        ("ALERT_SLACK", "2"),
        ("ALERT_QUEUE", "many"),
        ("ALERT_TIMEOUT_S", "quick"),
        ("ALERT_RETRIES", "1.5"),
    ],
)
def test_bad_operations_values_are_refused_by_name(name: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=f"FRAUD_{name}"):
        Settings.from_env({f"FRAUD_{name}": raw})


@pytest.mark.parametrize(
    "environ",
    [
        {"FRAUD_ALERT_URLS": "ftp://user:pa55word@hooks.example/x"},
        {"FRAUD_ALERT_URLS": "https://hooks.example/pa55word", "FRAUD_ALERT_QUEUE": "0"},
        {"FRAUD_ALERT_URLS": "https://hooks.example/pa55word", "FRAUD_ALERT_TIMEOUT_S": "0"},
        {"FRAUD_ALERT_URLS": "https://hooks.example/pa55word", "FRAUD_ALERT_RETRIES": "-1"},
    ],
)
def test_bad_alert_settings_stop_the_app_without_showing_the_url(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="FRAUD_ALERT_") as refused:
        create_app(Settings.from_env({"FRAUD_API_KEYS": KEY, **environ}), scorer=FakeScorer())
    assert "pa55word" not in str(refused.value)


def test_alert_urls_are_not_in_the_repr() -> None:
    settings = Settings.from_env({"FRAUD_ALERT_URLS": "https://hooks.example/T0KEN-s3cret"})
    assert settings.alert_urls == ("https://hooks.example/T0KEN-s3cret",)
    assert "T0KEN-s3cret" not in repr(settings)
    assert "T0KEN-s3cret" not in str(settings)
