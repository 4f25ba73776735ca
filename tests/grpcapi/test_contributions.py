"""The `contributions` output over gRPC, on the module's own server: only when asked for, in
raw and typed contents, equal to the same rows' contributions over HTTP v2, and refused with
INVALID_ARGUMENT on a server that explains nothing (FRAUD_REASONS=0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2_grpc

from tests.conftest import TEST_API_KEY, stop_server
from tests.grpcapi.support import (
    MODEL,
    N_FEATURES,
    Served,
    key,
    raw_request,
    refusal,
    serve,
    typed_request,
)

METADATA = tuple(key().items())


def asking(request: Any, *names: str) -> Any:
    for name in names:
        request.outputs.add(name=name)
    return request


def outputs_of(response: Any) -> dict[str, np.ndarray]:
    """Output name -> values in its shape, from raw or typed contents."""
    found = {}
    for i, output in enumerate(response.outputs):
        if response.raw_output_contents:
            values = np.frombuffer(response.raw_output_contents[i], dtype="<f4")
        else:
            values = np.asarray(output.contents.fp32_contents, dtype=np.float32)
        found[output.name] = values.reshape(list(output.shape))
    return found


def over_http(server: Served, rows: np.ndarray) -> dict[str, np.ndarray]:
    body = {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": list(rows.shape)}
            | {"data": rows.ravel().tolist()}
        ],
        "outputs": [{"name": "fraud_probability"}, {"name": "contributions"}],
    }
    with server.live.client(headers={"X-API-Key": TEST_API_KEY}) as http:
        answer = http.post(f"/v2/models/{MODEL}/infer", json=body)
    assert answer.status_code == 200, answer.text
    return {
        o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"])
        for o in answer.json()["outputs"]
    }


@pytest.mark.parametrize("encode", [raw_request, typed_request])
def test_contributions_when_asked_equal_http_s(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    server: Served,
    rows: np.ndarray,
    encode: Any,
) -> None:
    asked = asking(encode(rows), "fraud_probability", "contributions")
    got = outputs_of(stub.ModelInfer(asked, metadata=METADATA))
    assert list(got) == ["fraud_probability", "contributions"]
    assert got["contributions"].shape == (len(rows), N_FEATURES)
    expected = over_http(server, rows)
    np.testing.assert_allclose(got["fraud_probability"], expected["fraud_probability"], atol=1e-6)
    np.testing.assert_allclose(got["contributions"], expected["contributions"], atol=1e-6)
    # Not every contribution is nothing: the rows' features move their probabilities.
    assert np.abs(got["contributions"]).max() > 1e-4


def test_unasked_only_the_probability_and_order_as_asked(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, rows: np.ndarray
) -> None:
    plain = outputs_of(stub.ModelInfer(raw_request(rows[:2]), metadata=METADATA))
    assert list(plain) == ["fraud_probability"]
    both = stub.ModelInfer(
        asking(raw_request(rows[:2]), "contributions", "fraud_probability"), metadata=METADATA
    )
    assert [o.name for o in both.outputs] == ["contributions", "fraud_probability"]
    np.testing.assert_allclose(
        outputs_of(both)["fraud_probability"], plain["fraud_probability"], atol=1e-6
    )


def test_a_server_that_explains_nothing_refuses_them(
    repository: Path, tmp_path: Path, rows: np.ndarray
) -> None:
    served = serve(repository, tmp_path / "uvicorn.log", {"FRAUD_REASONS": "0"})
    try:
        with grpc.insecure_channel(served.target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = asking(raw_request(rows[:2]), "contributions")
            code, message = refusal(lambda: stub.ModelInfer(request, metadata=METADATA))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert message == "the 'contributions' output is off on this server (FRAUD_REASONS=0)"
            served_alone = stub.ModelInfer(raw_request(rows[:2]), metadata=METADATA)
            assert [o.name for o in served_alone.outputs] == ["fraud_probability"]
    finally:
        stop_server(served.live)
