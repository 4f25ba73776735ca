"""server/grpcapi/tensors.py: a ModelInferRequest (the server's own message classes) to rows,
and probabilities to a ModelInferResponse, in both encodings."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from server.errors import InvalidRequest
from server.grpcapi.messages import ModelInferRequest
from server.grpcapi.service import code_name
from server.grpcapi.tensors import GrpcInfer, infer_response, parse_infer

INPUT = "features"
OUTPUT = "fraud_probability"
F = 4
MAX_ROWS = 8
ROWS = np.arange(3 * F, dtype=np.float32).reshape(3, F) / 7


def typed(rows: np.ndarray = ROWS, **fields: Any) -> Any:
    request = ModelInferRequest(model_name="m", **fields)
    tensor = request.inputs.add(name=INPUT, datatype="FP32", shape=list(rows.shape))
    tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    return request


def raw(rows: np.ndarray = ROWS, **fields: Any) -> Any:
    request = ModelInferRequest(model_name="m", **fields)
    request.inputs.add(name=INPUT, datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.astype("<f4").tobytes())
    return request


def parse(
    request: Any, outputs: tuple[str, ...] = (OUTPUT,), missing_allowed: bool = False
) -> GrpcInfer:
    return parse_infer(request, INPUT, F, outputs, MAX_ROWS, missing_allowed)


@pytest.mark.parametrize("encode", [typed, raw])
def test_both_encodings_give_the_rows(encode: Callable[..., Any]) -> None:
    infer = parse(encode(id="r-1"))
    assert infer.rows.dtype == np.float32 and infer.rows.shape == (3, F)
    np.testing.assert_array_equal(infer.rows, ROWS)
    assert (infer.id, infer.outputs, infer.raw) == ("r-1", (OUTPUT,), encode is raw)


def test_raw_bytes_are_little_endian_and_the_rows_writable_copies() -> None:
    request = ModelInferRequest(model_name="m")
    request.inputs.add(name=INPUT, datatype="FP32", shape=[1, F])
    request.raw_input_contents.append(np.array([1.5, -2.0, 0.0, 3.25], dtype="<f4").tobytes())
    infer = parse(request)
    assert infer.rows.tolist() == [[1.5, -2.0, 0.0, 3.25]]
    assert infer.rows.dtype.isnative and infer.rows.flags.writeable


def test_every_row_count_from_one_to_the_most() -> None:
    for n in (1, MAX_ROWS):
        rows = np.ones((n, F), dtype=np.float32)
        assert parse(typed(rows)).rows.shape == (n, F)
        assert parse(raw(rows)).rows.shape == (n, F)


def test_asked_outputs_keep_their_order_once_each() -> None:
    request = typed()
    for name in ("b", "a", "b"):
        request.outputs.add(name=name)
    assert parse(request, outputs=("a", "b")).outputs == ("b", "a")


@pytest.mark.parametrize("encode", [typed, raw])
def test_nan_is_a_missing_value_only_where_the_model_fills_them(
    encode: Callable[..., Any],
) -> None:
    rows = ROWS.copy()
    rows[1, 2] = math.nan
    infer = parse(encode(rows), missing_allowed=True)
    assert np.isnan(infer.rows[1, 2]) and np.isnan(infer.rows).sum() == 1
    with pytest.raises(InvalidRequest, match=r"^the input holds NaN or infinite values$"):
        parse(encode(rows))
    rows[0, 0] = math.inf
    with pytest.raises(InvalidRequest, match=r"^the input holds infinite values$"):
        parse(encode(rows), missing_allowed=True)


def edited(edit: Callable[[Any], None], base: Callable[..., Any] = typed) -> Any:
    request = base()
    edit(request)
    return request


def reshaped(shape: list[int]) -> Callable[[Any], None]:
    def edit(request: Any) -> None:
        tensor = request.inputs[0]
        del tensor.shape[:]
        tensor.shape.extend(shape)
        tensor.contents.ClearField("fp32_contents")
        tensor.contents.fp32_contents.extend([0.0] * int(np.prod(shape)))

    return edit


def values_in(field: str, datatype: str = "FP32") -> Callable[[Any], None]:
    def edit(request: Any) -> None:
        tensor = request.inputs[0]
        tensor.datatype = datatype
        tensor.contents.ClearField("fp32_contents")
        values: list[Any] = [b"x"] * 12 if field == "bytes_contents" else [1] * 12
        getattr(tensor.contents, field).extend(values)

    return edit


def shape_message(shape: list[int]) -> str:
    return f"the input shape must be [n, {F}] with 1 <= n <= {MAX_ROWS}, got {shape!r}"


ERRORS: dict[str, tuple[Any, str]] = {
    "no input": (
        ModelInferRequest(model_name="m"),
        "inputs must hold exactly one tensor, 'features'",
    ),
    "two inputs": (
        edited(lambda r: r.inputs.add().CopyFrom(r.inputs[0])),
        "inputs must hold exactly one tensor, 'features'",
    ),
    "wrong name": (
        edited(lambda r: setattr(r.inputs[0], "name", "x")),
        "the input tensor must be named 'features'",
    ),
    "FP64": (edited(values_in("fp64_contents", "FP64")), "the input datatype must be FP32"),
    "INT32": (edited(values_in("int_contents", "INT32")), "the input datatype must be FP32"),
    "lower-case fp32": (
        edited(lambda r: setattr(r.inputs[0], "datatype", "fp32")),
        "the input datatype must be FP32",
    ),
    "wrong feature count": (edited(reshaped([3, F + 1])), shape_message([3, F + 1])),
    "no rows": (edited(reshaped([0, F])), shape_message([0, F])),
    "too many rows": (edited(reshaped([MAX_ROWS + 1, F])), shape_message([MAX_ROWS + 1, F])),
    "one dimension": (edited(reshaped([F])), shape_message([F])),
    "three dimensions": (edited(reshaped([1, 1, F])), shape_message([1, 1, F])),
    "negative rows": (
        edited(lambda r: r.inputs[0].shape.__setitem__(0, -1)),
        shape_message([-1, F]),
    ),
    "too few numbers": (
        edited(lambda r: r.inputs[0].contents.fp32_contents.pop()),
        f"contents.fp32_contents must hold {3 * F} numbers (shape [3, {F}]), got {3 * F - 1}",
    ),
    "too many numbers": (
        edited(lambda r: r.inputs[0].contents.fp32_contents.append(0.0)),
        f"contents.fp32_contents must hold {3 * F} numbers (shape [3, {F}]), got {3 * F + 1}",
    ),
    "raw bytes too few": (
        edited(lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 47), raw),
        f"raw_input_contents[0] must be {3 * F * 4} bytes (shape [3, {F}] of FP32), got 47",
    ),
    "raw bytes too many": (
        edited(lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 52), raw),
        f"raw_input_contents[0] must be {3 * F * 4} bytes (shape [3, {F}] of FP32), got 52",
    ),
    "two raw entries": (
        edited(lambda r: r.raw_input_contents.append(b""), raw),
        "raw_input_contents must hold one entry per input: one",
    ),
    "contents and raw": (
        edited(lambda r: r.raw_input_contents.append(b"\0" * 48)),
        "the input has both contents and raw_input_contents",
    ),
    "unknown output": (
        edited(lambda r: r.outputs.add(name="score")),
        "unknown output 'score'; this model has ['fraud_probability']",
    ),
}
for field in ("int_contents", "int64_contents", "fp64_contents", "bytes_contents"):
    ERRORS[f"values in {field}"] = (
        edited(values_in(field)),
        "the input's values must be in contents.fp32_contents or raw_input_contents "
        f"(datatype FP32), not contents.{field}",
    )


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_requests_say_why(case: str) -> None:
    request, message = ERRORS[case]
    with pytest.raises(InvalidRequest) as caught:
        parse(request)
    assert caught.value.message == message
    assert code_name(caught.value) == "INVALID_ARGUMENT"


PROBABILITIES = np.array([[0.25], [0.5], [1 / 3]], dtype=np.float64)


def test_typed_request_typed_answer() -> None:
    infer = parse(typed(id="r-2"))
    response = infer_response("m", "7", infer, {OUTPUT: PROBABILITIES})
    assert (response.model_name, response.model_version, response.id) == ("m", "7", "r-2")
    assert len(response.raw_output_contents) == 0
    [output] = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == (OUTPUT, "FP32", [3, 1])
    assert list(output.contents.fp32_contents) == PROBABILITIES.astype(np.float32).ravel().tolist()


def test_raw_request_raw_answer() -> None:
    infer = parse(raw())
    response = infer_response("m", "7", infer, {OUTPUT: PROBABILITIES})
    [output] = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == (OUTPUT, "FP32", [3, 1])
    assert len(output.contents.fp32_contents) == 0
    assert response.raw_output_contents == [PROBABILITIES.astype("<f4").tobytes()]


def test_several_outputs_answer_in_the_order_asked() -> None:
    request = raw()
    for name in ("b", "a"):
        request.outputs.add(name=name)
    infer = parse(request, outputs=("a", "b"))
    a, b = np.zeros((3, 1), np.float32), np.ones((3, 1), np.float32)
    response = infer_response("m", "1", infer, {"a": a, "b": b})
    assert [o.name for o in response.outputs] == ["b", "a"]
    assert response.raw_output_contents == [b.tobytes(), a.tobytes()]


def test_the_messages_are_the_protocols_on_the_wire() -> None:
    """Triton's client's own classes read what the server's pool writes, and back."""
    theirs = service_pb2.ModelInferRequest.FromString(raw(id="r-3").SerializeToString())
    assert (theirs.model_name, theirs.id, theirs.inputs[0].name) == ("m", "r-3", INPUT)
    ours = ModelInferRequest.FromString(theirs.SerializeToString())
    np.testing.assert_array_equal(parse(ours).rows, ROWS)
    response = infer_response("m", "7", parse(ours), {OUTPUT: PROBABILITIES})
    read = service_pb2.ModelInferResponse.FromString(response.SerializeToString())
    assert list(read.outputs[0].shape) == [3, 1]
    got = np.frombuffer(read.raw_output_contents[0], dtype="<f4")
    np.testing.assert_array_equal(got, PROBABILITIES.astype(np.float32).ravel())
