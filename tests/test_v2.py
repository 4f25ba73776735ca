"""The Open Inference Protocol with the official Triton HTTP client, against a real uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import TEST_API_KEY, LiveServer

# tritonclient writes into the headers dict it is given: pass a copy each time.
KEY = {"X-API-Key": TEST_API_KEY}


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    url = live_server.base_url.removeprefix("http://")
    with triton.InferenceServerClient(url=url) as c:
        yield c


@pytest.fixture(scope="module")
def rows(tiny_run: Path) -> np.ndarray:
    return np.load(tiny_run / "test_rows.npz")["features"][:37].astype(np.float32)


def v1_scores(live_server: LiveServer, rows: np.ndarray) -> np.ndarray:
    with live_server.client(headers=dict(KEY)) as http:
        body = {"transactions": [{"features": [float(v) for v in r]} for r in rows]}
        results = http.post("/v1/score/batch", json=body).json()["results"]
    return np.array([r["fraud_probability"] for r in results], dtype=np.float32)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("tiny", "2")
    assert not client.is_model_ready("other")
    assert "binary_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("tiny")
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["outputs"][0]["name"] == "fraud_probability"


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("ask_outputs", [True, False])
def test_infer_equals_v1(
    client: triton.InferenceServerClient,
    live_server: LiveServer,
    rows: np.ndarray,
    binary: bool,
    ask_outputs: bool,
) -> None:
    tensor = triton.InferInput("features", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = (
        [triton.InferRequestedOutput("fraud_probability", binary_data=binary)]
        if ask_outputs
        else None
    )
    result = client.infer("tiny", [tensor], outputs=outputs, request_id="req-7", headers=dict(KEY))
    got = result.as_numpy("fraud_probability")
    assert got.shape == (len(rows), 1)
    assert result.get_response()["id"] == "req-7"
    np.testing.assert_allclose(got.ravel(), v1_scores(live_server, rows), atol=1e-6)


def test_pinned_version_and_unknown_ones(
    client: triton.InferenceServerClient, rows: np.ndarray
) -> None:
    tensor = triton.InferInput("features", [2, 10], "FP32")
    tensor.set_data_from_numpy(rows[:2])
    assert client.infer("tiny", [tensor], model_version="1", headers=dict(KEY)).as_numpy(
        "fraud_probability"
    ).shape == (2, 1)
    for name, version in (("tiny", "9"), ("nope", "")):
        with pytest.raises(InferenceServerException) as raised:
            client.infer(name, [tensor], model_version=version, headers=dict(KEY))
        assert raised.value.status() == "404"


def test_infer_needs_the_key(client: triton.InferenceServerClient, rows: np.ndarray) -> None:
    tensor = triton.InferInput("features", [1, 10], "FP32")
    tensor.set_data_from_numpy(rows[:1])
    with pytest.raises(InferenceServerException) as raised:
        client.infer("tiny", [tensor])
    assert raised.value.status() == "401"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (
            b'{"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", '
            b'"data": [NaN, 1, 1, 1, 1, 1, 1, 1, 1, 1]}]}',
            {},
        ),
        (
            b'{"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", '
            b'"data": [1e39, 1, 1, 1, 1, 1, 1, 1, 1, 1]}]}',
            {},
        ),
        (
            b'{"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", '
            b'"data": [true, 1, 1, 1, 1, 1, 1, 1, 1, 1]}]}',
            {},
        ),
        (
            b'{"inputs": [{"name": "features", "shape": [1, 9], "datatype": "FP32", '
            b'"data": [1, 1, 1, 1, 1, 1, 1, 1, 1]}]}',
            {},
        ),
        (
            b'{"inputs": [{"name": "features", "shape": [1, 10], "datatype": "INT64", '
            b'"data": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]}]}',
            {},
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP32", '
            b'"data": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]}]}',
            {},
        ),
        (
            b'{"inputs": [{"name": "features", "shape": [2, 10], "datatype": "FP32", '
            b'"data": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]}]}',
            {},
        ),
        (
            b'{"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", '
            b'"parameters": {"binary_data_size": 40}}]}' + np.full(10, np.nan, "<f4").tobytes(),
            {"Inference-Header-Content-Length": "95"},
        ),
        (
            b'{"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", '
            b'"parameters": {"binary_data_size": 40}}]}' + b"\x00" * 12,
            {"Inference-Header-Content-Length": "95"},
        ),
        (b'{"inputs": []}', {}),
        (b"not json", {}),
        (
            b'{"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP32", '
            b'"data": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]}], "outputs": [{"name": "nope"}]}',
            {},
        ),
        (b"{}", {"Inference-Header-Content-Length": "99999"}),
    ],
)
def test_bad_infer_requests_are_400(
    live_server: LiveServer, body: bytes, headers: dict[str, str]
) -> None:
    with live_server.client(headers=dict(KEY)) as http:
        response = http.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert isinstance(response.json()["error"], str)
