"""Open Inference Protocol (KServe v2) tensors: request bytes -> rows, scores -> response bytes.

Handles JSON tensors (data flat or nested) and the binary tensor extension
(`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`,
`binary_data_output`). Pure functions; errors are InvalidRequest (400 on v2).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import orjson

from server.errors import InvalidRequest
from server.payloads import FLOAT32_MAX, all_valid_numbers, parse_json

DATATYPE = "FP32"
REQUEST_FIELDS = frozenset({"id", "inputs", "outputs", "parameters"})


class InferRequest(NamedTuple):
    id: str | None
    rows: np.ndarray  # (n, F) float32
    outputs: dict[str, bool]  # output name -> answer it as binary


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tail, per the Inference-Header-Content-Length header."""
    if header_length is None:
        return body, b""
    if not (header_length.isascii() and header_length.isdigit()):
        raise InvalidRequest("Inference-Header-Content-Length is not a length")
    length = int(header_length)
    if length > len(body):
        raise InvalidRequest("Inference-Header-Content-Length is longer than the body")
    return body[:length], body[length:]


def parse_infer_request(
    header: bytes,
    binary: bytes,
    input_name: str,
    n_features: int,
    output_names: tuple[str, ...],
    max_rows: int,
    missing_allowed: bool = False,
) -> InferRequest:
    """With `missing_allowed` (a model whose graph fills missing inputs), NaN in binary data
    and null in JSON data mark a missing value."""
    payload = parse_json(header)
    if type(payload) is not dict:
        raise InvalidRequest("the inference request must be a JSON object")
    unknown = set(payload) - REQUEST_FIELDS
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}")
    # The protocol types id as a string when present: null is no string (unlike outputs,
    # where null is documented as absent).
    request_id = payload.get("id")
    if "id" in payload and type(request_id) is not str:
        raise InvalidRequest("id must be a string")
    inputs = payload.get("inputs")
    if type(inputs) is not list or len(inputs) != 1 or type(inputs[0]) is not dict:
        raise InvalidRequest(f"inputs must hold exactly one tensor, {input_name!r}")
    rows = parse_input(inputs[0], binary, input_name, n_features, max_rows, missing_allowed)
    parameters = _parameters(payload, "the request")
    binary_default = parameters.get("binary_data_output", False)
    if type(binary_default) is not bool:
        raise InvalidRequest("parameters.binary_data_output must be true or false")
    return InferRequest(
        request_id, rows, parse_outputs(payload.get("outputs"), output_names, binary_default)
    )


def parse_input(
    tensor: dict[str, Any],
    binary: bytes,
    input_name: str,
    n_features: int,
    max_rows: int,
    missing_allowed: bool = False,
) -> np.ndarray:
    if tensor.get("name") != input_name:
        raise InvalidRequest(f"the input tensor must be named {input_name!r}")
    if tensor.get("datatype") != DATATYPE:
        raise InvalidRequest(f"the input datatype must be {DATATYPE}")
    shape = tensor.get("shape")
    if type(shape) is list:
        # JSON does not tell 2 from 2.0; a whole float is a whole number of rows.
        shape = [int(d) if type(d) is float and d.is_integer() else d for d in shape]
    if (
        type(shape) is not list
        or len(shape) != 2
        or any(type(d) is not int for d in shape)
        or shape[1] != n_features
        or not 1 <= shape[0] <= max_rows
    ):
        raise InvalidRequest(
            f"the input shape must be [n, {n_features}] with 1 <= n <= {max_rows}, got {shape!r}"
        )
    rows = shape[0]
    parameters = _parameters(tensor, "the input")
    # The parameter's presence, whatever its value, says the tensor travels as binary: a null
    # is no int64, and a size beside JSON data contradicts it (n x F x 4 bytes is never 0).
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if "data" in tensor:
            raise InvalidRequest("the input has both data and binary_data_size")
        if type(size) is not int or size != rows * n_features * 4 or len(binary) != size:
            raise InvalidRequest(
                f"binary_data_size must be {rows * n_features * 4} bytes "
                f"(shape {shape} of {DATATYPE}) and match the binary data"
            )
        values = np.frombuffer(binary, dtype="<f4").reshape(rows, n_features)
        finite = np.isfinite(values)
        if missing_allowed:
            finite |= np.isnan(values)
        if not finite.all():
            what = "infinite" if missing_allowed else "NaN or infinite"
            raise InvalidRequest(f"the input holds {what} values")
        return values.astype(np.float32)
    if binary:
        raise InvalidRequest("binary data was sent but no input declares binary_data_size")
    data = tensor.get("data")
    if type(data) is list and data and type(data[0]) is list:
        if len(data) != rows or any(type(r) is not list or len(r) != n_features for r in data):
            raise InvalidRequest(f"nested data must be {rows} lists of {n_features} numbers")
        data = [v for row in data for v in row]
    if type(data) is not list or len(data) != rows * n_features:
        raise InvalidRequest(f"data must hold {rows * n_features} numbers (shape {shape})")
    if missing_allowed and None in data and all_valid_numbers([v for v in data if v is not None]):
        data = [math.nan if v is None else v for v in data]
    elif not all_valid_numbers(data):
        raise InvalidRequest(
            f"data must hold finite numbers within float32 range "
            f"(|x| <= {FLOAT32_MAX:.4g}), not booleans, strings or null"
        )
    return np.asarray(data, dtype=np.float32).reshape(rows, n_features)


def parse_outputs(outputs: Any, names: tuple[str, ...], binary_default: bool) -> dict[str, bool]:
    """The outputs asked for, each with its encoding; none asked for is the first only (the
    others cost a model run more)."""
    if outputs is None:
        return dict.fromkeys(names[:1], binary_default)
    if type(outputs) is not list or not outputs:
        raise InvalidRequest("outputs must be a non-empty list")
    chosen: dict[str, bool] = {}
    for output in outputs:
        if type(output) is not dict or output.get("name") not in names:
            raise InvalidRequest(f"unknown output; this model has {list(names)}")
        binary = _parameters(output, "an output").get("binary_data", binary_default)
        if type(binary) is not bool:
            raise InvalidRequest("parameters.binary_data must be true or false")
        chosen[output["name"]] = binary
    return chosen


def encode_response(
    name: str, version: str, request: InferRequest, tensors: dict[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    outputs: list[dict[str, Any]] = []
    tails: list[bytes] = []
    for output, binary in request.outputs.items():
        values = tensors[output].astype("<f4")
        entry: dict[str, Any] = {"name": output, "datatype": DATATYPE, "shape": list(values.shape)}
        if binary:
            raw = values.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
        else:
            entry["data"] = values.reshape(-1).tolist()
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    header = orjson.dumps(body)
    if not tails:
        return header, None
    return header + b"".join(tails), len(header)


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = obj.get("parameters", {})
    if type(parameters) is not dict:
        raise InvalidRequest(f"parameters of {what} must be an object")
    return parameters
