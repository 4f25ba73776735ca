"""The Open Inference Protocol over gRPC, with the official Triton gRPC client (its own generated
messages and stubs), against a real uvicorn serving gRPC beside HTTP on the shipped model:
liveness, readiness and metadata, ModelInfer in both tensor encodings against HTTP's scores,
model versions, keys, bad tensors, methods not served and the message size limit, all on one
server the module shares. Operations are in test_operations.py, the allowlist and the
listening socket in test_network.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2_grpc

from tests.conftest import TEST_API_KEY
from tests.grpcapi.support import (
    ADMIN_SECRET,
    MAX_ROWS,
    MODEL,
    N_FEATURES,
    OTHER_SECRET,
    Served,
    http_scores,
    infer_input,
    key,
    raw_request,
    refusal,
    triton_refusal,
    typed_request,
)

# Liveness, readiness, metadata


def test_live_ready_and_model_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "3")
    assert client.is_model_ready(MODEL, "4")
    status, message = triton_refusal(lambda: client.is_model_ready("nothing-here"))
    assert status == "StatusCode.NOT_FOUND"
    assert "unknown model 'nothing-here'" in message and MODEL in message
    status, message = triton_refusal(lambda: client.is_model_ready(MODEL, "9"))
    assert (status, message) == (
        "StatusCode.NOT_FOUND",
        f"model '{MODEL}' has no version '9' (serving 4, 3)",
    )


def test_server_metadata_is_http_s(client: triton.InferenceServerClient, server: Served) -> None:
    meta = client.get_server_metadata()
    with server.live.client() as http:
        over_http = http.get("/v2").json()
    assert meta.name == "fraud-scoring" and meta.version
    assert (meta.name, meta.version, list(meta.extensions)) == (
        over_http["name"],
        over_http["version"],
        over_http["extensions"],
    )


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    for version in ("", "3", "4"):
        meta = client.get_model_metadata(MODEL, version)
        assert meta.name == MODEL
        assert list(meta.versions) == ["4", "3"]
        assert meta.platform == "onnxruntime_onnx"
        inputs = [(t.name, t.datatype, list(t.shape)) for t in meta.inputs]
        outputs = [(t.name, t.datatype, list(t.shape)) for t in meta.outputs]
        assert inputs == [("features", "FP32", [-1, N_FEATURES])]
        assert outputs == [
            ("fraud_probability", "FP32", [-1, 1]),
            ("contributions", "FP32", [-1, N_FEATURES]),
        ]
    status, message = triton_refusal(lambda: client.get_model_metadata("nothing-here"))
    assert status == "StatusCode.NOT_FOUND" and "unknown model 'nothing-here'" in message
    status, _ = triton_refusal(lambda: client.get_model_metadata(MODEL, "9"))
    assert status == "StatusCode.NOT_FOUND"


def test_a_method_not_served_is_unimplemented(client: triton.InferenceServerClient) -> None:
    status, _ = triton_refusal(lambda: client.get_inference_statistics(MODEL, headers=key()))
    assert status == "StatusCode.UNIMPLEMENTED"


# ModelInfer, both encodings, against HTTP's scores


@pytest.mark.parametrize("ask_output", [False, True])
def test_raw_infer_equals_http_scores(
    client: triton.InferenceServerClient, server: Served, rows: np.ndarray, ask_output: bool
) -> None:
    outputs = [triton.InferRequestedOutput("fraud_probability")] if ask_output else None
    result = client.infer(
        MODEL, [infer_input(rows)], outputs=outputs, request_id="req-7", headers=key()
    )
    got = result.as_numpy("fraud_probability")
    assert got is not None and got.dtype == np.float32 and got.shape == (len(rows), 1)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (MODEL, "4", "req-7")
    # Raw in, raw out: the values travel in raw_output_contents, not in contents.
    assert len(response.raw_output_contents) == 1
    assert len(response.outputs[0].contents.fp32_contents) == 0
    expected = http_scores(server.live, rows)
    np.testing.assert_allclose(got.ravel(), expected, rtol=1e-6, atol=1e-7)
    assert len(np.unique(expected)) > 1  # the rows are told apart: not a constant answer
    with server.live.client(headers={"X-API-Key": TEST_API_KEY}) as http:
        one = http.post("/v1/score", json={"features": [float(v) for v in rows[3]]}).json()
    np.testing.assert_allclose(got[3, 0], one["fraud_probability"], rtol=1e-6, atol=1e-7)


def test_typed_contents_infer_equals_http_scores(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, server: Served, rows: np.ndarray
) -> None:
    response = stub.ModelInfer(typed_request(rows, id="typed-1"), metadata=tuple(key().items()))
    assert (response.model_name, response.model_version, response.id) == (MODEL, "4", "typed-1")
    assert len(response.raw_output_contents) == 0  # typed in, typed out
    [output] = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == (
        "fraud_probability",
        "FP32",
        [len(rows), 1],
    )
    got = np.asarray(output.contents.fp32_contents, dtype=np.float32)
    np.testing.assert_allclose(got, http_scores(server.live, rows), rtol=1e-6, atol=1e-7)
    # And the same values as the raw encoding gives.
    raw = stub.ModelInfer(raw_request(rows), metadata=tuple(key().items()))
    np.testing.assert_array_equal(np.frombuffer(raw.raw_output_contents[0], dtype="<f4"), got)


def test_model_version_selection(client: triton.InferenceServerClient, rows: np.ndarray) -> None:
    answered = {}
    for version in ("", "3", "4"):
        result = client.infer(MODEL, [infer_input(rows[:2])], model_version=version, headers=key())
        answered[version] = result.get_response().model_version
    assert answered == {"": "4", "3": "3", "4": "4"}
    status, message = triton_refusal(
        lambda: client.infer(MODEL, [infer_input(rows[:2])], model_version="9", headers=key())
    )
    assert (status, message) == (
        "StatusCode.NOT_FOUND",
        f"model '{MODEL}' has no version '9' (serving 4, 3)",
    )
    status, message = triton_refusal(
        lambda: client.infer("nothing-here", [infer_input(rows[:2])], headers=key())
    )
    assert status == "StatusCode.NOT_FOUND" and "unknown model 'nothing-here'" in message


# Keys


def test_infer_needs_a_valid_key(client: triton.InferenceServerClient, rows: np.ndarray) -> None:
    tensors = [infer_input(rows[:1])]
    status, message = triton_refusal(lambda: client.infer(MODEL, tensors))
    assert status == "StatusCode.UNAUTHENTICATED"
    assert message == "send an API key in the x-api-key metadata"
    status, message = triton_refusal(lambda: client.infer(MODEL, tensors, headers=key("wrong")))
    assert (status, message) == ("StatusCode.PERMISSION_DENIED", "the API key is not valid")
    # The admin key is no scoring key.
    status, _ = triton_refusal(lambda: client.infer(MODEL, tensors, headers=key(ADMIN_SECRET)))
    assert status == "StatusCode.PERMISSION_DENIED"
    for secret in (TEST_API_KEY, OTHER_SECRET):
        result = client.infer(MODEL, tensors, headers=key(secret))
        assert result.as_numpy("fraud_probability") is not None


# Bad tensors


def shape_error(shape: list[int]) -> str:
    return f"the input shape must be [n, {N_FEATURES}] with 1 <= n <= {MAX_ROWS}, got {shape!r}"


def renamed(request: Any) -> None:
    request.inputs[0].name = "input"


def as_fp64(request: Any) -> None:
    tensor = request.inputs[0]
    tensor.datatype = "FP64"
    tensor.contents.fp64_contents.extend(tensor.contents.fp32_contents)
    tensor.contents.ClearField("fp32_contents")


def as_int32(request: Any) -> None:
    tensor = request.inputs[0]
    tensor.datatype = "INT32"
    tensor.contents.int_contents.extend([1] * len(tensor.contents.fp32_contents))
    tensor.contents.ClearField("fp32_contents")


def in_int_contents(request: Any) -> None:
    tensor = request.inputs[0]
    tensor.contents.int_contents.extend([1] * len(tensor.contents.fp32_contents))
    tensor.contents.ClearField("fp32_contents")


def shaped(shape: list[int]) -> Callable[[Any], None]:
    def edit(request: Any) -> None:
        size = int(np.prod(shape))
        tensor = request.inputs[0]
        del tensor.shape[:]
        tensor.shape.extend(shape)
        tensor.contents.ClearField("fp32_contents")
        tensor.contents.fp32_contents.extend([0.5] * size)

    return edit


def one_number_short(request: Any) -> None:
    del request.inputs[0].contents.fp32_contents[-1]


def also_raw(request: Any) -> None:
    request.raw_input_contents.append(b"\0" * (2 * N_FEATURES * 4))


def with_value(value: float) -> Callable[[Any], None]:
    def edit(request: Any) -> None:
        request.inputs[0].contents.fp32_contents[5] = value

    return edit


def two_inputs(request: Any) -> None:
    request.inputs.add().CopyFrom(request.inputs[0])


def unknown_output(request: Any) -> None:
    request.outputs.add(name="probability")


def unnamed_model(request: Any) -> None:
    request.model_name = ""


def raw_of_length(length: int) -> Callable[[Any], None]:
    def edit(request: Any) -> None:
        request.inputs[0].ClearField("contents")
        request.raw_input_contents.append(b"\0" * length)

    return edit


def two_raw_entries(request: Any) -> None:
    raw_of_length(2 * N_FEATURES * 4)(request)
    request.raw_input_contents.append(b"")


BAD_TENSORS = {
    "wrong name": (renamed, "the input tensor must be named 'features'"),
    "FP64": (as_fp64, "the input datatype must be FP32"),
    "INT32": (as_int32, "the input datatype must be FP32"),
    "wrong feature count": (shaped([2, N_FEATURES - 1]), shape_error([2, N_FEATURES - 1])),
    "no rows": (shaped([0, N_FEATURES]), shape_error([0, N_FEATURES])),
    "too many rows": (shaped([MAX_ROWS + 1, N_FEATURES]), shape_error([MAX_ROWS + 1, N_FEATURES])),
    "one dimension": (shaped([N_FEATURES]), shape_error([N_FEATURES])),
    "values short of the shape": (
        one_number_short,
        f"contents.fp32_contents must hold {2 * N_FEATURES} numbers "
        f"(shape [2, {N_FEATURES}]), got {2 * N_FEATURES - 1}",
    ),
    "raw bytes of the wrong length": (
        raw_of_length(100),
        f"raw_input_contents[0] must be {2 * N_FEATURES * 4} bytes "
        f"(shape [2, {N_FEATURES}] of FP32), got 100",
    ),
    "two raw entries": (two_raw_entries, "raw_input_contents must hold one entry per input: one"),
    "contents and raw": (also_raw, "the input has both contents and raw_input_contents"),
    "NaN": (with_value(float("nan")), "the input holds NaN or infinite values"),
    "infinity": (with_value(float("inf")), "the input holds NaN or infinite values"),
    "two inputs": (two_inputs, "inputs must hold exactly one tensor, 'features'"),
    "unknown output": (
        unknown_output,
        "unknown output 'probability'; this model has ['fraud_probability', 'contributions']",
    ),
    "values in int_contents": (
        in_int_contents,
        "the input's values must be in contents.fp32_contents or raw_input_contents "
        "(datatype FP32), not contents.int_contents",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_bad_tensors_are_invalid_argument_with_the_reason(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, rows: np.ndarray, case: str
) -> None:
    edit, message = BAD_TENSORS[case]
    request = typed_request(rows[:2])
    edit(request)
    metadata = tuple(key().items())
    assert refusal(lambda: stub.ModelInfer(request, metadata=metadata)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
    )


def test_a_request_naming_no_model_is_not_found(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, rows: np.ndarray
) -> None:
    request = typed_request(rows[:2])
    unnamed_model(request)
    assert refusal(lambda: stub.ModelInfer(request, metadata=tuple(key().items()))) == (
        grpc.StatusCode.NOT_FOUND,
        "name the model in model_name",
    )


def test_a_bad_shape_through_the_client(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("features", [3, N_FEATURES + 1], "FP32")
    tensor.set_data_from_numpy(np.zeros((3, N_FEATURES + 1), dtype=np.float32))
    status, message = triton_refusal(lambda: client.infer(MODEL, [tensor], headers=key()))
    assert (status, message) == (
        "StatusCode.INVALID_ARGUMENT",
        shape_error([3, N_FEATURES + 1]),
    )


def test_a_message_over_the_batch_body_limit_is_refused_unread(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    """FRAUD_MAX_BATCH_BODY_BYTES (1 MiB) caps a gRPC message as it caps an HTTP body."""
    request = raw_request(np.zeros((2, N_FEATURES), dtype=np.float32))
    request.raw_input_contents[0] = b"\0" * (1024 * 1024 + 1)
    code, message = refusal(lambda: stub.ModelInfer(request, metadata=tuple(key().items())))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in message
